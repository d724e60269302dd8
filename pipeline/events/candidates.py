"""Candidates at a cutoff: what the events before it say each user may take next.

Six sources (`SOURCES`), all but one blind to what the user already had: implicit's ALS on the
weighted user-item matrix; next week's popularity (`pipeline.events.popularity`: the items returning users
are expected to take for the first time, learned from the shop's last weeks); items that co-occur
with the user's recent items in other users' recent histories (implicit's BM25 item-item
neighbours); the popular items of the user's own categories; as far as the shop's users come back
to things, the user's own items; and the most popular of the items released lately (the items
file's `released`). Their lists, fused by reciprocal rank, fill `candidates_per_user`; the `sources`
bits and each source's rank tell the ranker where a candidate came from and how strongly. Every
feature describes the candidate as it stood at the cutoff, so the training rows of an earlier week
(built at its own cutoff) and this week's inference rows see the same things. Memory holds the
history's matrices (`pipeline.events.history`), users x factors, and one block of users' candidates.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sparse

from pipeline import config
from pipeline.events.history import History
from pipeline.events.inputs import DAY
from pipeline.metrics import places

USERS_PER_BLOCK = 5_000
SOURCES = ("als", "popular", "cooccurrence", "category", "seen", "new")  # bit k of `sources`: listed by SOURCES[k]
TOP_CATEGORIES = 5  # the category source looks at each user's heaviest ones
RANK_FUSION = 5  # an item two sources list at rank 3 comes before one that one lists at rank 2 (README)
FEATURES = config.SOURCE_FEATURES["events"].features  # what the stage computes for each candidate
_WHOLE = ("category_id", "parent_id", "available", "sources")
CANDIDATES = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()),
                        *((name, pa.int64() if name in _WHOLE else pa.float32()) for name in FEATURES)])


def fit_als(history: History, factors: int, iterations: int, regularization: float, alpha: float, seed: int):
    """None when nobody had an event yet: the week then has no candidates."""
    from implicit.cpu.als import AlternatingLeastSquares

    if not len(history.users):
        return None

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit runs its own threads; BLAS's would fight them
        model = AlternatingLeastSquares(factors=factors, iterations=iterations, regularization=regularization,
                                        alpha=alpha, random_state=seed)
        model.fit(history.matrix, show_progress=False)
    return model


def fit_cooccurrence(history: History, neighbours: int):
    """implicit's BM25 item-item neighbours over the last `recent_days`: which items the same users
    took lately, weighed down where an item is everywhere or a user takes everything."""
    from implicit.nearest_neighbours import BM25Recommender
    from implicit.utils import ParameterWarning

    model = BM25Recommender(K=neighbours, num_threads=0)
    with warnings.catch_warnings():  # implicit's own BM25 weighting hands its fit a COO matrix, and warns of it
        warnings.filterwarnings("ignore", "Method expects CSR input", ParameterWarning)
        model.fit(history.recent.astype(np.float64), show_progress=False)
    return model


@dataclass(frozen=True)
class Fits:
    """What the sources learn once a week from the history, for every shard (so that the shards agree):
    ALS and the co-occurrence neighbours, each saved in implicit's own format, and next week's popularity."""

    als: object
    cooccurrence: object
    expected_takers: np.ndarray  # each item's log expected first-time takers next week (`pipeline.events.popularity`)

    def save(self, als: BinaryIO, cooccurrence: BinaryIO, expected_takers: BinaryIO) -> None:
        self.als.save(als)
        self.cooccurrence.save(cooccurrence)
        np.save(expected_takers, self.expected_takers)

    @classmethod
    def load(cls, als: BinaryIO, cooccurrence: BinaryIO, expected_takers: BinaryIO) -> Fits:
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.nearest_neighbours import BM25Recommender

        return cls(AlternatingLeastSquares.load(als), BM25Recommender.load(cooccurrence), np.load(expected_takers))


def shard_rows(rows: np.ndarray, shard: int, shards: int) -> np.ndarray:
    """The `shard`-th of `shards` runs of `rows`, as even as can be: in order, one after the other, all of them."""
    return np.array_split(rows, shards)[shard]


def candidate_batches(history: History, fits: Fits, users: np.ndarray, per_user: int,
                      new_days: int) -> Iterator[pa.RecordBatch]:
    """Each block of the `users` (rows, in id order)' candidates with their features."""
    sources = _Sources.of(history, fits, per_user, new_days)
    for start in range(0, len(users), USERS_PER_BLOCK):
        rows = users[start:start + USERS_PER_BLOCK]
        cooccurring = (history.recent[rows] @ fits.cooccurrence.similarity).multiply(sources.available).tocsr()
        chosen = fused(rows, sources.lists(rows, cooccurring), per_user)
        chosen["cooccurrence_score"] = np.asarray(cooccurring[np.searchsorted(rows, chosen["row"]),
                                                              chosen["item"]]).ravel()
        yield _with_features(history, fits.als, chosen, sources.popular_rank)


