"""The history at a cutoff: only events before it, read a batch at a time, refused when they stop short."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.contracts import ContractError
from pipeline.events.history import History
from pipeline.events.inputs import DAY, Interactions, concatenated, read_items, window_batches
from pipeline.sample_events import write_sample_events
from tests.conftest import CUTOFF


def test_item_features_count_only_events_before_the_cutoff(history):
    events = Interactions(user_id=np.array([1, 2, 2]), item_id=np.array([7, 7, 14]),
                          seconds=np.array([CUTOFF.timestamp() - 86_400 * d for d in (1, 10, 40)], np.int64),
                          weight=np.ones(3, np.float32))
    items = pd.DataFrame({"item_id": [7, 14], "category_id": [1, 2], "parent_id": [1, 1], "available": [1, 1],
                          "released": [np.nan, CUTOFF.timestamp() - 86_400 * 100]})
    at = History.at(CUTOFF, [events], items)

    assert at.item_recent[7].tolist() == [1, 0]
    assert at.item_recent[28].tolist() == [2, 0]
    assert at.item_recent[0].tolist() == [2, 1]
    assert ((at.cutoff - at.item_arrival) / DAY).tolist() == [10, 100]  # its first event, its release


def test_events_read_in_many_small_batches_make_the_same_history(shop, history):
    whole = concatenated(window_batches(shop / "events", None, CUTOFF, {"transaction": 5}))
    pieces = [Interactions(*(getattr(whole, name)[start:start + 500] for name in
                             ("user_id", "item_id", "seconds", "weight"))) for start in range(0, len(whole), 500)]

    piecewise = History.at(CUTOFF, pieces, history.items)

    assert len(pieces) > 10
    assert (piecewise.users == history.users).all()
    assert (piecewise.matrix != history.matrix).nnz == 0
    assert (piecewise.user_categories != history.user_categories).nnz == 0
    assert (piecewise.user_last == history.user_last).all() and (piecewise.user_events == history.user_events).all()


def test_a_week_whose_events_stop_too_long_before_its_cutoff_is_refused_naming_the_lag(shop, history):
    late = CUTOFF + timedelta(days=6)  # the export stopped six days before this cutoff
    stalled = History.at(late, window_batches(shop / "events", None, late, {}),
                                    read_items(shop / "items.parquet"))

    history.check(shop / "events", shop / "items.parquet", timedelta(hours=48))  # the week on time passes
    with pytest.raises(ContractError) as refused:
        stalled.check(shop / "events", shop / "items.parquet", timedelta(hours=48))

    assert str(refused.value).startswith(f"{shop / 'events'}, column 'timestamp': the newest event before the "
                                         "cutoff 2026-11-27 21:00 UTC is from 2026-11-2")
    assert "[events] max_lag_hours allows 48 (is the export late?)" in str(refused.value)


def test_events_that_name_none_of_the_items_are_refused_naming_the_items_file(shop, tmp_path):
    items = read_items(shop / "items.parquet")
    elsewhere = items.assign(item_id=items["item_id"] + 1_000_000)
    unknown = History.at(CUTOFF, window_batches(shop / "events", None, CUTOFF, {}), elsewhere)

    with pytest.raises(ContractError) as refused:
        unknown.check(shop / "events", tmp_path / "items.parquet", timedelta(hours=48))

    assert str(refused.value) == (f"{tmp_path / 'items.parquet'}, column 'item_id': none of the items of the "
                                  f"{unknown.events_read:,} events before the cutoff is in this file")
    assert unknown.events_read > 0


def test_in_a_shop_that_ages_only_the_users_of_the_last_weeks_are_active(tmp_path):
    """Users arrive all along and stay about three weeks: most of those ever seen are gone."""
    end = CUTOFF + timedelta(hours=3)
    write_sample_events(tmp_path, end, users=3_000, items=300, weeks=30, lifetime_weeks=3)
    aged = History.at(CUTOFF, window_batches(tmp_path / "events", None, CUTOFF, {}),
                                 read_items(tmp_path / "items.parquet"))

    active = aged.active_rows(days=28)

    assert len(aged.users) > 2_000  # ever seen
    assert 0 < len(active) < 0.3 * len(aged.users)  # still coming
    assert (aged.user_last[active] >= aged.cutoff - 28 * DAY).all()
