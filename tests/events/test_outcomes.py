"""Outcomes: the train file holds whole user-weeks, no more than the cap, in a seeded order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.events import outcomes


def outcome_week(path, number: int, users: dict[int, int]) -> pq.ParquetFile:
    """Outcomes of week `number`: `rows` candidates for each user, item ids telling the week."""
    ids = np.repeat(list(users), list(users.values()))
    pq.write_table(pa.table({"user_id": ids, "item_id": number * 10_000 + np.arange(len(ids))}), path)
    return pq.ParquetFile(path)


def test_outcomes_beyond_the_cap_are_whole_user_weeks_up_to_it_in_a_seeded_order(tmp_path):
    sizes = {(k, user): 3 + (user + k) % 5 for k in range(3) for user in range(40)}
    weeks = [outcome_week(tmp_path / f"w{k}.parquet", k, {user: sizes[k, user] for user in range(40)})
             for k in range(3)]
    total = sum(sizes.values())

    kept = pa.Table.from_batches(list(outcomes.capped_outcomes(weeks, 100, seed=42))).to_pandas()
    again = pa.Table.from_batches(list(outcomes.capped_outcomes(weeks, 100, seed=42))).to_pandas()
    other_seed = pa.Table.from_batches(list(outcomes.capped_outcomes(weeks, 100, seed=7))).to_pandas()
    everything = pa.Table.from_batches(list(outcomes.capped_outcomes(weeks, total, seed=42)))

    assert 90 < len(kept) <= 100 < total
    assert kept.equals(again) and not kept.equals(other_seed)
    per_user_week = kept.groupby([kept["item_id"] // 10_000, "user_id"]).size()
    assert all(rows == sizes[key] for key, rows in per_user_week.items())  # whole user-weeks only
    assert everything.num_rows == total
