"""Candidates at a cutoff: six sources, each accounted for, features as they stood at the cutoff."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sparse

from pipeline.events import candidates, popularity
from pipeline.events.history import History
from pipeline.events.inputs import Interactions
from tests.conftest import CUTOFF

PER_USER = 30


@pytest.fixture(scope="module")
def fits(history) -> candidates.Fits:
    return candidates.Fits(candidates.fit_als(history, factors=16, iterations=5, regularization=0.05, alpha=2.0,
                                              seed=1), candidates.fit_cooccurrence(history, neighbours=20),
                           popularity.expected_takers(history, new_days=28, fallback_days=28))


@pytest.fixture(scope="module")
def pool(history, fits) -> pd.DataFrame:
    everyone = np.arange(len(history.users))
    batches = candidates.candidate_batches(history, fits, everyone, PER_USER, new_days=28)
    return pa.Table.from_batches(list(batches)).to_pandas()


def listed_by(pool: pd.DataFrame, source: str) -> pd.Series:
    return pd.Series(pool["sources"].to_numpy() & (1 << candidates.SOURCES.index(source)) > 0, index=pool.index)


def had(history: History) -> set[tuple[int, int]]:
    rows, columns = history.matrix.nonzero()
    return set(zip(history.users[rows].tolist(), history.items["item_id"].to_numpy()[columns].tolist(), strict=True))


def test_every_user_with_history_gets_candidates_per_user_available_items_unseen_but_by_the_seen_source(history,
                                                                                                        pool):
    assert pool.groupby("user_id").size().eq(PER_USER).all()
    assert set(pool["user_id"]) == set(history.users.tolist())
    pairs_had = had(history)
    had_before = pd.Series([pair in pairs_had for pair in zip(pool["user_id"], pool["item_id"], strict=True)])
    assert (had_before == listed_by(pool, "seen")).all()
    assert (pool["available"] == 1).all()
    assert not pool.duplicated(["user_id", "item_id"]).any()


def test_every_source_brings_candidates_and_says_so(pool):
    for source in candidates.SOURCES:
        assert listed_by(pool, source).mean() > 0.05, source
    assert (pool["sources"] > 0).all()
    assert (listed_by(pool, "als") == (pool["rank_als"] <= PER_USER)).all()
    assert (listed_by(pool, "cooccurrence") == (pool["rank_cooccurrence"] <= PER_USER)).all()
    assert (pool.loc[listed_by(pool, "cooccurrence"), "cooccurrence_score"] > 0).all()


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


def test_only_users_active_in_the_window_get_candidates(history, fits):
    active = history.active_rows(days=3)
    since = history.cutoff - 3 * candidates.DAY

    given = pa.Table.from_batches(list(candidates.candidate_batches(history, fits, active, 5, 28)))

    assert 0 < len(active) < len(history.users)
    assert (history.user_last[active] >= since).all()
    assert set(given.column("user_id").to_pylist()) == set(history.users[active].tolist())
    inactive = np.setdiff1d(np.arange(len(history.users)), active)
    assert (history.user_last[inactive] < since).all()  # each had events, none in the last 3 days


@pytest.mark.parametrize("shards", [1, 3, 4, 700])
def test_shards_are_runs_of_the_users_that_together_are_all_of_them_in_order(shards):
    rows = np.arange(600) * 3
    parts = [candidates.shard_rows(rows, shard, shards) for shard in range(shards)]
    assert np.array_equal(np.concatenate(parts), rows)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_saved_fits_recommend_what_the_fits_did(history, fits, tmp_path):
    names = ("als.npz", "cooccurrence.npz", "expected_takers.npy")
    with open(tmp_path / names[0], "wb") as als, open(tmp_path / names[1], "wb") as cooccurrence, \
            open(tmp_path / names[2], "wb") as expected:
        fits.save(als, cooccurrence, expected)
    with open(tmp_path / names[0], "rb") as als, open(tmp_path / names[1], "rb") as cooccurrence, \
            open(tmp_path / names[2], "rb") as expected:
        loaded = candidates.Fits.load(als, cooccurrence, expected)

    rows = np.arange(len(history.users))
    for fit, again in ((fits.als, loaded.als), (fits.cooccurrence, loaded.cooccurrence)):
        expected = fit.recommend(rows, history.matrix[rows].astype(np.float64), N=PER_USER)
        assert all(np.array_equal(a, b) for a, b in zip(
            again.recommend(rows, history.matrix[rows].astype(np.float64), N=PER_USER), expected, strict=True))
    assert np.array_equal(loaded.expected_takers, fits.expected_takers)


RELEASED_DAYS_AGO = [np.nan, 500, 100, 30, 10, -3]  # 7's release unknown; 42 comes out in 3 days
HAND_MADE_ITEMS = pd.DataFrame({"item_id": [7, 14, 21, 28, 35, 42], "category_id": [1, 1, 2, 2, 3, 3],
                                "parent_id": [1, 1, 1, 1, 1, 1], "available": [1, 1, 1, 1, 1, 1],
                                "released": CUTOFF.timestamp() - 86_400 * np.array(RELEASED_DAYS_AGO)})
NEW_DAYS = 60


def hand_made(*taken: tuple[int, int, float]) -> History:
    """A history of (user, item, days before the cutoff) events, each weighing 1."""
    user, item, days = (np.array(column) for column in zip(*taken, strict=True))
    events = Interactions(user_id=user, item_id=item, seconds=(CUTOFF.timestamp() - days * 86_400).astype(np.int64),
                          weight=np.ones(len(user), np.float32))
    return History.at(CUTOFF, [events], HAND_MADE_ITEMS, recent_days=28)


def pool_of(history: History, per_user: int) -> pd.DataFrame:
    fits = candidates.Fits(candidates.fit_als(history, factors=2, iterations=2, regularization=0.05, alpha=2.0,
                                              seed=1), candidates.fit_cooccurrence(history, neighbours=20),
                           popularity.expected_takers(history, NEW_DAYS, fallback_days=7))
    everyone = np.arange(len(history.users))
    batches = candidates.candidate_batches(history, fits, everyone, per_user, new_days=NEW_DAYS)
    pool = pa.Table.from_batches(list(batches)).to_pandas()
    return pool.set_index(["user_id", "item_id"])


A_WEEK = (*((user, 7, 2) for user in (1, 2, 3)), *((user, 14, 3) for user in (1, 2, 3)), (4, 7, 1),
          (7, 7, 60), (8, 7, 60), (7, 21, 61), (8, 21, 61), (5, 21, 5), *((user, 28, 4) for user in (9, 10, 11)))


def test_cooccurrence_lists_what_others_took_lately_with_the_users_recent_items():
    pool = pool_of(hand_made(*A_WEEK), per_user=4)

    # users 1-3 took 7 and 14 this week; 7 and 21 went together only 60 days ago, beyond recent_days
    assert listed_by(pool, "cooccurrence")[4].to_dict() == \
        {14: True, 21: False, 28: False, 35: False}
    assert pool.loc[(4, 14), "rank_cooccurrence"] == 1 and pool.loc[(4, 14), "cooccurrence_score"] > 0


def test_category_lists_the_popular_items_of_the_users_own_categories():
    pool = pool_of(hand_made(*A_WEEK), per_user=4)

    # user 5 took only category 2 (item 21): its popular item 28, not the more popular 7 of category 1
    assert listed_by(pool, "category")[5].to_dict() == \
        {7: False, 14: False, 28: True, 35: False}


def test_seen_items_join_the_pool_as_far_as_the_shops_users_come_back_to_things():
    nobody_returns = hand_made(*A_WEEK)
    one_returns = hand_made(*A_WEEK, (12, 35, 20), (12, 35, 2))  # 1 of the week's 12 user-items was had before

    assert nobody_returns.repeat_share == 0
    assert one_returns.repeat_share == pytest.approx(1 / 12)
    assert not listed_by(pool_of(nobody_returns, per_user=12).reset_index(), "seen").any()
    seen = pool_of(one_returns, per_user=12).reset_index()
    seen = seen[listed_by(seen, "seen")]
    assert seen.groupby("user_id").size().eq(1).all()  # round(12 x 1/12) = 1 slot, the user's heaviest item
    assert seen.set_index("user_id").loc[12, "item_id"] == 35
    assert (seen["user_item_weight"] > 0).all()


def test_new_lists_the_most_popular_items_released_in_the_last_new_days():
    pool = pool_of(hand_made(*A_WEEK), per_user=5)

    # released 30 (28, taken by three users this week) and 10 days ago (35, by nobody yet) are new;
    # 100 and 500 days ago (21, 14) are not, nor an item of unknown release (7), nor one out in 3 days (42)
    assert listed_by(pool, "new")[4].to_dict() == {14: False, 21: False, 28: True, 35: True, 42: False}
    assert listed_by(pool, "new")[9].to_dict() == {7: False, 14: False, 21: False, 35: True, 42: False}
    assert pool.loc[(4, 28), "item_age_days"] == 30 and pool.loc[(9, 7), "item_age_days"] == 60  # 7: its first event


def test_the_sources_lists_fuse_by_reciprocal_rank_an_item_two_list_third_before_one_listed_second():
    lists = {name: np.full((1, 3), -1) for name in candidates.SOURCES}
    lists["als"][0] = [10, 20, 30]
    lists["popular"][0] = [40, 50, 30]

    fused = candidates.fused(np.array([0]), lists, per_user=3)

    assert fused.sort_values("fused", ascending=False)["item"].tolist() == [30, 10, 40]  # 50 and 20 left out
    assert fused.set_index("item").loc[30, "sources"] == 0b11


def test_each_rows_top_is_its_highest_positive_scores_ties_to_the_lower_column():
    scores = sparse.csr_matrix((np.array([0.5, 0.9, 0.5, -1.0, 0.5, 0.2]), np.array([7, 2, 3, 0, 1, 4]),
                                np.array([0, 4, 4, 6])), shape=(3, 8))  # row 0's columns given unsorted

    assert candidates.top_of_rows(scores, 3).tolist() == [[2, 3, 7], [-1, -1, -1], [1, 4, -1]]


def test_items_fused_to_the_same_score_go_by_their_best_rank_then_by_the_sources_order():
    lists = {name: np.full((2, 2), -1) for name in candidates.SOURCES}
    lists["als"][1] = [10, 20]
    lists["popular"][1] = [30, 10]
    lists["new"][1] = [20, 30]  # 10, 20 and 30 each listed first once and second once

    fused = candidates.fused(np.array([5, 9]), lists, per_user=2)

    assert fused["row"].tolist() == [9, 9]  # the first user has no lists, and no candidates
    assert fused["item"].tolist() == [10, 30]  # first in als, then first in popular; 20, first in new, left out
