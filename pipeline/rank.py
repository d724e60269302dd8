"""The ranking stage: one model fit a week, scoring split by user into shards any worker can take.

    RankCandidates(week)          stages candidates_ranked once every shard is in: copied frozen, indexed
    ├── TrainCandidates(week), InferenceCandidates(week)
    ├── TrainRanker(week)         validates, gates, fits on at most max_train_rows of whole users,
    │                             and shares the model through PostgreSQL (table ranker_models)
    └── ScoreShard(week, k, n)    scores the users of shard k of n, read back with COPY, streamed

A shard needs only the database: its model, the week's per-item aggregates and its users'
candidates all come from PostgreSQL, so a worker on any host can take it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import luigi
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg2 import sql

from pipeline import catalog, config, db, live_locks, publish
from pipeline.base import StagingTask, WeekTask, published_table
from pipeline.contracts import CANDIDATES_TRAIN
from pipeline.events.tasks import AVAILABLE_ROWS
from pipeline.load import DefaultRecs, InferenceCandidates, LoadTask, TrainCandidates
from pipeline.validation import fitted_once, kept_in_sample, sample_order

if TYPE_CHECKING:  # imports CatBoost, which only a ranking's processes need
    from pipeline.ranker import Ranker

T = TypeVar("T")

SCORING_ROWS = 200_000  # rows of whole users scored at a time in a shard
MODEL_FILE = "model.cbm"  # the week's model, under its `[pipeline] model_dir` folder
_USER_ROWS = pa.schema([("user_id", pa.int64()), ("n", pa.int64())])
_ITEM_STATS = pa.schema([("item_id", pa.int64()), ("item_frequency", pa.float64()), ("item_mean_als", pa.float64())])


class QualityGateError(RuntimeError):
    """The week's model ranks worse than it may; the previous ranking stays published."""


class WeekRead(NamedTuple):
    """What `TrainRanker`'s fits take from the database: its sample is in a file of `folder`."""

    ranker: Ranker
    folder: Path
    available: int
    train_items: pa.Table
    inference_items: pa.Table
    previous: tuple[float, float | None] | None


