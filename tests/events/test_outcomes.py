"""Outcomes: the train file holds whole user-weeks, no more than the cap, in a seeded order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import config, validation
from pipeline.events import outcomes


def outcome_week(path, number: int, users: dict[int, int]) -> pq.ParquetFile:
    """Outcomes of week `number`: `rows` candidates for each user, item ids telling the week."""
    ids = np.repeat(list(users), list(users.values()))
    pq.write_table(pa.table({"user_id": ids, "item_id": number * 10_000 + np.arange(len(ids))}), path)
    return pq.ParquetFile(path)


def capped(weeks: list[pq.ParquetFile], max_rows: int, seed: int = 42, holdout: str = "users") -> pd.DataFrame:
    settings = config.pipeline(max_train_rows=max_rows, random_seed=seed, holdout=holdout, holdout_share=0.2)
    return pa.Table.from_batches(list(outcomes.capped_outcomes(weeks, settings))).to_pandas()


@pytest.fixture
def weeks(tmp_path) -> tuple[list[pq.ParquetFile], dict[tuple[int, int], int]]:
    """Three weeks of 40 users, 3 to 7 rows a user-week; and those sizes."""
    sizes = {(k, user): 3 + (user + k) % 5 for k in range(3) for user in range(40)}
    return [outcome_week(tmp_path / f"w{k}.parquet", k, {user: sizes[k, user] for user in range(40)})
            for k in range(3)], sizes


def whole_user_weeks(kept: pd.DataFrame, sizes: dict[tuple[int, int], int]) -> bool:
    per_user_week = kept.groupby([kept["item_id"] // 10_000, "user_id"]).size()
    return all(rows == sizes[key] for key, rows in per_user_week.items())


def test_outcomes_beyond_the_cap_are_whole_user_weeks_up_to_it_in_a_seeded_order(weeks):
    weeks, sizes = weeks
    total = sum(sizes.values())

    kept = capped(weeks, 100, holdout="latest_week")

    assert 90 < len(kept) <= 100 < total
    assert kept.equals(capped(weeks, 100, holdout="latest_week"))
    assert not kept.equals(capped(weeks, 100, seed=7, holdout="latest_week"))
    assert whole_user_weeks(kept, sizes)
    assert len(capped(weeks, total)) == total


def test_for_a_fit_on_learning_users_the_cap_is_theirs_and_the_held_out_users_share_comes_beside_it(weeks):
    """Held out by user, a week with 125 rows or more per 100 of the cap fills the cap with learning
    users' rows alone, for one fit, and gives the validation a fifth of the sample beside them."""
    weeks, sizes = weeks

    kept = capped(weeks, 100)

    held = validation.held_out(kept["user_id"].to_numpy(), 42, 0.2)
    assert 90 < (~held).sum() <= 100 and 15 < held.sum() <= 25  # 100 * 0.2 / (1 - 0.2)
    assert whole_user_weeks(kept, sizes)
