"""On real interactions (MovieLens 100k), the published ranking beats the candidates' als_score order."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from benchmarks.ranking_quality import ranking_quality
from pipeline import WeeklyRecs
from pipeline.config import SOURCE_FEATURES
from pipeline.evaluation.movielens import evaluate_published, make_week, write_events
from pipeline.events.inputs import read_items
from tests.conftest import ROOT, WEEK, apply_settings, query, run_module, run_tasks

DATASET = ROOT.parent / "shared" / "datasets" / "ml-100k"

needs_movielens = pytest.mark.skipif(not (DATASET / "u.data").exists(),
                                     reason=f"MovieLens 100k is not at {DATASET} (its licence forbids shipping it)")
pytestmark = needs_movielens


def test_the_published_ranking_beats_the_als_order_by_ten_percent_as_the_benchmark_measures(settings, tmp_path,
                                                                                             conn):
    make_week(DATASET, tmp_path / "ml")
    settings["pipeline"].update(input_dir=str(tmp_path / "ml"), iterations="300")
    apply_settings(settings)

    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"

    result = evaluate_published(tmp_path / "ml")
    assert result["users"] > 900
    assert result["ndcg_gain"] >= 0.10
    assert result["ndcg_gain_low"] > 0
    (validation_gain, validation_ndcg) = query(conn, "SELECT ndcg_at_10 > als_ndcg_at_10, ndcg_at_10"
                                                     " FROM model_metrics")[0]
    assert validation_gain
    # benchmarks/ranking_quality.py's default row is this very ranking and validation, not a copy that drifts
    benchmarked = ranking_quality(tmp_path / "ml", "CatBoostRanker", SOURCE_FEATURES["files"].derived_features)
    assert benchmarked["ndcg_at_10"] == pytest.approx(result["ndcg_at_10"])
    assert benchmarked["validation_ndcg"] == pytest.approx(validation_ndcg)


def test_as_events_each_film_is_released_on_its_release_date_and_one_without_a_date_is_unavailable(tmp_path):
    write_events(DATASET, tmp_path)

    items = read_items(tmp_path / "items.parquet").set_index("item_id")

    assert len(items) == 1682
    assert items.loc[1, "released"] == datetime(1995, 1, 1, tzinfo=UTC).timestamp()  # Toy Story, 01-Jan-1995
    assert np.isnan(items.loc[267, "released"]) and items.loc[267, "available"] == 0  # "unknown", no date


@pytest.mark.parametrize("arguments", [[], ["make", str(DATASET)], ["rank", str(DATASET)],
                                       ["backtest", str(DATASET), "var/folder", "1998-02-21"]])
def test_a_command_missing_or_unknown_prints_the_usage_and_fails(arguments):
    done = run_module(None, "evaluation.movielens", *arguments)

    assert done.returncode == 2
    assert done.stderr.startswith("usage: python -m pipeline.evaluation.movielens") and "Traceback" not in done.stderr
