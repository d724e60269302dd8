"""RankCandidates: validate, re-train and rank, publishing the ranking and its metrics together.

The ranker is first fitted on the train candidates of 80% of the users and measured on the rest,
against the candidates' own `als_score` order; a week that ranks worse than that order, or than
the last published week, by more than `[pipeline] max_ndcg_drop` is refused. Then it is fitted on
all train candidates and ranks the inference candidates.
"""

from __future__ import annotations

import json
import os
import time
from datetime import date

import luigi
import pyarrow as pa
from psycopg2 import sql

from pipeline import config, db
from pipeline.base import PublishingTask, published_table
from pipeline.load import DefaultRecs, InferenceCandidates, LoadTask, TrainCandidates


class QualityGateError(RuntimeError):
    """The week's model ranks worse than it may; the previous ranking stays published."""


class RankCandidates(PublishingTask):
    table = published_table("candidates_ranked")
    metrics_table = published_table("model_metrics")
    unique_key = ("user_id", "item_id")
    force_publish = luigi.BoolParameter(default=False, significant=False,
                                        description="publish even when the quality gate refuses the week")

    def requires(self) -> dict[str, LoadTask]:
        """The candidates, and the week's popularity counts that derived features use."""
        return {"train": TrainCandidates(week=self.week), "inference": InferenceCandidates(week=self.week),
                "popularity": DefaultRecs(week=self.week)}

    def run(self) -> None:
        # The model's libraries (CatBoost, pandas: ~70 MB) are imported here, when a ranking runs,
        # so that the load tasks' processes stay small.
        from pipeline.ranker import Ranker, candidates_ranked

        started = time.monotonic()
        model_dir = writable_model_dir(config.pipeline().week_model_dir(self.week))
        self.set_status_message("reading candidates back")
        inputs = self.requires()
        with db.connection() as conn:
            popularity = db.read_week(conn, inputs["popularity"].table, self.week).to_pandas()
            ranker = Ranker.from_settings(config.pipeline(), popularity)
            train = ranker.prepared(db.read_week(conn, inputs["train"].table, self.week).to_pandas())
            inference = db.read_week(conn, inputs["inference"].table, self.week)
            previous = previous_ndcg(conn, self.metrics_table, self.week)
        self.set_status_message(f"validating on held-out users of {len(train)} train candidates")
        self.set_progress_percentage(10)
        self.validation = ranker.validation(train)
        self.check_quality(previous)
        self.set_status_message(f"training on {len(train)} candidates")
        self.set_progress_percentage(50)
        model = ranker.fit(train)
        model.save_model(str(model_dir / "model.cbm"))
        self.set_status_message(f"ranking {inference.num_rows} candidates")
        self.set_progress_percentage(80)
        candidates = ranker.prepared(inference.to_pandas())
        ranked = candidates_ranked(pa.Table.from_pandas(candidates[inference.column_names], schema=inference.schema,
                                                        preserve_index=False), ranker.scores(model, candidates))
        self.validation.update(model_type=ranker.kind, parameters=json.dumps(ranker.parameters()),
                               train_rows=len(train), positives=int(train["target"].sum()),
                               duration_s=time.monotonic() - started)
        self.publish(ranked.to_batches(), ranked.schema)
        self.set_progress_percentage(100)

    def check_quality(self, previous: float | None) -> None:
        drop = config.pipeline().max_ndcg_drop
        ndcg, als = self.validation["ndcg_at_10"], self.validation["als_ndcg_at_10"]
        problems = [f"below the als_score order's {als:.4f}"] if ndcg < als - drop else []
        if previous is not None and ndcg < previous - drop:
            problems.append(f"below the last published week's {previous:.4f}")
        if not problems:
            return
        message = (f"week {self.week}: validation NDCG@10 {ndcg:.4f} is {' and '.join(problems)} "
                   f"by more than max_ndcg_drop={drop}")
        if not self.force_publish:
            raise QualityGateError(f"{message}; the previous ranking stays published "
                                   "(--RankCandidates-force-publish publishes anyway)")
        self.set_status_message(f"published despite the quality gate: {message}")

    def publish_alongside(self, cur) -> None:
        """The week's metrics row, in the transaction that publishes its ranking."""
        table = sql.Identifier(config.checked_identifier(self.metrics_table, "[RankCandidates] metrics_table"))
        cur.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (week date, model_type text, parameters jsonb, train_rows bigint,"
            " positives bigint, ndcg_at_10 double precision, precision_at_10 double precision,"
            " recall_at_10 double precision, als_ndcg_at_10 double precision,"
            " als_precision_at_10 double precision, als_recall_at_10 double precision,"
            " duration_s double precision, trained_at timestamptz DEFAULT now(),"
            " PRIMARY KEY (week, model_type))").format(table))
        row = self.validation
        cur.execute(sql.SQL("DELETE FROM {} WHERE week = %s AND model_type = %s").format(table),
                    (self.week, row["model_type"]))
        cur.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            table, sql.SQL(", ").join(map(sql.Identifier, ["week", *row])),
            sql.SQL(", ").join(sql.Placeholder() * (len(row) + 1))), (self.week, *row.values()))


def previous_ndcg(conn, metrics_table: str, week: date) -> float | None:
    """The validation NDCG@10 of the latest earlier week, where one was recorded."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f'"{config.checked_identifier(metrics_table, "metrics_table")}"',))
        if cur.fetchone()[0] is None:
            return None
        cur.execute(sql.SQL("SELECT ndcg_at_10 FROM {} WHERE week < %s ORDER BY week DESC, trained_at DESC LIMIT 1")
                    .format(sql.Identifier(metrics_table)), (week,))
        row = cur.fetchone()
    return row[0] if row else None


def writable_model_dir(path: os.PathLike) -> os.PathLike:
    """Fail before training, not after, when the model cannot be saved."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"[pipeline] model_dir: cannot create {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK):
        raise PermissionError(f"[pipeline] model_dir: {path} is not writable")
    return path