class TrainRanker(WeekTask):
    """Validates on held-out users, gates the week, fits, and stores the model for the shards."""

    table = published_table("ranker_models")
    metrics_table = published_table("model_metrics")
    force_publish = luigi.BoolParameter(default=False, significant=False,
                                        description="publish even when the quality gate refuses the week")

    def requires(self) -> dict[str, LoadTask]:
        """The candidates, and the week's popularity counts that derived features use."""
        return {"train": TrainCandidates(week=self.week), "inference": InferenceCandidates(week=self.week),
                "popularity": DefaultRecs(week=self.week)}

    def holds_output(self, cur) -> bool:
        return stored_model(cur, self.table, self.week) is not None

    def lock_names(self) -> tuple[str, ...]:
        return (self.task_id,)

    def run(self) -> None:
        started, settings = time.monotonic(), config.pipeline()
        model_dir = writable_model_dir(settings.week_model_dir(self.week))
        with tempfile.TemporaryDirectory(prefix="training-", dir=model_dir) as work:
            week = self.week_read(Path(work), settings)
            if units := self.resources:  # the fits take minutes and no database: another task may use it meanwhile
                self.decrease_running_resources(units)
            fitted = week.folder / MODEL_FILE
            validation = self.validated_and_fitted(week, fitted, settings)
            validation["duration_s"] = time.monotonic() - started
            self.store(fitted, model_dir / MODEL_FILE, week.inference_items, validation)

    def week_read(self, folder: Path, settings: config.pipeline) -> WeekRead:
        """What the fits need of the database, read at once: its connection is closed before they start.
        The model's libraries (CatBoost, pandas: ~70 MB) are imported when a ranking runs, so that the
        load tasks' processes stay small."""
        from pipeline import training
        from pipeline.ranker import Ranker

        inputs = self.requires()
        with db.connection(autocommit=True) as conn, conn.cursor() as cur:
            for task in inputs.values():
                task.check_file_unchanged(cur)
            ranker = Ranker.from_settings(settings, read_week(conn, inputs["popularity"].table, self.week,
                                                              ["item_id", "items_cnt"]).to_pandas())
            train_table = publish.week_table(cur, inputs["train"].table, self.week)
            available = rows_available(inputs["train"].path(), publish.row_count(cur, train_table))
            self.set_status_message(f"reading a sample of {available:,} train candidates back")
            self.sample_written(conn, train_table, ranker, available, folder / training.SAMPLE)
            return WeekRead(ranker, folder, available, item_stats(conn, train_table),
                            read_of_week(conn, inputs["inference"].table, self.week,
                                         lambda table: item_stats(conn, table)),
                            previous_ndcg(conn, self.metrics_table, self.week))

    def validated_and_fitted(self, week: WeekRead, fitted: Path, settings: config.pipeline) -> dict:
        """The gate's metrics of the week's validation fit, once the gate let it through, with the week's
        model fitted into `fitted`: by the validation fit itself for a week fitted once."""
        from pipeline import training

        once = fitted_once(week.available, settings)
        processes, ranker, folder = training.FreshProcesses(), week.ranker, week.folder
        counts = processes.run(training.train_files, ranker, folder, week.train_items, once)
        self.set_status_message(f"fitting on {counts['train_rows']:,} of {week.available:,} train candidates, "
                                "validating on held-out users" if once else
                                f"validating on held-out users of {counts['train_rows']:,} train candidates")
        self.set_progress_percentage(10)
        validation = processes.run(training.validated, ranker, folder, fitted if once else None)
        self.check_quality(validation, week.previous)
        if not once:
            self.set_status_message(f"training on {counts['train_rows']:,} of {week.available:,} train candidates")
            self.set_progress_percentage(50)
            processes.run(training.fitted, ranker, folder, fitted)
        validation.update(counts, model_type=ranker.kind, parameters=ranker.parameters(),
                          available_rows=week.available, fit_peak_rss_mb=processes.peak_mb)
        return validation

    def sample_written(self, conn, table: str, ranker, available: int, path: Path) -> None:
        """The whole users `validation.kept_in_sample` keeps, streamed into an Arrow file: never all in memory."""
        settings = config.pipeline()
        with conn.cursor() as cur:
            stored = db.read_schema(cur, table)
        grouped = CANDIDATES_TRAIN.group in stored.names
        columns = [*ranker.columns, "target", *([CANDIDATES_TRAIN.group] if grouped else [])]
        schema = _typed(stored, columns)
        batches = db.stream_table(conn, table, schema) if available <= settings.max_train_rows else db.stream_out(
            conn, rows_of_users(table, sampled_users(conn, table, available), columns), schema)
        written(batches, schema, path)

    def store(self, fitted: Path, kept: Path, inference_items: pa.Table, validation: dict) -> None:
        """The model row, and a fresh staged ranking for the shards to fill (`fresh_scoring`).

        The model is fitted into this run's own folder and moved to `kept` whole, by the run that stores
        it: two runs of the week fitting into one file at once stored a model half-written by the other."""
        with self.marking_once() as transaction:
            if transaction is None:
                return
            conn, cur = transaction
            cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (week date PRIMARY KEY, model bytea NOT NULL,"
                                " item_stats bytea NOT NULL, metrics jsonb NOT NULL,"
                                " trained_at timestamptz DEFAULT now())").format(sql.Identifier(self.table)))
            cur.execute(sql.SQL("DELETE FROM {} WHERE week = %s").format(sql.Identifier(self.table)), (self.week,))
            cur.execute(sql.SQL("INSERT INTO {} (week, model, item_stats, metrics) VALUES (%s, %s, %s, %s)").format(
                sql.Identifier(self.table)), (self.week, fitted.read_bytes(), _ipc(inference_items),
                                              json.dumps(validation)))
            self.fresh_scoring(cur)
            os.replace(fitted, kept)

    def fresh_scoring(self, cur) -> None:
        """A fresh staged ranking for the week's shards to fill, and their markers gone: old shards are void.

        `UNLOGGED`: once every shard is in, their rows are written again, frozen (`RankCandidates`), so
        that logging them as well would double the WAL of the week's largest table, which every standby
        replays and an archive keeps. A crash of the server empties the table, and the shards' markers
        with it (`ScoreShard.output`): the shards score again."""
        ranked = RankCandidates(week=self.week).table
        inference = publish.week_table(cur, InferenceCandidates(week=self.week).table, self.week)
        self.fresh_stage(cur, ranked, sql.SQL("LIKE {}, cb_score double precision, rank integer").format(
            sql.Identifier(inference)), logged=False)
        forget_scored_shards(cur, self.week)

    def check_quality(self, validation: dict, previous: tuple[float, float] | None) -> None:
        """Refuses a drop beyond both `max_ndcg_drop` and `gate_sigmas` standard errors of the drop:
        with a few hundred validation users, NDCG@10 moves more than that by chance alone."""
        settings = config.pipeline()
        ndcg, als = validation["ndcg_at_10"], validation["als_ndcg_at_10"]
        margins = {f"the als_score order's {als:.4f}": (als, validation["ndcg_vs_als_se"])}
        if previous is not None:
            margins[f"the last published week's {previous[0]:.4f}"] = (
                previous[0], math.hypot(validation["ndcg_se"], previous[1] or 0.0))
        problems = [f"{drop_from} by more than {max(settings.max_ndcg_drop, settings.gate_sigmas * se):.4f} "
                    f"(max_ndcg_drop {settings.max_ndcg_drop}, {settings.gate_sigmas} x its standard error {se:.4f})"
                    for drop_from, (reference, se) in margins.items()
                    if ndcg < reference - max(settings.max_ndcg_drop, settings.gate_sigmas * se)]
        if not problems:
            return
        message = f"week {self.week}: validation NDCG@10 {ndcg:.4f} is below {' and '.join(problems)}"
        if not self.force_publish:
            raise QualityGateError(f"{message}; the previous ranking stays published "
                                   "(--TrainRanker-force-publish publishes anyway)")
        self.set_status_message(f"published despite the quality gate: {message}")


