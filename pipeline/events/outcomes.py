"""What users did after a cutoff: a week's candidates labelled, and the train file capped.

A week's outcomes are its candidates (as they stood at its cutoff) with `target` 1 where the user
took the item in the label window; the train file is the outcomes of the weeks before, whole
user-weeks, no more than the ranker can use.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import config
from pipeline.contracts import date_column
from pipeline.events.candidates import CANDIDATES
from pipeline.events.inputs import Interactions
from pipeline.validation import kept_in_sample, sample_order

OUTCOMES = CANDIDATES.append(pa.field("target", pa.int64())).append(pa.field("outcome_week", pa.date32()))


def outcome_batches(candidates: pq.ParquetFile, positives: Interactions, week: date) -> Iterator[pa.RecordBatch]:
    """Candidates of the users who took one of theirs in the label window, with `target` and `outcome_week`.

    Users who took none of their candidates teach a ranker nothing and are left out.
    """
    taken = pd.MultiIndex.from_arrays([positives.user_id, positives.item_id])
    takers = np.unique(np.concatenate([
        batch.column("user_id").to_numpy()[_taken(batch, taken)]
        for batch in candidates.iter_batches(columns=["user_id", "item_id"])] or [np.array([], np.int64)]))
    for batch in candidates.iter_batches():
        kept = batch.filter(pa.array(np.isin(batch.column("user_id").to_numpy(), takers)))
        yield pa.RecordBatch.from_arrays([*kept.columns, pa.array(_taken(kept, taken).astype(np.int64)),
                                          date_column(week, kept.num_rows)], schema=OUTCOMES)


def _taken(batch: pa.RecordBatch, taken: pd.MultiIndex) -> np.ndarray:
    return pd.MultiIndex.from_arrays([batch.column("user_id").to_numpy(), batch.column("item_id").to_numpy()]) \
        .isin(taken)


def capped_outcomes(weeks: list[pq.ParquetFile], settings: config.pipeline) -> Iterator[pa.RecordBatch]:
    """The weeks' outcome rows, or where there are more than `max_train_rows`, whole user-weeks in a
    seeded order as `validation.kept_in_sample` keeps them: the train file holds no more than the
    ranker can use."""
    chosen = _chosen_user_weeks(weeks, settings)
    for week, users in zip(weeks, chosen, strict=True):
        for batch in week.iter_batches():
            yield batch if users is None else batch.filter(pa.array(np.isin(batch.column("user_id").to_numpy(), users)))


def _chosen_user_weeks(weeks: list[pq.ParquetFile], settings: config.pipeline) -> list[np.ndarray | None]:
    """The users kept in each week (None: all of them)."""
    available = sum(week.metadata.num_rows for week in weeks)
    if available <= settings.max_train_rows:
        return [None] * len(weeks)
    groups = []
    for number, week in enumerate(weeks):
        users, rows = np.unique(week.read(columns=["user_id"]).column("user_id").to_numpy(), return_counts=True)
        groups.append(pd.DataFrame({"week": number, "user_id": users, "rows": rows,
                                    "place": sample_order(users, settings.random_seed, number)}))
    groups = pd.concat(groups, ignore_index=True)
    kept = groups[kept_in_sample(groups["user_id"].to_numpy(), groups["rows"].to_numpy(), groups["place"].to_numpy(),
                                 available, settings)]
    return [kept.loc[kept["week"] == number, "user_id"].to_numpy() for number in range(len(weeks))]
