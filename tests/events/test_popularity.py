"""Next week's popularity: learned each week from the shop's own last weeks, each returning user's week weighing one."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.events import popularity
from pipeline.events.history import History
from pipeline.events.inputs import DAY, Interactions
from tests.conftest import CUTOFF


def history_of(taken: list[tuple[int, int, float]], released_days_ago: dict[int, float]) -> History:
    """From (user, item, days before the cutoff) events, each weighing 1; items released so many days ago."""
    user, item, days = (np.array(column, dtype=float) for column in zip(*taken, strict=True))
    ids = sorted(released_days_ago)
    items = pd.DataFrame({"item_id": ids, "category_id": 1, "parent_id": 1, "available": 1,
                          "released": [CUTOFF.timestamp() - released_days_ago[i] * DAY for i in ids]})
    events = Interactions(user_id=user.astype(np.int64), item_id=item.astype(np.int64),
                          seconds=(CUTOFF.timestamp() - days * DAY).astype(np.int64),
                          weight=np.ones(len(user), np.float32))
    return History.at(CUTOFF, [events], items)


def test_each_weeks_takers_are_returning_users_new_to_the_item_each_users_week_weighing_one():
    history = history_of([
        (1, 7, 20), (1, 14, 3), (1, 21, 2), (1, 7, 1),  # back this week: 14 and 21 are new to it, 7 is not
        (2, 7, 30), (2, 14, 4),                           # back this week: 14
        (3, 21, 2),                                       # first seen this week: nobody's taker
        (4, 7, 25), (4, 28, 12),                          # back in the week before: 28
        (5, 14, 10), (5, 21, 9),                          # first seen in the week before
    ], {7: np.nan, 14: np.nan, 21: np.nan, 28: np.nan})

    assert history.item_takers.shape == (popularity.WEEKS_LEARNED, 4)
    assert history.item_takers[0].tolist() == [0, 1.5, 0.5, 0]  # items 7, 14, 21, 28
    assert history.item_takers[1].tolist() == [0, 0, 0, 1]
    assert not history.item_takers[2:].any()
    assert history.item_weekly[0].tolist() == [1, 2, 2, 0] and history.item_weekly[1].tolist() == [0, 1, 1, 1]


def test_a_shop_with_no_returning_users_yet_keeps_recent_popularity():
    history = history_of([(1, 7, 1), (2, 7, 2), (3, 14, 3), (4, 21, 9)], {7: np.nan, 14: np.nan, 21: np.nan})

    expected = popularity.expected_takers(history, new_days=30, fallback_days=7)

    assert np.array_equal(expected, np.log1p(history.item_recent[7]))


def shop_where_returning_users_take_new_items(weeks: int = 10) -> History:
    """Each week one item comes out, and the shop's 40 regulars take it that week, and 2 of them the
    one before; 60 newcomers a week crowd the old hit 100, and two of them the newest item."""
    rng = np.random.default_rng(7)
    taken = [(user, 100, 7 * weeks + 10) for user in range(40)]  # the regulars' first visit
    for week in range(weeks):  # the items 0 (this week's) .. weeks - 1
        start = 7 * (week + 1)
        taken += [(user, week, start - 1 - rng.random() * 5) for user in range(40)]
        taken += [(user, week + 1, start - 2) for user in rng.choice(40, 2, replace=False)]
        newcomers = 1000 + 100 * week + np.arange(60)
        taken += [(int(user), 100, start - rng.random() * 6) for user in newcomers]
        taken += [(int(user), week, start - 6.5) for user in newcomers[:2]]
    taken += [(user, weeks, 7 * weeks + 10) for user in range(40)]  # the oldest new item, had by all
    released = {item: 7 * (item + 1) - 0.5 for item in range(weeks + 1)} | {100: 900}
    return history_of(taken, released | {101: 3})  # 101 came out 3 days ago, nobody has taken it yet


def test_where_regulars_take_the_new_items_the_newest_leads_the_old_hit_that_newcomers_crowd():
    history = shop_where_returning_users_take_new_items()

    order = history.available_by(popularity.expected_takers(history, new_days=30, fallback_days=7))
    rank = {item: place for place, item in enumerate(history.items["item_id"].to_numpy()[order].tolist())}

    assert history.items["item_id"].to_numpy()[history.popular_order(7)[0]] == 100  # recent popularity: the old hit
    assert rank[101] < rank[100] and rank[0] < rank[100]  # the newest items lead it
