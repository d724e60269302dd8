"""Next week's popularity: how many of the users who come back will take each item for the first time.

Recent popularity orders items by how much everyone took them lately. What a returning user takes
next also follows how new an item is and how its last weeks compare with its whole life, in
proportions that differ from shop to shop and season to season. A Poisson regression (scikit-learn's),
fitted each week on the history's own last `WEEKS_LEARNED` weeks (each week's item features as they
stood at its start against its first-time takers), says how they mix in this shop now: nothing is
chosen by hand. Every returning user's week weighs one, split among the items they took, so that a
few heavy users do not make everyone's popularity. A history without such takers yet (a shop in
its first week) keeps recent popularity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sparse

from pipeline.events.inputs import DAY

if TYPE_CHECKING:
    from pipeline.events.history import History

WEEKS_LEARNED = 4
WEEKS_BEFORE = 4  # an item's features count its events of the week and of this many weeks before it
WEEKS_COUNTED = WEEKS_LEARNED + WEEKS_BEFORE  # the oldest week learned needs the weeks before it


def first_time_takers(matrix: sparse.csr_matrix, since: list[sparse.csr_matrix], user_first: np.ndarray,
                      week_starts: tuple[int, ...]) -> np.ndarray:
    """Weeks x items, latest week first: each week's takers of the item who had events before that week
    and never this item, each such user's week weighing one. `since[k]` holds the users' events since
    `week_starts[k]`, the start of the k-th week before the cutoff."""
    takers = np.zeros((len(since), matrix.shape[1]))
    later = sparse.csr_matrix(matrix.shape, dtype=np.float32)
    for week, (window, start) in enumerate(zip(since, week_starts, strict=True)):
        took = ((window - later) > 1e-6).astype(np.float32)
        had = (matrix.multiply(took) - window.multiply(took)) > 1e-6
        first = (took - had.astype(np.float32)).tocsr()
        first.eliminate_zeros()
        count = np.asarray(first.sum(axis=1)).ravel()
        share = np.divide(1.0, count, out=np.zeros_like(count), where=(count > 0) & (user_first < start))
        takers[week] = first.T @ share
        later = window
    return takers


def expected_takers(history: History, new_days: int, fallback_days: int) -> np.ndarray:
    """Each item's log expected first-time takers next week; where no week has any to learn from,
    the log of its events in the last `fallback_days` days."""
    from sklearn.linear_model import PoissonRegressor

    if not history.item_takers.sum():
        return np.log1p(history.item_recent[fallback_days])
    learned = range(1, WEEKS_LEARNED + 1)
    model = PoissonRegressor(alpha=0, max_iter=1000)
    model.fit(np.concatenate([item_features(history, weeks_back, new_days) for weeks_back in learned]),
              np.concatenate([history.item_takers[weeks_back - 1] for weeks_back in learned]))
    return np.log(model.predict(item_features(history, 0, new_days)))


def item_features(history: History, weeks_back: int, new_days: int) -> np.ndarray:
    """Items x features as they stood `weeks_back` weeks before the cutoff: the events of the week and
    of the `WEEKS_BEFORE` weeks before it, of all time (log 1 + weight), whether the item was new, its
    age (log 1 + days)."""
    weekly = history.item_weekly[weeks_back:]
    since_start = history.item_weekly[:weeks_back].sum(axis=0)
    at = history.cutoff - weeks_back * 7 * DAY
    age = np.clip(at - history.item_arrival, 0, None) / DAY
    return np.column_stack([np.log1p(weekly[0]), np.log1p(weekly[:WEEKS_BEFORE].sum(axis=0)),
                            np.log1p(np.clip(history.item_recent[0] - since_start, 0, None)),
                            history.released_within(new_days, at), np.log1p(age)])
