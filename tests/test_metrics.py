"""Ranking metrics at 10, per user, and the user bootstrap of a relative gain and of a mean."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.metrics import (
    bootstrap_gain,
    bootstrap_mean,
    per_user_metrics,
    places,
    share_found,
    summary,
    top_k_against,
)


def test_a_perfect_order_scores_one_and_a_reversed_order_less():
    users = np.array([1] * 12)
    targets = np.array([1, 1] + [0] * 10)
    perfect = per_user_metrics(users, -np.arange(12.0), targets)
    reversed_ = per_user_metrics(users, np.arange(12.0), targets)

    assert perfect.loc[1].to_dict() == pytest.approx({"ndcg": 1.0, "precision": 0.2, "recall": 1.0})
    assert reversed_.loc[1].to_dict() == pytest.approx({"ndcg": 0.0, "precision": 0.0, "recall": 0.0})


def test_ndcg_discounts_a_hit_by_its_position():
    users, targets = np.array([7, 7, 7]), np.array([0, 0, 1])

    third = per_user_metrics(users, np.array([3.0, 2.0, 1.0]), targets)

    assert third.loc[7, "ndcg"] == pytest.approx(1 / np.log2(4))


def test_users_without_a_positive_are_left_out_of_the_means():
    result = per_user_metrics(np.array([1, 1, 2, 2]), np.array([2.0, 1.0, 2.0, 1.0]), np.array([1, 0, 0, 0]))

    assert list(result.index) == [1]
    assert summary(result) == pytest.approx({"ndcg_at_10": 1.0, "precision_at_10": 0.1, "recall_at_10": 1.0})


def test_the_bootstrap_interval_holds_the_observed_gain():
    rng = np.random.default_rng(1)
    baseline = pd.Series(rng.random(500))
    model = baseline * 1.2

    low, high = bootstrap_gain(model, baseline)

    assert low <= 0.2 + 1e-9 <= high + 1e-9
    assert high - low < 1e-6  # every resample sees the same 20% gain


@pytest.mark.filterwarnings("error")
def test_an_interval_over_users_whom_the_baseline_may_serve_nothing_is_unbounded_without_a_warning():
    model, baseline = pd.Series([1.0, 1.0]), pd.Series([1.0, 0.0])  # a quarter of the draws: the second user twice
    low, high = bootstrap_gain(model, baseline)
    assert low == 0.0 and not np.isfinite(high)


@pytest.mark.parametrize("users", [40, 400])
def test_the_interval_of_a_mean_is_about_two_standard_errors_either_side(users):
    found = pd.Series(np.tile([0.0, 1.0], users // 2))  # half of the users found what they took

    low, high = bootstrap_mean(found, rounds=4000)

    half_width = 1.96 * 0.5 / np.sqrt(users)
    assert low < 0.5 < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)


def test_top_k_against_scores_every_user_of_the_truth_and_zero_without_a_list():
    lists = pd.DataFrame({"user_id": [1, 1, 1, 3], "item_id": [10, 11, 12, 30], "rank": [1, 2, 3, 1]})
    truth = pd.DataFrame({"user_id": [1, 2, 2], "item_id": [11, 20, 21]})

    scored = top_k_against(lists, truth)

    assert list(scored.index) == [1, 2]
    assert scored.loc[1, "ndcg"] == pytest.approx(1 / np.log2(3)) and scored.loc[1, "recall"] == 1.0
    assert scored.loc[2].tolist() == [0.0, 0.0]


def test_share_found_is_the_share_of_what_each_user_took_that_the_pool_held():
    pool = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 20]})
    truth = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [10, 99, 98, 97]})

    assert share_found(pool, truth).tolist() == [0.5, 0.0]


def test_places_count_each_entry_from_the_start_of_its_group():
    assert places(np.array([3, 3, 3, 7, 9, 9])).tolist() == [0, 1, 2, 0, 0, 1]
    assert places(np.array([-1, -1, 0])).tolist() == [0, 1, 0]
    assert places(np.array([], np.int64)).tolist() == []
