"""Features derived from a week's candidates, the same way for train and inference.

They come from the week's own inputs: where an item stands in its user's `als_score` order, how
popular it is (the week's `default_recs` counts, and its frequency among all candidates), and how
much of the user's candidate list shares its category.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DERIVED = {
    "item_popularity": "log(1 + items_cnt) of the item in the week's default_recs, 0 where absent",
    "popularity_rank": "position of the item in its user's candidates by item_popularity (1 = most popular;"
                       " items tied share the best place)",
    "als_rank": "position of the candidate in its user's als_score order (1 = best)",
    "als_gap": "the user's best als_score minus this one",
    "item_frequency": "share of users who have the item among their candidates (popularity)",
    "item_mean_als": "mean als_score of the item over all users",
    "category_share": "share of the user's candidates in the item's category",
}


def item_stats(candidates: pd.DataFrame) -> pd.DataFrame:
    """Per-item aggregates over a whole table of candidates, indexed by item_id (in SQL: `rank.item_stats`)."""
    by_item = candidates.groupby("item_id")["als_score"]
    return pd.DataFrame({"item_frequency": by_item.size() / candidates["user_id"].nunique(),
                         "item_mean_als": by_item.mean().astype("float64")})


def with_derived_features(candidates: pd.DataFrame, names: tuple[str, ...], popularity: pd.DataFrame,
                          items: pd.DataFrame | None = None, by: str = "user_id") -> pd.DataFrame:
    """`popularity` has `item_id` and `items_cnt` (the week's default_recs); `items` the week's `item_stats`.

    Every feature but the per-item ones looks only at the candidate's own group (`by`: a user, or a
    user's week), so a shard of whole users gets the same features as the whole week when it is
    given the whole week's `items`.
    """
    unknown = set(names) - set(DERIVED)
    if unknown:
        raise ValueError(f"[pipeline] derived_features: unknown {sorted(unknown)}; known: {sorted(DERIVED)}")
    frame = candidates.copy()
    by_user = frame.groupby(by)["als_score"]
    items = item_stats(frame) if items is None else items
    counts = frame["item_id"].map(popularity.set_index("item_id")["items_cnt"]).fillna(0)
    compute = {
        "item_popularity": lambda: np.log1p(counts),
        "popularity_rank": lambda: counts.groupby(frame[by]).rank(ascending=False, method="min"),
        "als_rank": lambda: by_user.rank(ascending=False, method="first"),
        "als_gap": lambda: by_user.transform("max") - frame["als_score"],
        "item_frequency": lambda: frame["item_id"].map(items["item_frequency"]),
        "item_mean_als": lambda: frame["item_id"].map(items["item_mean_als"]),
        "category_share": lambda: frame.groupby([by, "category_id"])["item_id"].transform("size")
        / frame.groupby(by)["item_id"].transform("size"),
    }
    for name in names:
        frame[name] = compute[name]().astype("float64")
    return frame