@dataclass(frozen=True)
class _Sources:
    """What every block's lists share: the fits, next week's popularity (of all items and of the new
    ones), each category's popular items, and how many places the seen source gets
    (`round(per_user x repeat share)`)."""

    history: History
    fits: Fits
    per_user: int
    popular: np.ndarray
    popular_rank: np.ndarray
    new: np.ndarray
    by_category: sparse.csr_matrix
    available: np.ndarray  # 1.0 for an available item, 0.0 for another
    seen_places: int

    @classmethod
    def of(cls, history: History, fits: Fits, per_user: int, new_days: int) -> _Sources:
        popular = history.available_by(fits.expected_takers)
        popular_rank = np.full(len(history.items), len(popular) + 1, np.float32)
        popular_rank[popular] = np.arange(1, len(popular) + 1)
        return cls(history, fits, per_user, popular, popular_rank, history.new_order(popular, new_days),
                   category_popularity(history, popular, np.exp(fits.expected_takers), per_user),
                   (history.items["available"].to_numpy() > 0).astype(np.float32),
                   round(per_user * history.repeat_share))

    def lists(self, rows: np.ndarray, cooccurring: sparse.csr_matrix) -> dict[str, np.ndarray]:
        """Each source's items for the users of `rows`, best first, -1 padded."""
        seen, per_user = self.history.matrix[rows], self.per_user
        unavailable = np.flatnonzero(self.available == 0)
        als_items, _ = self.fits.als.recommend(rows, seen, N=per_user, filter_already_liked_items=True,
                                               filter_items=unavailable if len(unavailable) else None)
        by_category = user_top_categories(self.history, rows) @ self.by_category
        return {"als": als_items, "popular": unseen_popular(self.history, rows, self.popular, per_user),
                "cooccurrence": top_of_rows(_unseen(cooccurring, seen), per_user),
                "category": top_of_rows(_unseen(by_category, seen), per_user),
                "seen": top_of_rows(seen.multiply(self.available).tocsr(), self.seen_places),
                "new": unseen_popular(self.history, rows, self.new, per_user)}


def unseen_popular(history: History, rows: np.ndarray, popular: np.ndarray, per_user: int) -> np.ndarray:
    """Each user's `per_user` most popular items not yet had, -1 padded where `popular` runs out.

    Looks at the top 2 x per_user first, and deeper only for the users who had most of those.
    """
    result = np.full((len(rows), per_user), -1, np.int64)
    todo, width = np.arange(len(rows)), 2 * per_user
    while len(todo):
        top = popular[:width]
        unseen = history.matrix[rows[todo]][:, top].toarray() <= 0
        place = np.cumsum(unseen, axis=1)
        user, position = np.nonzero(unseen & (place <= per_user))
        result[todo[user], place[user, position] - 1] = top[position]
        if width >= len(popular):
            break
        todo, width = todo[place[:, -1] < per_user], width * 4
    return result


