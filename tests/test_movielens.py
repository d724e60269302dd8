"""On real interactions (MovieLens 100k), the published ranking beats the candidates' als_score order."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import WeeklyRecs
from pipeline.movielens import evaluate_published, make_week
from tests.conftest import WEEK, apply_settings, query, run_tasks

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-100k"

needs_movielens = pytest.mark.skipif(not (DATASET / "u.data").exists(),
                                     reason=f"MovieLens 100k is not at {DATASET} (its licence forbids shipping it)")
pytestmark = needs_movielens


def test_the_published_ranking_beats_the_als_order_by_ten_percent(settings, tmp_path, conn):
    make_week(DATASET, tmp_path / "ml")
    settings["pipeline"].update(input_dir=str(tmp_path / "ml"), iterations="300")
    apply_settings(settings)

    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"

    result = evaluate_published(tmp_path / "ml")
    assert result["users"] > 900
    assert result["ndcg_gain"] >= 0.10
    assert result["ndcg_gain_low"] > 0
    (validation_gain,) = query(conn, "SELECT ndcg_at_10 > als_ndcg_at_10 FROM model_metrics")[0]
    assert validation_gain
