"""The week's fit runs in processes of their own, and what they hand back is what a fit in the
worker would have given: the same model, the same validation."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import SOURCE_FEATURES
from pipeline.features import item_stats
from pipeline.ranker import Ranker
from pipeline.training import SAMPLE, WHOLE, FreshProcesses, fitted, train_files, validated


@pytest.fixture
def ranker(sample_week) -> Ranker:
    chosen = SOURCE_FEATURES["files"]
    return Ranker("CatBoostRanker", "YetiRank", chosen.features, chosen.derived_features, chosen.cat_features,
                  iterations=30, thread_count=1, seed=42, holdout_share=0.2, holdout="users",
                  popularity=pd.read_parquet(sample_week / "top_popular.parquet"))


@pytest.fixture
def train(sample_week, ranker, tmp_path) -> pd.DataFrame:
    """The sample week's train candidates, written where `TrainRanker` writes its sample."""
    table = pq.read_table(sample_week / "candidates_train.parquet").select([*ranker.columns, "target"])
    with pa.ipc.new_file(str(tmp_path / SAMPLE), table.schema) as writer:
        writer.write_table(table)
    return table.to_pandas()


def test_the_model_fitted_through_train_files_scores_as_one_fitted_on_the_rows(ranker, train, tmp_path):
    items = item_stats(train)
    processes = FreshProcesses()
    counts = processes.run(train_files, ranker, tmp_path, pa.Table.from_pandas(items.reset_index()))
    processes.run(fitted, ranker, tmp_path, tmp_path / "model.cbm")

    prepared = ranker.prepared(train, items)
    in_worker = ranker.fit(ranker.pool(prepared))
    in_child = ranker.loaded((tmp_path / "model.cbm").read_bytes())
    np.testing.assert_allclose(ranker.scores(in_child, prepared), ranker.scores(in_worker, prepared))
    assert counts == {"train_rows": len(train), "positives": int(train["target"].sum()), "fits": 2}


def test_a_week_fitted_once_keeps_the_model_its_validation_scored_and_learns_the_learn_rows_alone(ranker, train,
                                                                                                  tmp_path):
    items = item_stats(train)
    processes = FreshProcesses()
    counts = processes.run(train_files, ranker, tmp_path, pa.Table.from_pandas(items.reset_index()), True)

    metrics = processes.run(validated, ranker, tmp_path, tmp_path / "model.cbm")

    learn, test = ranker.held_out_split(ranker.prepared(train, items))
    assert counts == {"train_rows": len(learn), "positives": int(learn["target"].sum()), "fits": 1}
    assert not (tmp_path / WHOLE).exists()
    assert ranker.validation(ranker.loaded((tmp_path / "model.cbm").read_bytes()), test) == pytest.approx(metrics)


def test_the_validation_holds_out_the_same_users_and_gives_the_same_metrics(ranker, train, tmp_path):
    items = item_stats(train)
    FreshProcesses().run(train_files, ranker, tmp_path, pa.Table.from_pandas(items.reset_index()))

    learn, test = ranker.held_out_split(ranker.prepared(train, items))
    expected = ranker.validation(ranker.fit(ranker.pool(learn)), test)
    assert FreshProcesses().run(validated, ranker, tmp_path) == pytest.approx(expected)
    assert 0 < expected["groups"] < train["user_id"].nunique()


def holding(megabytes: int) -> int:
    """A step that holds `megabytes` of memory at once."""
    return int(np.ones(megabytes << 17).sum()) >> 17


def test_each_step_is_another_process_and_its_errors_come_back():
    assert FreshProcesses().run(os.getpid) != os.getpid()
    with pytest.raises(ValueError, match="invalid literal"):
        FreshProcesses().run(int, "not a number")


def test_the_largest_step_s_peak_memory_is_kept_though_the_worker_never_held_it():
    processes = FreshProcesses()
    assert processes.run(holding, 50) == 50
    assert processes.run(holding, 400) == 400
    assert processes.run(holding, 10) == 10
    assert 400 <= processes.peak_mb < 400 + 300  # the step's own, with the interpreter and its libraries


def test_a_process_that_dies_names_the_setting_that_bounds_its_memory():
    with pytest.raises(MemoryError, match=r"_exit died .*lower \[pipeline\] max_train_rows"):
        FreshProcesses().run(os._exit, 9)


def test_the_validation_holds_out_the_latest_outcome_week_where_asked(ranker):
    weeks = pd.to_datetime(["2026-11-07", "2026-11-14", "2026-11-21"]).date
    rows = pd.DataFrame({"user_id": np.tile([1, 2, 3, 4], 3), "outcome_week": np.repeat(weeks, 4)})
    latest = dataclasses.replace(ranker, holdout="latest_week")

    learn, test = latest.held_out_split(rows)
    by_users = ranker.held_out_split(rows)[1]

    assert set(test["outcome_week"]) == {weeks[-1]} and len(test) == 4
    assert set(learn["outcome_week"]) == set(weeks[:-1])
    assert set(by_users["outcome_week"]) == set(weeks)  # the users' split takes every week of the users it holds out
    assert latest.held_out_split(rows.drop(columns="outcome_week"))[1]["user_id"].tolist() == \
        by_users["user_id"].tolist()  # one week of candidates (source = files): the users' split
    one_week = rows[rows["outcome_week"] == weeks[0]]
    assert latest.held_out_split(one_week)[1]["user_id"].tolist() == \
        ranker.held_out_split(one_week)[1]["user_id"].tolist()  # one outcome week: nothing earlier to learn from