class ScoreShard(WeekTask):
    """Scores the users of one shard into the week's staged ranking, in bounded memory."""

    shard = luigi.IntParameter(description="which shard, 0 to shards - 1")
    shards = luigi.IntParameter(description="how many shards the week's users are split into")

    @property
    def table(self) -> str:  # the marker names the staged ranking, so a new model voids the shard
        return publish.staged_name(RankCandidates(week=self.week).table, self.week)

    def output(self) -> db.MarkerTarget:
        """Unlogged, as the rows it marks are (`TrainRanker.fresh_scoring`)."""
        return db.marker(self.table, self.task_id, unlogged=True)

    def markers(self) -> tuple[db.MarkerTarget, db.MarkerTarget]:
        """Where it is marked (`output`), and where a version before 2026-12-06 marked the shards it
        scored into a logged table (a week half done across an upgrade)."""
        return self.output(), db.marker(self.table, self.task_id)

    def complete(self) -> bool:
        return any(self.marked_by(marker) for marker in self.markers())

    def requires(self) -> TrainRanker:
        return TrainRanker(week=self.week)

    def holds_output(self, cur) -> bool:
        return publish.holds_week(cur, RankCandidates(week=self.week).table, self.week)

    def lock_names(self) -> tuple[str, ...]:
        return (self.task_id,)

    def run(self) -> None:
        from pipeline.ranker import Ranker, ranked_batches, whole_users

        settings = config.pipeline()
        with db.connection(autocommit=True) as reading, reading.cursor() as cur:
            popularity = read_week(reading, DefaultRecs(week=self.week).table, self.week, ["item_id", "items_cnt"])
            ranker = Ranker.from_settings(settings, popularity.to_pandas())
            model, items = load_model(cur, self.requires().table, self.week, ranker)
            inference = publish.week_table(cur, InferenceCandidates(week=self.week).table, self.week)
            schema = db.read_schema(cur, inference)
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(sql.Identifier(inference),
                                                                          self.users_of_shard()))
            (total,) = cur.fetchone()
            users = db.stream_out(reading, sql.SQL("SELECT * FROM {} WHERE {} ORDER BY user_id, item_id").format(
                sql.Identifier(inference), self.users_of_shard()), schema)
        batches = ranked_batches(ranker, model, items.to_pandas().set_index("item_id"),
                                 whole_users(users, SCORING_ROWS))
        with self.marking_once() as transaction:
            if transaction is None:
                return
            ranked = schema.append(pa.field("cb_score", pa.float64())).append(pa.field("rank", pa.int32()))
            rows = db.copy_in(transaction[1], self.table, self.reporting(
                batches, total, "scored {done:,} of {total:,} candidates"), ranked)
        self.set_status_message(f"scored {rows:,} candidates of shard {self.shard + 1} of {self.shards}")

    def users_of_shard(self) -> sql.Composable:
        """A stable hash of the user id picks the shard: whole users, evenly, whatever the ids look like."""
        return sql.SQL("(hashint8(user_id) & 2147483647) % {} = {}").format(
            sql.Literal(self.shards), sql.Literal(self.shard))