def category_popularity(history: History, popular: np.ndarray, weight: np.ndarray,
                        per_category: int) -> sparse.csr_matrix:
    """Categories x items: the recent event `weight` of each category's `2 x per_category` most popular
    available items (`popular`, in order), so that a user who had some of them still finds enough."""
    category = history.item_category[popular]
    kept = pd.Series(category).groupby(category).cumcount().to_numpy() < 2 * per_category
    return sparse.csr_matrix((weight[popular[kept]].astype(np.float32), (category[kept], popular[kept])),
                             shape=(history.user_categories.shape[1], len(history.items)))


def user_top_categories(history: History, rows: np.ndarray) -> sparse.csr_matrix:
    """The users' shares of weight in their `TOP_CATEGORIES` heaviest categories, 0 in the others."""
    shares = sparse.diags(1 / history.user_weight[rows]) @ history.user_categories[rows]
    top = top_of_rows(shares.tocsr(), TOP_CATEGORIES)
    row, place = np.nonzero(top >= 0)
    column = top[row, place]
    return sparse.csr_matrix((np.asarray(shares[row, column]).ravel(), (row, column)), shape=shares.shape)


def _unseen(scores: sparse.spmatrix, seen: sparse.csr_matrix) -> sparse.csr_matrix:
    scores = scores.tocsr()
    unseen = scores - scores.multiply(seen > 0)
    unseen.eliminate_zeros()
    return unseen


def top_of_rows(scores: sparse.csr_matrix, count: int) -> np.ndarray:
    """Each row's `count` columns of highest positive score (ties: lower column first), -1 padded."""
    entries = scores.tocsr().sorted_indices().tocoo()  # by row, then column
    positive = entries.data > 0
    row, column, value = entries.row[positive], entries.col[positive], entries.data[positive]
    order = _ordered_within(row, value)
    return _first_of_rows(row[order], column[order], scores.shape[0], count)


def fused(rows: np.ndarray, lists: dict[str, np.ndarray], per_user: int) -> pd.DataFrame:
    """The sources' lists fused by reciprocal rank (an item's `1 / (RANK_FUSION + rank)` summed over the
    lists that hold it; ties: best rank, then `SOURCES` order), each item once with the bits of every
    source that listed it and its rank in each list, `per_user` a user.

    A block's lists are millions of entries: numpy groups them with one sort and reduces each group
    (a pandas group-by of the same took a quarter of the stage's time)."""
    user, item, rank, bit = _entries(lists)
    starts = np.flatnonzero(np.diff(user, prepend=-1) | np.diff(item, prepend=-1))  # each (user, item) once
    score = np.add.reduceat(1 / (RANK_FUSION + rank.astype(np.float32)), starts, dtype=np.float64).astype(np.float32)
    pair_user = user[starts]
    by_best = np.argsort(np.minimum.reduceat(rank * len(SOURCES) + bit, starts), kind="stable")
    ranked = by_best[_ordered_within(pair_user[by_best], score[by_best])]
    chosen = np.sort(ranked[places(pair_user[ranked]) < per_user])  # back in (user, item) order
    first = starts[chosen]

    def rank_in(name: str) -> np.ndarray:
        listed = np.where(bit == SOURCES.index(name), rank, per_user + 1)
        return np.minimum.reduceat(listed, starts)[chosen].astype(np.float64)

    return pd.DataFrame({"row": rows[user[first]], "item": item[first], "fused": score[chosen],
                         "sources": np.bitwise_or.reduceat(np.int64(1) << bit, starts)[chosen],
                         "rank_als": rank_in("als"), "rank_cooccurrence": rank_in("cooccurrence")})


