"""RankCandidates re-trains on the week's train candidates and publishes a per-user ranking."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import RankCandidates
from pipeline.ranker import candidates_ranked
from tests.conftest import NEXT_WEEK, WEEK, apply_settings, query, run_luigi, run_tasks, table_snapshot


def test_ranks_are_one_to_n_per_user_in_score_order(settings, conn):
    assert run_tasks(RankCandidates(week=WEEK)).name == "SUCCESS"

    rows = query(conn, "SELECT user_id, rank, cb_score FROM candidates_ranked ORDER BY user_id, rank")
    by_user: dict[int, list[tuple[int, float]]] = {}
    for user, rank, score in rows:
        by_user.setdefault(user, []).append((rank, score))
    assert len(by_user) == 300
    for ranked in by_user.values():
        assert [rank for rank, _ in ranked] == list(range(1, len(ranked) + 1))
        scores = [score for _, score in ranked]
        assert scores == sorted(scores, reverse=True)


def test_ranked_table_holds_every_inference_candidate_with_its_columns(settings, conn):
    run_tasks(RankCandidates(week=WEEK))

    assert query(conn, "SELECT count(*) FROM candidates_ranked") == \
        query(conn, "SELECT count(*) FROM candidates_inference")
    columns = [c for (c,) in query(conn, "SELECT column_name FROM information_schema.columns"
                                   " WHERE table_name = 'candidates_ranked' ORDER BY ordinal_position")]
    assert columns == ["user_id", "item_id", "als_score", "category_id", "parent_id", "available",
                       "week", "cb_score", "rank"]


def test_model_is_saved_under_the_weeks_folder(settings, tmp_path):
    run_tasks(RankCandidates(week=WEEK))

    assert (tmp_path / "models" / WEEK.isoformat() / "model.cbm").stat().st_size > 0


def test_the_model_beats_chance_on_the_sample_week(settings, conn):
    """The sample data is made so that the ranker can learn: its top 5 hold more positives."""
    run_tasks(RankCandidates(week=WEEK))

    (score_auc,) = query(conn, """
        SELECT avg((r.cb_score > o.cb_score)::int) FROM candidates_ranked r
        JOIN candidates_ranked o USING (user_id) WHERE r.rank = 1 AND o.rank = 20""")[0]
    assert score_auc == 1


def test_ties_are_broken_by_item_id():
    candidates = pa.table({"user_id": [1, 1, 1, 2], "item_id": [30, 10, 20, 5]})

    ranked = candidates_ranked(candidates, np.array([0.5, 0.5, 0.9, 0.1]))

    assert ranked.column("item_id").to_pylist() == [20, 10, 30, 5]
    assert ranked.column("rank").to_pylist() == [1, 2, 3, 1]


def test_each_published_week_has_a_metrics_row(settings, conn):
    run_tasks(RankCandidates(week=WEEK), RankCandidates(week=NEXT_WEEK))

    rows = query(conn, "SELECT week, model_type, train_rows, positives > 0, ndcg_at_10 BETWEEN 0 AND 1,"
                       " als_ndcg_at_10 BETWEEN 0 AND 1, duration_s > 0 FROM model_metrics ORDER BY week")
    assert rows == [(WEEK, "CatBoostRanker", 6000, True, True, True, True),
                    (NEXT_WEEK, "CatBoostRanker", 6000, True, True, True, True)]


def als_score_that_knows_the_target(input_dir):
    """A week whose als_score is nearly the label, while the ranker is configured not to see it."""
    table = pq.read_table(input_dir / "candidates_train.parquet")
    target = table.column("target").to_numpy().astype("float32")
    noisy = target + np.random.default_rng(0).random(len(target), dtype=np.float32) * 0.1
    pq.write_table(table.set_column(table.schema.get_field_index("als_score"), "als_score", pa.array(noisy)),
                   input_dir / "candidates_train.parquet")


def test_a_week_ranking_worse_than_the_als_order_is_refused_with_both_numbers(settings, config_file, input_dir, conn):
    run_tasks(RankCandidates(week=WEEK))
    before = table_snapshot(conn, "candidates_ranked")
    als_score_that_knows_the_target(input_dir)
    settings["pipeline"].update(features='["category_id", "parent_id", "available"]', derived_features="[]")
    apply_settings(settings, config_file)

    refused = run_luigi(config_file, "RankCandidates", "--local-scheduler", "--week", "2026-11-28")

    assert refused.returncode == 30
    assert re.search(r"QualityGateError: week 2026-11-28: validation NDCG@10 0\.\d{4} is below the als_score "
                     r"order's (0\.9\d{3}|1\.0000)( and [^;]*)? by more than max_ndcg_drop=0\.02", refused.stderr)
    assert table_snapshot(conn, "candidates_ranked") == before
    assert query(conn, "SELECT week FROM model_metrics") == [(WEEK,)]

    forced = run_luigi(config_file, "RankCandidates", "--local-scheduler", "--week", "2026-11-28",
                       "--RankCandidates-force-publish")
    assert forced.returncode == 0
    assert query(conn, "SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]


def test_a_week_worse_than_the_last_published_one_is_refused(settings, input_dir, conn):
    run_tasks(RankCandidates(week=WEEK))
    table = pq.read_table(input_dir / "candidates_train.parquet")
    shuffled = np.random.default_rng(1).permutation(table.column("target").to_numpy())
    pq.write_table(table.set_column(table.schema.get_field_index("target"), "target", pa.array(shuffled)),
                   input_dir / "candidates_train.parquet")

    assert run_tasks(RankCandidates(week=NEXT_WEEK)).name == "FAILED"

    assert query(conn, "SELECT DISTINCT week FROM candidates_ranked") == [(WEEK,)]
