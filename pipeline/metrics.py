"""Top-k ranking quality per user: NDCG, precision and recall at k, and a user bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd

K = 10


def per_user_metrics(users: np.ndarray, scores: np.ndarray, targets: np.ndarray, k: int = K) -> pd.DataFrame:
    """One row per user with at least one positive: ndcg, precision and recall at k of `scores`' order.

    Ties in score are broken by the row order given, which callers keep deterministic.
    """
    order = np.lexsort((-scores, users))  # stable: ties keep the row order
    position = np.empty(len(users), np.int64)
    position[order] = places(users[order]) + 1
    frame = pd.DataFrame({"user": users, "position": position, "target": targets.astype(float)})
    frame["gain"] = np.where(frame["position"] <= k, frame["target"] / np.log2(frame["position"] + 1), 0.0)
    frame["hit"] = (frame["position"] <= k) * frame["target"]
    by_user = frame.groupby("user").agg(dcg=("gain", "sum"), hits=("hit", "sum"), positives=("target", "sum"))
    by_user = by_user[by_user["positives"] > 0]
    ideal = by_user["positives"].clip(upper=k).astype(int).map(_ideal_dcg(k))
    return pd.DataFrame({"ndcg": by_user["dcg"] / ideal, "precision": by_user["hits"] / k,
                         "recall": by_user["hits"] / by_user["positives"]})


def places(group: np.ndarray) -> np.ndarray:
    """Of entries sorted by group (a user's ranked list, say): each one's place in its group, from 0."""
    position = np.arange(len(group))
    return position - np.maximum.accumulate(np.where(np.diff(group, prepend=-1) != 0, position, 0))


def _ideal_dcg(k: int) -> dict[int, float]:
    discounts = 1 / np.log2(np.arange(2, k + 2))
    return {n: float(discounts[:n].sum()) for n in range(1, k + 1)}


def top_k_against(lists: pd.DataFrame, truth: pd.DataFrame, k: int = K) -> pd.DataFrame:
    """NDCG and recall at k of ranked lists (`user_id`, `item_id`, `rank`: 1 = first) against what each user
    of `truth` (`user_id`, `item_id`) went on to take; a user without a list scores 0."""
    top = lists[lists["rank"] <= k].merge(truth.assign(hit=1.0), on=["user_id", "item_id"], how="inner")
    dcg = (1 / np.log2(top["rank"] + 1)).groupby(top["user_id"]).sum()
    hits = top.groupby("user_id").size()
    taken = truth.groupby("user_id").size()
    ideal = taken.clip(upper=k).map(_ideal_dcg(k))
    return pd.DataFrame({"ndcg": dcg.reindex(taken.index, fill_value=0) / ideal,
                         "recall": hits.reindex(taken.index, fill_value=0) / taken})


def share_found(pool: pd.DataFrame, truth: pd.DataFrame) -> pd.Series:
    """Per user of `truth`: the share of what they took that their candidate `pool` held."""
    found = truth.merge(pool[["user_id", "item_id"]], on=["user_id", "item_id"]).groupby("user_id").size()
    taken = truth.groupby("user_id").size()
    return found.reindex(taken.index, fill_value=0) / taken


def summary(per_user: pd.DataFrame) -> dict[str, float]:
    return {f"{name}_at_{K}": float(per_user[name].mean()) for name in ("ndcg", "precision", "recall")}


def standard_error(per_user: pd.Series) -> float:
    """Of the mean over users: how far it moves by which users happen to be there (0 for a single user)."""
    return float(per_user.std(ddof=1) / np.sqrt(len(per_user))) if len(per_user) > 1 else 0.0


def bootstrap_gain(model: pd.Series, baseline: pd.Series, rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the relative gain in mean `model` over mean `baseline`, resampling users. Among a
    few users, some draws hold only users whom the baseline served nothing: their gain is unbounded
    (inf, or NaN where the model served nothing either), and so is the interval."""
    means = _resampled_means(np.column_stack([model.to_numpy(), baseline.loc[model.index].to_numpy()]), rounds, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _middle_95(means[:, 0] / means[:, 1] - 1)


def bootstrap_mean(values: pd.Series, rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean of `values` (one per user), resampling users: how far a figure such as
    pool recall could move with other users of the same kind."""
    return _middle_95(_resampled_means(values.to_numpy()[:, None], rounds, seed)[:, 0])


def _resampled_means(rows: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """Rounds x columns: the column means of `rows` (one per user) drawn again with replacement."""
    rng = np.random.default_rng(seed)
    return rows[rng.integers(0, len(rows), size=(rounds, len(rows)))].mean(axis=1)


def _middle_95(samples: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)