class RankCandidates(StagingTask):
    """The week's ranking, staged whole once every shard is in; its metrics go live with it."""

    table = published_table("candidates_ranked")
    unique_key = ("user_id", "item_id")
    served = True

    def inputs(self) -> dict[str, LoadTask]:
        return {"train": TrainCandidates(week=self.week), "inference": InferenceCandidates(week=self.week)}

    def planned_columns(self) -> tuple[Path, pa.Schema]:
        """The inference candidates' columns, scored and ranked (as `TrainRanker.store` stages them)."""
        path, schema = self.inputs()["inference"].planned_columns()
        return path, schema.append(pa.field("cb_score", pa.float64())).append(pa.field("rank", pa.int32()))

    def requires(self) -> dict:
        """The shards too where their count is known when the week is scheduled, so that every worker
        scheduling the week may take one; else `run` adds them once the week's candidates are made."""
        return {**self.inputs(), "model": TrainRanker(week=self.week), "shards": self.shards(self.scheduled_count)}

    @cached_property
    def scheduled_count(self) -> int:
        """The shard count as this task was scheduled: requires() must not change before the task runs."""
        return self.shard_count() or 0

    def shard_count(self) -> int | None:
        """`[pipeline] shards`, or one shard per `rows_per_shard` inference candidates (from the file's footer);
        None while the file is still to be made (`[pipeline] source = events`)."""
        settings = config.pipeline()
        if settings.shards:
            return settings.shards
        path = InferenceCandidates(week=self.week).path()
        return max(1, math.ceil(pq.read_metadata(path).num_rows / settings.rows_per_shard)) if path.is_file() else None

    def shards(self, count: int) -> list[ScoreShard]:
        return [ScoreShard(week=self.week, shard=k, shards=count) for k in range(count)]

    def run(self) -> Iterator[list[ScoreShard]]:
        yield self.shards(self.shard_count())  # already complete when they were scheduled with the week
        staged = publish.staged_name(self.table, self.week)
        with self.marking_once() as transaction:
            if transaction is None:
                return
            _, cur = transaction
            expected = publish.row_count(cur, publish.week_table(cur, self.inputs()["inference"].table, self.week))
            ranked = self.written_again_frozen(cur, staged, expected)
            if ranked != expected:
                raise RuntimeError(f"{staged} holds {ranked:,} rows but the week has {expected:,} inference "
                                   f"candidates; redo the week (python -m pipeline.redo {self.week})")
            self.set_status_message(f"indexing {ranked:,} ranked candidates")
            self.index(cur, staged, list(self.unique_key))

    def written_again_frozen(self, cur, staged: str, expected: int) -> int:
        """The shards' rows, copied by `COPY ... FREEZE` into a table this transaction creates, which
        then takes the staged table's place; the rows copied. The shards fill the staged table in
        transactions of their own, and no vacuum can freeze rows for a snapshot older than them: a
        reader in `REPEATABLE READ` since before the week would find the live ranking empty."""
        frozen = publish.stage(cur, self.table, self.week, sql.SQL("LIKE {}").format(sql.Identifier(staged)),
                               name=publish.frozen_copy_name(self.table, self.week))
        rows = db.copied_frozen(cur, staged, frozen, lambda batches: self.reporting(
            batches, expected, "writing {done:,} of {total:,} ranked candidates frozen"))
        live_locks.dropped_when_unheld(cur, staged, f"{self.table} for week {self.week} not staged",
                                       self.set_status_message)
        cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(frozen), sql.Identifier(staged)))
        return rows

    def go_live_alongside(self, cur) -> None:
        """The week's metrics row, in the transaction that puts its ranking live."""
        model_table = TrainRanker(week=self.week)
        table = sql.Identifier(config.checked_identifier(model_table.metrics_table, "[TrainRanker] metrics_table"))
        cur.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (week date, model_type text, parameters jsonb, train_rows bigint,"
            " available_rows bigint, positives bigint, ndcg_at_10 double precision,"
            " precision_at_10 double precision, recall_at_10 double precision,"
            " als_ndcg_at_10 double precision, als_precision_at_10 double precision,"
            " als_recall_at_10 double precision, duration_s double precision,"
            " trained_at timestamptz DEFAULT now(), PRIMARY KEY (week, model_type))").format(table))
        _add_error_columns(cur, model_table.metrics_table)
        cur.execute(sql.SQL("DELETE FROM {} WHERE week = %s").format(table), (self.week,))
        cur.execute(sql.SQL("INSERT INTO {table} SELECT (jsonb_populate_record(NULL::{table}, r.metrics"
                            " || jsonb_build_object('week', r.week, 'trained_at', r.trained_at))).* FROM {models} r"
                            " WHERE r.week = %s").format(table=table, models=sql.Identifier(model_table.table)),
                    (self.week,))


