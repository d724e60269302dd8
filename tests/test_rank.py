"""RankCandidates re-trains on the week's train candidates and publishes a per-user ranking."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline import RankCandidates
from pipeline.rank import candidates_ranked
from tests.conftest import WEEK, query, run_tasks


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
