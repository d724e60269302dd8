"""Candidates at a cutoff: two sources, unseen items only, features as they stood at the cutoff."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import candidates
from pipeline.contracts import ContractError
from pipeline.events import Interactions, concatenated, read_items, window_batches
from pipeline.sample_events import write_sample_events

CUTOFF = datetime(2026, 11, 21, 21, 0, tzinfo=UTC)
PER_USER = 30


@pytest.fixture(scope="module")
def history(shop) -> candidates.History:
    return candidates.History.at(CUTOFF, window_batches(shop / "events", None, CUTOFF, {"transaction": 5}),
                                 read_items(shop / "items.parquet"), popular_days=28)


@pytest.fixture(scope="module")
def pool(history) -> pd.DataFrame:
    model = candidates.fit_als(history, factors=16, iterations=5, regularization=0.05, alpha=2.0, seed=1)
    everyone = np.arange(len(history.users))
    return pa.Table.from_batches(list(candidates.candidate_batches(history, model, everyone, PER_USER, 28))).to_pandas()


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


def outcome_week(path, number: int, users: dict[int, int]) -> pq.ParquetFile:
    """Outcomes of week `number`: `rows` candidates for each user, item ids telling the week."""
    ids = np.repeat(list(users), list(users.values()))
    pq.write_table(pa.table({"user_id": ids, "item_id": number * 10_000 + np.arange(len(ids))}), path)
    return pq.ParquetFile(path)


def test_outcomes_beyond_the_cap_are_whole_user_weeks_up_to_it_in_a_seeded_order(tmp_path):
    sizes = {(k, user): 3 + (user + k) % 5 for k in range(3) for user in range(40)}
    weeks = [outcome_week(tmp_path / f"w{k}.parquet", k, {user: sizes[k, user] for user in range(40)})
             for k in range(3)]
    total = sum(sizes.values())

    kept = pa.Table.from_batches(list(candidates.capped_outcomes(weeks, 100, seed=42))).to_pandas()
    again = pa.Table.from_batches(list(candidates.capped_outcomes(weeks, 100, seed=42))).to_pandas()
    other_seed = pa.Table.from_batches(list(candidates.capped_outcomes(weeks, 100, seed=7))).to_pandas()
    everything = pa.Table.from_batches(list(candidates.capped_outcomes(weeks, total, seed=42)))

    assert 90 < len(kept) <= 100 < total
    assert kept.equals(again) and not kept.equals(other_seed)
    per_user_week = kept.groupby([kept["item_id"] // 10_000, "user_id"]).size()
    assert all(rows == sizes[key] for key, rows in per_user_week.items())  # whole user-weeks only
    assert everything.num_rows == total


def test_only_users_active_in_the_window_get_candidates(history):
    model = candidates.fit_als(history, factors=8, iterations=2, regularization=0.05, alpha=2.0, seed=1)
    active = history.active_rows(days=3)
    since = history.cutoff - 3 * candidates.DAY

    given = pa.Table.from_batches(list(candidates.candidate_batches(history, model, active, 5, 28)))

    assert 0 < len(active) < len(history.users)
    assert (history.user_last[active] >= since).all()
    assert set(given.column("user_id").to_pylist()) == set(history.users[active].tolist())
    inactive = np.setdiff1d(np.arange(len(history.users)), active)
    assert (history.user_last[inactive] < since).all()  # each had events, none in the last 3 days


def test_in_a_shop_that_ages_only_the_users_of_the_last_weeks_are_given_candidates(tmp_path):
    """Users arrive all along and stay about three weeks: most of those ever seen are gone."""
    end = CUTOFF + timedelta(hours=3)
    write_sample_events(tmp_path, end, users=3_000, items=300, weeks=30, lifetime_weeks=3)
    aged = candidates.History.at(CUTOFF, window_batches(tmp_path / "events", None, CUTOFF, {}),
                                 read_items(tmp_path / "items.parquet"), popular_days=28)

    active = aged.active_rows(days=28)

    assert len(aged.users) > 2_000  # ever seen
    assert 0 < len(active) < 0.3 * len(aged.users)  # still coming
    assert (aged.user_last[active] >= aged.cutoff - 28 * candidates.DAY).all()


@pytest.mark.parametrize("shards", [1, 3, 4, 700])
def test_shards_are_runs_of_the_users_that_together_are_all_of_them_in_order(shards):
    rows = np.arange(600) * 3
    parts = [candidates.shard_rows(rows, shard, shards) for shard in range(shards)]
    assert np.array_equal(np.concatenate(parts), rows)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_a_saved_als_fit_recommends_what_the_fit_did(history, tmp_path):
    model = candidates.fit_als(history, factors=16, iterations=5, regularization=0.05, alpha=2.0, seed=1)
    with open(tmp_path / "als.npz", "wb") as file:
        candidates.save_als(model, file)
    with open(tmp_path / "als.npz", "rb") as file:
        loaded = candidates.load_als(file)

    rows = np.arange(len(history.users))
    expected = model.recommend(rows, history.matrix[rows], N=PER_USER)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.recommend(rows, history.matrix[rows], N=PER_USER),
                                                    expected, strict=True))

