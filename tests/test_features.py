"""Derived features are computed from the week's inputs, the same way for train and inference."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.features import DERIVED, with_derived_features

CANDIDATES = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "item_id": [10, 20, 30, 10, 40],
                           "als_score": [0.9, 0.5, 0.7, 0.2, 0.4], "category_id": [5, 5, 6, 5, 6]})
POPULARITY = pd.DataFrame({"item_id": [10, 30], "items_cnt": [99, 9]})


def test_als_rank_and_gap_are_per_user():
    frame = with_derived_features(CANDIDATES, ("als_rank", "als_gap"), POPULARITY)

    assert frame["als_rank"].tolist() == [1, 3, 2, 2, 1]
    assert frame["als_gap"].tolist() == pytest.approx([0, 0.4, 0.2, 0.2, 0])


def test_popularity_comes_from_default_recs_and_is_zero_for_absent_items():
    frame = with_derived_features(CANDIDATES, ("item_popularity", "popularity_rank", "item_frequency"), POPULARITY)

    assert frame.loc[frame["item_id"] == 20, "item_popularity"].item() == 0
    assert frame["popularity_rank"].tolist() == [1, 3, 2, 1, 2]
    assert frame.loc[frame["item_id"] == 10, "item_frequency"].tolist() == [1.0, 1.0]


def test_items_absent_from_default_recs_share_one_popularity_rank_whatever_their_order():
    """Absent items tie at count 0; a rank that broke the tie by row would tell the ranker the file's order."""
    absent = pd.DataFrame({"user_id": [1, 1, 1, 1], "item_id": [50, 10, 70, 60], "als_score": [0.1] * 4,
                           "category_id": [5] * 4})

    frame = with_derived_features(absent, ("popularity_rank",), POPULARITY)
    reordered = with_derived_features(absent.iloc[::-1], ("popularity_rank",), POPULARITY)

    assert frame["popularity_rank"].tolist() == [2, 1, 2, 2]
    assert reordered.sort_index()["popularity_rank"].tolist() == [2, 1, 2, 2]


def test_category_share_is_the_users_share_of_candidates_in_that_category():
    frame = with_derived_features(CANDIDATES, ("category_share",), POPULARITY)

    assert frame["category_share"].tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1 / 2, 1 / 2])


def test_every_declared_feature_is_computed_and_unknown_names_are_refused():
    assert set(with_derived_features(CANDIDATES, tuple(DERIVED), POPULARITY).columns) >= set(DERIVED)
    with pytest.raises(ValueError, match=r"\[pipeline\] derived_features: unknown \['price_rank'\]"):
        with_derived_features(CANDIDATES, ("price_rank",), POPULARITY)