def _entries(lists: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Every source's lists as (user, item, rank, bit) entries, padding left out, by user and item,
    then in `SOURCES` order."""
    user, item, rank, bit = (np.concatenate(column) for column in zip(*(
        _listed(lists[name], bit) for bit, name in enumerate(SOURCES)), strict=True))
    pairs = np.argsort(user * (item.max(initial=0) + 1) + item, kind="stable")
    return user[pairs], item[pairs], rank[pairs], bit[pairs]


def _listed(items: np.ndarray, bit: int) -> tuple[np.ndarray, ...]:
    user, place = np.nonzero(items >= 0)
    return user, items[user, place], place + 1, np.full(len(user), bit)


def _ordered_within(group: np.ndarray, value: np.ndarray) -> np.ndarray:
    """The order of entries by group (ascending), then value (descending), then as they came: one
    stable sort of `group - i x value`, as complex numbers sort by real part, then imaginary."""
    return np.argsort(group - 1j * value.astype(np.float64), kind="stable")


def _first_of_rows(row: np.ndarray, column: np.ndarray, rows: int, count: int) -> np.ndarray:
    place = places(row)
    kept = place < count
    result = np.full((rows, count), -1, np.int64)
    result[row[kept], place[kept]] = column[kept]
    return result


def _with_features(history: History, als, chosen: pd.DataFrame, popular_rank: np.ndarray) -> pa.RecordBatch:
    row, item = chosen["row"].to_numpy(), chosen["item"].to_numpy()
    items = history.items
    days = (history.cutoff - history.user_last[row]) / DAY
    columns = {
        "user_id": history.users[row], "item_id": items["item_id"].to_numpy()[item],
        "als_score": np.einsum("ij,ij->i", als.user_factors[row], als.item_factors[item]),
        **{name: chosen[name].to_numpy() for name in ("rank_als", "rank_cooccurrence", "cooccurrence_score",
                                                        "sources")},
        "rank_popular": popular_rank[item],
        "user_item_weight": np.asarray(history.matrix[row, item]).ravel(),
        "item_events_7d": history.item_recent[7][item], "item_events_28d": history.item_recent[28][item],
        "item_events": history.item_recent[0][item],
        "item_age_days": (history.cutoff - history.item_arrival[item]) / DAY,
        "user_events": history.user_events[row], "user_items": np.diff(history.matrix.indptr)[row],
        "user_recency_days": days,
        "user_category_share": np.asarray(history.user_categories[row, history.item_category[item]]).ravel()
        / history.user_weight[row],
        **{name: items[name].to_numpy()[item] for name in ("category_id", "parent_id", "available")},
    }
    return pa.RecordBatch.from_arrays([pa.array(columns[f.name]).cast(f.type) for f in CANDIDATES], schema=CANDIDATES)


def top_popular(history: History, days: int, count: int) -> pa.Table:
    order = history.popular_order(days)[:count]
    return pa.table({"item_id": pa.array(history.items["item_id"].to_numpy()[order], pa.int64()),
                     "items_cnt": pa.array(history.item_recent[days][order], pa.float64())})


def similar(history: History, model, per_item: int) -> pa.Table:
    """Each item with events: its nearest items by ALS item factors, itself left out."""
    ids = history.items["item_id"].to_numpy()
    had = np.flatnonzero(np.bincount(history.matrix.indices, minlength=len(ids)))
    parts = []
    for start in range(0, len(had), USERS_PER_BLOCK):
        block = had[start:start + USERS_PER_BLOCK]
        neighbours, scores = model.similar_items(block, N=per_item + 1, items=had)
        first = np.repeat(block, neighbours.shape[1])
        keep = (neighbours.ravel() != first) & (neighbours.ravel() >= 0)
        parts.append(pa.table({"itemid_1": pa.array(ids[first[keep]], pa.int64()),
                               "itemid_2": pa.array(ids[neighbours.ravel()[keep]], pa.int64()),
                               "score": pa.array(scores.ravel()[keep], pa.float32())}))
    return pa.concat_tables(parts) if parts else pa.table({"itemid_1": pa.array([], pa.int64()),
                                                           "itemid_2": pa.array([], pa.int64()),
                                                           "score": pa.array([], pa.float32())})
