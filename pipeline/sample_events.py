"""A synthetic shop's events and items (`make run-events`; aged, `pipeline.evaluation.ageing_shop`).

    python -m pipeline.sample_events data/events [YYYY-MM-DD]

Users prefer a few categories and come back at their own rate; items are released over time and
their popularity drifts up or down week by week; a view may lead to a cart and a purchase, and
some purchases are repeated weeks later. So what a user takes next depends on their tastes, on
what is rising now and on how active they are: the things the event stage's features describe.
Events go to several parquet files (one per four weeks) in `<folder>/events/`, items to
`<folder>/items.parquet`.
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.events.inputs import DAY

CATEGORIES, PARENTS = 20, 6
WEEK = 7 * DAY


def write_sample_events(folder: Path, end: datetime, users: int = 1_000, items: int = 1_500, weeks: int = 16,
                        events_per_user_week: float = 3.0, seed: int = 11,
                        lifetime_weeks: float | None = None) -> int:
    """Events of `weeks` weeks up to `end`; returns how many were written.

    By default users arrive in the first half and stay. With `lifetime_weeks`, a shop that ages:
    users arrive all along (`users / weeks` a week) and each stays active a geometric number of
    weeks of that mean, then leaves for good.
    """
    rng = np.random.default_rng(seed)
    catalogue = _items(rng, items, weeks)
    preference = rng.dirichlet(np.full(CATEGORIES, 0.25), size=users)
    activity = rng.lognormal(0, 0.8, users)
    if lifetime_weeks is None:
        first_week, last_week = rng.integers(0, weeks // 2, users), np.full(users, weeks)
    else:
        first_week = rng.integers(0, weeks, users)
        last_week = first_week + rng.geometric(1 / lifetime_weeks, users)
    (folder / "events").mkdir(parents=True, exist_ok=True)
    start = int(end.timestamp()) - weeks * WEEK
    released = pa.array(start + catalogue["released"] * WEEK, pa.timestamp("s", "UTC"))
    pq.write_table(pa.table({**{name: catalogue[name] for name in ("item_id", "category_id", "parent_id", "available")},
                             "released": released}), folder / "items.parquet")
    written = 0
    for chunk in range(0, weeks, 4):
        parts = [_week_events(rng, w, catalogue, preference, activity * events_per_user_week
                              * ((first_week <= w) & (w < last_week)), start)
                 for w in range(chunk, min(chunk + 4, weeks))]
        table = pa.concat_tables(parts)
        table = table.filter(pc.less(table.column("timestamp"), pa.scalar(end, pa.timestamp("s", "UTC"))))
        pq.write_table(table.sort_by("timestamp"), folder / "events" / f"weeks-{chunk:03d}.parquet",
                       row_group_size=100_000)
        written += table.num_rows
    return written


def _items(rng: np.random.Generator, count: int, weeks: int) -> dict[str, np.ndarray]:
    return {
        "item_id": np.arange(1, count + 1, dtype=np.int64) * 7,
        "category_id": rng.integers(0, CATEGORIES, count).astype(np.int64) + 1,
        "parent_id": rng.integers(0, PARENTS, count).astype(np.int64) + 1,
        "available": (rng.random(count) > 0.03).astype(np.int64),
        "base": rng.pareto(1.2, count) + 0.05,
        "trend": rng.normal(0, 0.2, count),
        "released": np.where(rng.random(count) < 0.3, rng.integers(0, weeks, count), 0),
    }


def _week_events(rng: np.random.Generator, week: int, items: dict, preference: np.ndarray, rate: np.ndarray,
                 start: int) -> pa.Table:
    """One week: each active user's views by taste x this week's popularity, some carts and purchases
    (`rate` is 0 for users not active this week)."""
    popularity = items["base"] * np.exp(items["trend"] * (week - items["released"])) * (items["released"] <= week)
    counts = rng.poisson(rate)
    user = np.repeat(np.arange(len(rate)), counts)
    category = _sample_rows(rng, preference[user])
    item = np.empty(len(user), np.int64)
    for c in range(CATEGORIES):
        members = np.flatnonzero(items["category_id"] == c + 1)
        chosen = category == c
        weights = popularity[members]
        item[chosen] = members[rng.choice(len(members), chosen.sum(), p=weights / weights.sum())]
    seconds = start + week * WEEK + rng.integers(0, WEEK, len(user))
    event = np.where(rng.random(len(user)) < 0.25, np.where(rng.random(len(user)) < 0.4, "transaction", "addtocart"),
                     "view")
    repeat = (event == "transaction") & (rng.random(len(user)) < 0.3)
    user = np.concatenate([user, user[repeat]])
    item = np.concatenate([item, item[repeat]])
    seconds = np.concatenate([seconds, seconds[repeat] + rng.integers(1, 3, repeat.sum()) * WEEK])
    event = np.concatenate([event, event[repeat]])
    return pa.table({"user_id": pa.array(user * 3 + 1000, pa.int64()), "item_id": pa.array(items["item_id"][item]),
                     "timestamp": pa.array(seconds, pa.timestamp("s", "UTC")), "event": pa.array(event, pa.string())})


def _sample_rows(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One draw per row of a matrix of probabilities."""
    return (probabilities.cumsum(axis=1) < rng.random((len(probabilities), 1))).sum(axis=1).clip(max=CATEGORIES - 1)


def week_end(week: date) -> datetime:
    """The end of the sample for a week: its Saturday's end, or now if that is still to come."""
    return min(datetime.combine(week + timedelta(days=1), time(), tzinfo=UTC), datetime.now(UTC))


if __name__ == "__main__":
    from pipeline.base import week_parameter

    parser = argparse.ArgumentParser(prog="python -m pipeline.sample_events", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("week", nargs="?", type=date.fromisoformat, default=date.today(),
                        help="any day of the last week, YYYY-MM-DD (default: today)")
    arguments = parser.parse_args()
    folder, week = arguments.folder, week_parameter().normalize(arguments.week)
    count = write_sample_events(folder, week_end(week))
    print(f"{count:,} events of a synthetic shop up to {week_end(week):%Y-%m-%d %H:%M} UTC written to {folder}/")