def forget_scored_shards(cur, week: date) -> int:
    """Delete the markers of the week's scoring shards, wherever they are (`ScoreShard.markers`); how
    many there were."""
    shards = ScoreShard(week=week, shard=0, shards=1)
    forgotten = 0
    for marker in shards.markers():
        if catalog.exists(cur, marker.marker_table):
            cur.execute(sql.SQL("DELETE FROM {} WHERE target_table = %s").format(
                sql.Identifier(marker.marker_table)), (shards.table,))
            forgotten += cur.rowcount
    return forgotten


def sampled_users(conn, table: str, available: int) -> list[int]:
    """The users of the week's sample, chosen by their rows in `table` (see `validation.kept_in_sample`)."""
    settings = config.pipeline()
    counts = db.copy_out(conn, sql.SQL("SELECT user_id, count(*) AS n FROM {} GROUP BY user_id").format(
        sql.Identifier(table)), _USER_ROWS)
    users = counts.column("user_id").to_numpy()
    kept = kept_in_sample(users, counts.column("n").to_numpy(), sample_order(users, settings.random_seed), available,
                          settings)
    return users[kept].tolist()


def rows_of_users(table: str, users: list[int], columns: list[str]) -> sql.Composable:
    return sql.SQL("SELECT {} FROM {} WHERE user_id = ANY({}::bigint[])").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table), sql.Literal(users))


