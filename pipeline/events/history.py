"""The shop as it stood at a cutoff: the events before it, summed into matrices by user and item.

Everything a week's candidates and next week's popularity learn from is counted here, in one pass
over the events, one batch at a time: memory holds the user-item matrices and one batch, never all
events, so a week's cost follows the shop's activity within the window, not its age.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sparse

from pipeline.contracts import ContractError
from pipeline.events import popularity
from pipeline.events.inputs import DAY, Interactions


@dataclass(frozen=True)
class History:
    """Everything known at the cutoff, by matrix position: users in id order, items as in the items file."""

    cutoff: int  # seconds since the epoch
    users: np.ndarray
    items: pd.DataFrame
    matrix: sparse.csr_matrix  # users x items, summed event weights
    recent: sparse.csr_matrix  # the same, of the last `recent_days` only
    last_week: sparse.csr_matrix  # the same, of the last 7 days only
    user_categories: sparse.csr_matrix  # users x categories, summed event weights
    item_category: np.ndarray  # each item's column in user_categories
    item_recent: dict[int, np.ndarray]  # days -> item weights in the last `days` days (0: all time)
    item_arrival: np.ndarray  # seconds: the item's `released`, or else its first event
    item_weekly: np.ndarray  # weeks x items: event weights of the last `popularity.WEEKS_COUNTED` weeks, latest first
    item_takers: np.ndarray  # weeks x items: each of the last `popularity.WEEKS_LEARNED` weeks' first-time takers
    user_last: np.ndarray
    user_events: np.ndarray
    events_read: int = 0  # before the cutoff, listed items or not
    newest_event: int | None = None  # seconds since the epoch

    @classmethod
    def at(cls, cutoff: datetime, batches: Iterable[Interactions], items: pd.DataFrame,
           windows: Iterable[int] = (), recent_days: int = 28) -> History:
        """From the events before the cutoff, one batch at a time: memory holds the user-item matrices and
        one batch, never all events. `items` sorted by item_id; events of items it does not list are left out.
        `item_recent` counts the last 7 and 28 days, all time, and each of the `windows` (days)."""
        ends, ids = int(cutoff.timestamp()), items["item_id"].to_numpy()
        category = pd.factorize(items["category_id"])[0]
        recent = {days: np.zeros(len(items)) for days in {7, 28, *windows, 0}}
        weekly = np.zeros((popularity.WEEKS_COUNTED, len(items)))
        first = np.full(len(items), ends, np.int64)
        week_starts = tuple(ends - 7 * DAY * week for week in range(1, popularity.WEEKS_LEARNED + 1))
        starts = tuple(dict.fromkeys((ends - recent_days * DAY, *week_starts)))  # each window once
        users = _UserRows(len(items), category.max() + 1 if len(items) else 1, starts)
        read, newest = 0, None
        for batch in batches:
            read += len(batch)
            newest = max(newest or 0, int(batch.seconds.max())) if len(batch) else newest
            column = np.searchsorted(ids, batch.item_id).clip(max=max(len(ids) - 1, 0))
            known = ids[column] == batch.item_id if len(ids) else np.zeros(len(batch), bool)
            column, weight, seconds = column[known], batch.weight[known], batch.seconds[known]
            for days, counts in recent.items():
                inside = seconds >= ends - days * DAY if days else slice(None)
                counts += np.bincount(column[inside], weights=weight[inside], minlength=len(items))
            week = (ends - 1 - seconds) // (7 * DAY)
            inside = week < len(weekly)
            weekly += np.bincount(week[inside] * len(items) + column[inside], weights=weight[inside],
                                  minlength=weekly.size).reshape(weekly.shape)
            np.minimum.at(first, column, seconds)
            users.add(batch.user_id[known], column, category[column], weight, seconds)
        order = np.argsort(users.ids, kind="stable")  # rows in user id order
        since = dict(zip(starts, users.windows, strict=True))
        recent_matrix, last_week = since[ends - recent_days * DAY][order], since[week_starts[0]][order]
        arrival = np.where(np.isnan(items["released"]), first, items["released"]).astype(np.int64)
        takers = popularity.first_time_takers(users.matrix, [since[start] for start in week_starts], users.first,
                                              week_starts)
        return cls(ends, users.ids[order], items, users.matrix[order], recent_matrix, last_week,
                   users.categories[order], category, recent, arrival, weekly, takers, users.last[order],
                   users.events[order], read, newest)

    def check(self, events_path: Path, items_path: Path, max_lag: timedelta) -> None:
        """Refuse a week whose events stop too long before its cutoff (a stalled export would publish
        last week's world as this week's) or whose events name none of the items."""
        cutoff = datetime.fromtimestamp(self.cutoff, UTC)
        if self.newest_event is None:
            raise ContractError(events_path, "timestamp", f"no event before the cutoff {cutoff:%Y-%m-%d %H:%M} UTC")
        newest = datetime.fromtimestamp(self.newest_event, UTC)
        if cutoff - newest > max_lag:
            raise ContractError(events_path, "timestamp", f"the newest event before the cutoff "
                                f"{cutoff:%Y-%m-%d %H:%M} UTC is from {newest:%Y-%m-%d %H:%M} UTC, "
                                f"{(cutoff - newest) / timedelta(hours=1):.0f} hours before it; [events] "
                                f"max_lag_hours allows {max_lag / timedelta(hours=1):.0f} (is the export late?)")
        if self.matrix.nnz == 0:
            raise ContractError(items_path, "item_id", f"none of the items of the {self.events_read:,} events "
                                f"before the cutoff is in this file")

    @cached_property
    def user_weight(self) -> np.ndarray:
        """Each user's summed event weight (at least a tiny positive, to divide by)."""
        return np.maximum(np.asarray(self.user_categories.sum(axis=1)).ravel(), 1e-9)

    @cached_property
    def repeat_share(self) -> float:
        """Share of the user-item pairs of the last 7 days that their user had before them: how much
        the shop's users come back to things (0 in a shop where nobody does, as MovieLens's ratings)."""
        week = self.last_week.astype(bool)
        if not week.nnz:
            return 0.0
        before = (self.matrix - self.last_week).multiply(week)
        return float((before.data > 1e-6).sum() / week.nnz)

    def active_rows(self, days: int) -> np.ndarray:
        """Rows of the users with an event in the `days` days before the cutoff: the users given
        candidates (the web service serves the others `default_recs`)."""
        return np.flatnonzero(self.user_last >= self.cutoff - days * DAY)

    def popular_order(self, days: int) -> np.ndarray:
        """Positions of available items, most events in the last `days` days first (ties: lower item id)."""
        return self.available_by(self.item_recent[days])

    def available_by(self, scores: np.ndarray) -> np.ndarray:
        """Positions of available items, highest of `scores` (one per item) first (ties: lower item id)."""
        available = np.flatnonzero(self.items["available"].to_numpy() > 0)
        return available[np.lexsort((self.items["item_id"].to_numpy()[available], -scores[available]))]

    def new_order(self, popular: np.ndarray, days: int) -> np.ndarray:
        """Of the `popular` positions, in order, those of items released in the `days` days before the cutoff."""
        return popular[self.released_within(days, self.cutoff)[popular]]

    def released_within(self, days: int, at: int) -> np.ndarray:
        """Per item: whether it came out (the items file's `released`) in the `days` days up to `at` (seconds)."""
        released = self.items["released"].to_numpy()
        return (released >= at - days * DAY) & (released <= at)


