"""Candidates at a cutoff: two sources, unseen items only, features as they stood at the cutoff."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline import candidates
from pipeline.contracts import ContractError
from pipeline.events import Interactions, concatenated, read_items, window_batches

CUTOFF = datetime(2026, 11, 21, 21, 0, tzinfo=UTC)
PER_USER = 30


@pytest.fixture(scope="module")
def history(shop) -> candidates.History:
    return candidates.History.at(CUTOFF, window_batches(shop / "events", None, CUTOFF, {"transaction": 5}),
                                 read_items(shop / "items.parquet"), popular_days=28)


@pytest.fixture(scope="module")
def pool(history) -> pd.DataFrame:
    model = candidates.fit_als(history, factors=16, iterations=5, regularization=0.05, alpha=2.0, seed=1)
    return pa.Table.from_batches(list(candidates.candidate_batches(history, model, PER_USER, 28))).to_pandas()


def had(history: candidates.History) -> set[tuple[int, int]]:
    rows, columns = history.matrix.nonzero()
    return set(zip(history.users[rows].tolist(), history.items["item_id"].to_numpy()[columns].tolist(), strict=True))


def test_every_user_with_history_gets_candidates_per_user_unseen_available_items(history, pool):
    assert pool.groupby("user_id").size().eq(PER_USER).all()
    assert set(pool["user_id"]) == set(history.users.tolist())
    assert not set(zip(pool["user_id"], pool["item_id"], strict=True)) & had(history)
    assert (pool["available"] == 1).all()
    assert not pool.duplicated(["user_id", "item_id"]).any()


def test_candidates_come_from_both_sources(pool):
    from_als_only = pool["rank_als"] <= PER_USER
    popular_only = pool["rank_als"] > PER_USER
    assert from_als_only.mean() > 0.2 and popular_only.mean() > 0.2


def test_a_user_who_had_the_most_popular_items_gets_the_next_ones(history):
    popular = history.popular_order(28)
    fan = int(np.argmax(history.user_events))
    had_by_fan = set(np.flatnonzero(history.matrix[fan].toarray().ravel() > 0).tolist())
    matrix = history.matrix.tolil()
    matrix[fan, popular[:3 * PER_USER]] = 1.0  # had far more than the first look covers
    heavy = dataclasses.replace(history, matrix=matrix.tocsr())

    top = candidates.unseen_popular(heavy, np.array([fan]), popular, PER_USER)[0]

    expected = [item for item in popular[3 * PER_USER:].tolist() if item not in had_by_fan][:PER_USER]
    assert top.tolist() == expected


def test_item_features_count_only_events_before_the_cutoff(history):
    events = Interactions(user_id=np.array([1, 2, 2]), item_id=np.array([7, 7, 14]),
                          seconds=np.array([CUTOFF.timestamp() - 86_400 * d for d in (1, 10, 40)], np.int64),
                          weight=np.ones(3, np.float32))
    items = pd.DataFrame({"item_id": [7, 14], "category_id": [1, 2], "parent_id": [1, 1], "available": [1, 1]})
    at = candidates.History.at(CUTOFF, [events], items, popular_days=28)

    assert at.item_recent[7].tolist() == [1, 0]
    assert at.item_recent[28].tolist() == [2, 0]
    assert at.item_recent[0].tolist() == [2, 1]
    assert ((at.cutoff - at.item_first) / candidates.DAY).tolist() == [10, 40]


def test_events_read_in_many_small_batches_make_the_same_history(shop, history):
    whole = concatenated(window_batches(shop / "events", None, CUTOFF, {"transaction": 5}))
    pieces = [Interactions(*(getattr(whole, name)[start:start + 500] for name in
                             ("user_id", "item_id", "seconds", "weight"))) for start in range(0, len(whole), 500)]

    piecewise = candidates.History.at(CUTOFF, pieces, history.items, popular_days=28)

    assert len(pieces) > 10
    assert (piecewise.users == history.users).all()
    assert (piecewise.matrix != history.matrix).nnz == 0
    assert (piecewise.user_categories != history.user_categories).nnz == 0
    assert (piecewise.user_last == history.user_last).all() and (piecewise.user_events == history.user_events).all()


def test_a_week_whose_events_stop_too_long_before_its_cutoff_is_refused_naming_the_lag(shop, history):
    late = CUTOFF + timedelta(days=6)  # the export stopped six days before this cutoff
    stalled = candidates.History.at(late, window_batches(shop / "events", None, late, {}),
                                    read_items(shop / "items.parquet"), popular_days=28)

    history.check(shop / "events", shop / "items.parquet", timedelta(hours=48))  # the week on time passes
    with pytest.raises(ContractError) as refused:
        stalled.check(shop / "events", shop / "items.parquet", timedelta(hours=48))

    assert str(refused.value).startswith(f"{shop / 'events'}, column 'timestamp': the newest event before the "
                                         "cutoff 2026-11-27 21:00 UTC is from 2026-11-2")
    assert "[events] max_lag_hours allows 48 (is the export late?)" in str(refused.value)


def test_events_that_name_none_of_the_items_are_refused_naming_the_items_file(shop, tmp_path):
    items = read_items(shop / "items.parquet")
    elsewhere = items.assign(item_id=items["item_id"] + 1_000_000)
    unknown = candidates.History.at(CUTOFF, window_batches(shop / "events", None, CUTOFF, {}), elsewhere, 28)

    with pytest.raises(ContractError) as refused:
        unknown.check(shop / "events", tmp_path / "items.parquet", timedelta(hours=48))

    assert str(refused.value) == (f"{tmp_path / 'items.parquet'}, column 'item_id': none of the items of the "
                                  f"{unknown.events_read:,} events before the cutoff is in this file")
    assert unknown.events_read > 0
