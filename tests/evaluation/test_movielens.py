"""On real interactions (MovieLens 100k), the published ranking beats the candidates' als_score order."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

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


def published_week(settings: dict, folder: Path, **pipeline: str) -> None:
    """The modelling stage's files made from MovieLens in `folder`, and the week made of them published."""
    make_week(DATASET, folder)
    settings["pipeline"].update(input_dir=str(folder), **pipeline)
    apply_settings(settings)
    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"


def test_the_published_ranking_beats_the_als_order_by_ten_percent(settings, tmp_path, conn):
    published_week(settings, tmp_path / "ml", iterations="300")

    result = evaluate_published(tmp_path / "ml")
    assert result["users"] > 900
    assert result["ndcg_gain"] >= 0.10
    assert result["ndcg_gain_low"] > 0
    assert query(conn, "SELECT ndcg_at_10 > als_ndcg_at_10 FROM model_metrics") == [(True,)]


def test_the_benchmarks_default_row_is_the_published_ranking_and_its_validation_not_a_copy_that_drifts(
        settings, tmp_path, conn):
    """The fixture's short fit: what is compared is the code path, which the iterations do not change."""
    published_week(settings, tmp_path / "ml")
    (validation_ndcg,), = query(conn, "SELECT ndcg_at_10 FROM model_metrics")

    benchmarked = ranking_quality(tmp_path / "ml", "CatBoostRanker", SOURCE_FEATURES["files"].derived_features)

    assert benchmarked["ndcg_at_10"] == pytest.approx(evaluate_published(tmp_path / "ml")["ndcg_at_10"])
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


@pytest.mark.parametrize("command", [["make", "/nowhere/ml-100k", "out"], ["events", "/nowhere/ml-100k", "out"],
                                     ["backtest", "/nowhere/ml-100k"]])
def test_a_folder_without_the_dataset_is_named_with_where_the_dataset_comes_from(command):
    done = run_module(None, "evaluation.movielens", *command)

    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert ("argument dataset: /nowhere/ml-100k holds no MovieLens 100k (u.data and u.item missing): give the folder "
            "ml-100k.zip unpacks to") in done.stderr