class _UserRows:
    """Per-user sums as batches of events arrive; a user's row is its place in order of first appearance."""

    def __init__(self, items: int, categories: int, window_starts: tuple[int, ...]) -> None:
        self.index = pd.Index(np.array([], np.int64))
        self.matrix = sparse.csr_matrix((0, items), dtype=np.float32)
        self.window_starts = window_starts
        self.windows = [sparse.csr_matrix((0, items), dtype=np.float32) for _ in window_starts]
        self.categories = sparse.csr_matrix((0, categories), dtype=np.float32)
        self.first, self.last, self.events = (np.array([], np.int64) for _ in range(3))

    @property
    def ids(self) -> np.ndarray:
        return self.index.to_numpy()

    def add(self, user_id: np.ndarray, column: np.ndarray, category: np.ndarray, weight: np.ndarray,
            seconds: np.ndarray) -> None:
        row = self.rows_of(user_id)
        self.matrix = self.matrix + _summed(row, column, weight, self.matrix.shape)
        for number, start in enumerate(self.window_starts):
            inside = seconds >= start
            if inside.any():  # most batches of a long history end before the windows begin
                self.windows[number] = self.windows[number] + _summed(row[inside], column[inside], weight[inside],
                                                                      self.matrix.shape)
        self.categories = self.categories + _summed(row, category, weight, self.categories.shape)
        np.minimum.at(self.first, row, seconds)
        np.maximum.at(self.last, row, seconds)
        self.events += np.bincount(row, minlength=len(self.index))

    def rows_of(self, user_id: np.ndarray) -> np.ndarray:
        """Rows of the users, new ones appended (and every per-user array grown to match)."""
        row = self.index.get_indexer(user_id)
        new = pd.unique(user_id[row < 0])
        if len(new):
            self.index = self.index.append(pd.Index(new))
            row = self.index.get_indexer(user_id)
            users = len(self.index)
            for matrix in (self.matrix, *self.windows):
                matrix.resize((users, self.matrix.shape[1]))
            self.categories.resize((users, self.categories.shape[1]))
            self.first = np.pad(self.first, (0, len(new)), constant_values=np.iinfo(np.int64).max)
            self.last = np.pad(self.last, (0, len(new)))
            self.events = np.pad(self.events, (0, len(new)))
        return row


def _summed(row: np.ndarray, column: np.ndarray, weight: np.ndarray, shape: tuple[int, int]) -> sparse.csr_matrix:
    return sparse.csr_matrix((weight, (row, column)), shape=shape, dtype=np.float32)