def written(batches: Iterator[pa.RecordBatch], schema: pa.Schema, path: Path) -> int:
    """Batches into an Arrow IPC file, one at a time; the rows written."""
    rows = 0
    with pa.ipc.new_file(str(path), schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def rows_available(path: Path, loaded: int) -> int:
    """Train rows there were for the week: the train file's own count where the events stage capped it
    at the source (its metadata), else what was loaded."""
    metadata = (pq.read_schema(path).metadata if path.is_file() else None) or {}
    return int(metadata.get(AVAILABLE_ROWS, loaded))


def item_stats(conn, table: str) -> pa.Table:
    """Per-item aggregates over the whole week's table, once, in SQL (as `features.item_stats` does in memory)."""
    return db.copy_out(conn, sql.SQL(
        "SELECT item_id, count(*)::float8 / (SELECT count(*) FROM (SELECT DISTINCT user_id FROM {table}) u)"
        " AS item_frequency, avg(als_score)::float8 AS item_mean_als FROM {table} GROUP BY item_id").format(
        table=sql.Identifier(table)), _ITEM_STATS)


def read_week(conn, table: str, week: date, columns: list[str]) -> pa.Table:
    def columns_of(source: str) -> pa.Table:
        with conn.cursor() as cur:
            schema = _typed(db.read_schema(cur, source), columns)
        return pa.Table.from_batches(db.stream_table(conn, source, schema), schema)
    return read_of_week(conn, table, week, columns_of)


def read_of_week(conn, table: str, week: date, read: Callable[[str], T]) -> T:
    """`read` of the physical table that holds the week of `table`, looked up once more should it move
    between the lookup and the read: another run of the same week putting the week live (the reads
    are the driver's, on connections of their own, so no lock holds the table in between)."""
    def looked_up() -> str:
        with conn.cursor() as cur:
            return publish.week_table(cur, table, week)
    try:
        return read(looked_up())
    except LookupError:
        return read(looked_up())


def stored_model(cur, table: str, week: date) -> tuple | None:
    if not catalog.exists(cur, table):
        return None
    cur.execute(sql.SQL("SELECT model, item_stats FROM {} WHERE week = %s").format(sql.Identifier(table)), (week,))
    return cur.fetchone()


def load_model(cur, table: str, week: date, ranker):
    """The week's fitted model and the inference candidates' per-item aggregates, from PostgreSQL."""
    blob, items = stored_model(cur, table, week)
    return ranker.loaded(bytes(blob)), pa.ipc.open_stream(bytes(items)).read_all()


def previous_ndcg(conn, metrics_table: str, week: date) -> tuple[float, float | None] | None:
    """The validation NDCG@10 of the latest earlier week that went live, and its standard error."""
    with conn.cursor() as cur:
        if not catalog.exists(cur, config.checked_identifier(metrics_table, "metrics_table")):
            return None
        _add_error_columns(cur, metrics_table)
        cur.execute(sql.SQL("SELECT ndcg_at_10, ndcg_se FROM {} WHERE week < %s ORDER BY week DESC, trained_at DESC"
                            " LIMIT 1").format(sql.Identifier(metrics_table)), (week,))
        return cur.fetchone()


def _add_error_columns(cur, metrics_table: str) -> None:
    """Columns later versions record, added to a deployment's existing table: only where missing, since
    `ALTER TABLE` would wait for (and queue up) the readers of the table."""
    present = catalog.table_columns(cur, metrics_table)
    for column in ("available_rows bigint", "ndcg_se double precision", "ndcg_vs_als_se double precision",
                   "groups bigint", "fit_peak_rss_mb double precision", "fits integer"):
        if column.split()[0] not in present:
            cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN " + column).format(sql.Identifier(metrics_table)))


def writable_model_dir(path: Path) -> Path:
    """Fail before training, not after, when the model cannot be saved."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"[pipeline] model_dir: cannot create {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK):
        raise PermissionError(f"[pipeline] model_dir: {path} is not writable")
    return path


def _typed(stored: pa.Schema, columns: list[str]) -> pa.Schema:
    return pa.schema([stored.field(column) for column in columns])


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
