"""The shop's raw events and items: their contract, and reading a time window of events.

Events (`user_id`, `item_id`, `timestamp`, `event`, optional `weight`) come as a parquet file or a
folder of them; a window is read row group by row group, skipping those whose timestamp
statistics lie outside it, one batch in memory at a time. A timestamp without a time zone is
UTC. Whatever breaks the contract raises `ContractError` naming the file, the column and the row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.contracts import ContractError, open_parquet

BATCH_ROWS = 1_000_000
ITEM_COLUMNS = ("item_id", "category_id", "parent_id", "available")
RELEASED = "released"  # the items' optional column: when each came to the shop
DAY = 86_400  # of `Interactions.seconds`
_MICROS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Interactions:
    """Events of a window, one entry each: who, what, when (seconds since the epoch) and how much."""

    user_id: np.ndarray
    item_id: np.ndarray
    seconds: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.user_id)


def read_window(path: Path, start: datetime | None, stop: datetime, weights: Mapping[str, float]) -> Interactions:
    """Every event with `start <= timestamp < stop` (no lower bound when `start` is None), in one piece."""
    return concatenated(window_batches(path, start, stop, weights))


def concatenated(batches: Iterable[Interactions]) -> Interactions:
    parts = list(batches)
    if not parts:
        empty = np.array([], np.int64)
        return Interactions(empty, empty, empty, np.array([], np.float32))
    return Interactions(*(np.concatenate([getattr(part, name) for part in parts])
                          for name in ("user_id", "item_id", "seconds", "weight")))


def window_batches(path: Path, start: datetime | None, stop: datetime,
                   weights: Mapping[str, float]) -> Iterator[Interactions]:
    """The same events a batch at a time, reading only row groups whose timestamps may fall in the window."""
    low = _micros(start) if start else np.iinfo(np.int64).min
    high = _micros(stop)
    files = event_files(path)
    for file in files:
        parquet = open_parquet(file, empty_ok=len(files) > 1)  # a day without events among others
        columns = _checked_event_schema(file, parquet.schema_arrow)
        first_row = 0
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if _may_overlap(parquet, group, low, high):
                row = first_row
                for batch in parquet.iter_batches(row_groups=[group], columns=columns, batch_size=BATCH_ROWS):
                    yield _window_of(file, batch, row, low, high, weights)
                    row += batch.num_rows
            first_row += rows


def event_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise ContractError(path, None, "the events folder holds no .parquet file")
        return files
    return [path]


def _checked_event_schema(path: Path, schema: pa.Schema) -> list[str]:
    required = {"user_id": (pa.types.is_integer, "integers"), "item_id": (pa.types.is_integer, "integers"),
                "timestamp": (pa.types.is_timestamp, "a parquet timestamp"), "event": (_is_text, "strings")}
    for name, (accepts, what) in required.items():
        if name not in schema.names:
            raise ContractError(path, name, f"required but missing (the file has: {', '.join(schema.names)})")
        kind = schema.field(name).type
        kind = kind.value_type if pa.types.is_dictionary(kind) else kind
        if not accepts(kind):
            raise ContractError(path, name, f"must hold {what}, found {kind}")
    if "weight" in schema.names and not _is_number(schema.field("weight").type):
        raise ContractError(path, "weight", f"must be numeric, found {schema.field('weight').type}")
    return [*required, *(["weight"] if "weight" in schema.names else [])]


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _may_overlap(parquet: pq.ParquetFile, group: int, low: int, high: int) -> bool:
    """From the row group's timestamp statistics; True when there are none to go by."""
    column = parquet.metadata.row_group(group).column(parquet.schema_arrow.get_field_index("timestamp"))
    stats = column.statistics
    if stats is None or not stats.has_min_max or stats.physical_type != "INT64":
        return True
    unit = parquet.schema_arrow.field("timestamp").type.unit
    scale = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1 / 1_000}[unit]
    return stats.min_raw * scale < high and stats.max_raw * scale >= low


def _window_of(path: Path, batch: pa.RecordBatch, first_row: int, low: int, high: int,
               weights: Mapping[str, float]) -> Interactions:
    for name in ("user_id", "item_id", "timestamp", "event"):
        nulls = pc.is_null(batch.column(name))
        if pc.any(nulls).as_py():
            raise ContractError(path, name, f"null at row {first_row + pc.index(nulls, True).as_py()}")
    micros = pc.cast(pc.cast(batch.column("timestamp"), _MICROS, safe=False), pa.int64()).to_numpy()
    keep = (micros >= low) & (micros < high)
    weight = _weights(path, batch, first_row, weights)
    ids = {name: batch.column(name).to_numpy().astype(np.int64) for name in ("user_id", "item_id")}
    for name, values in ids.items():
        if batch.column(name).type == pa.uint64() and (values < 0).any():
            raise ContractError(path, name, f"id above 2^63-1 at row {first_row + int(np.argmax(values < 0))}")
    return Interactions(ids["user_id"][keep], ids["item_id"][keep], micros[keep] // 1_000_000, weight[keep])


def _weights(path: Path, batch: pa.RecordBatch, first_row: int, weights: Mapping[str, float]) -> np.ndarray:
    """The `weight` column (1 where absent) times `[events] weights` of the event's name (1 where unlisted)."""
    names = pd.Series(batch.column("event").to_pandas(), dtype="string")
    weight = names.map(lambda name: float(weights.get(name, 1.0))).to_numpy(np.float32)
    if "weight" in batch.schema.names:
        column = batch.column("weight").to_numpy(zero_copy_only=False).astype(np.float32)
        bad = ~(np.isfinite(column) & (column >= 0))
        if bad.any():
            raise ContractError(path, "weight", f"must be a finite number, 0 or more, found {column[bad][0]} "
                                f"at row {first_row + int(np.argmax(bad))}")
        weight *= column
    return weight


def _micros(moment: datetime) -> int:
    return int(pa.scalar(moment, _MICROS).value)


def read_items(path: Path) -> pd.DataFrame:
    """The items table, ids as int64, one row per item, and `released` in seconds since the epoch
    (NaN where the file does not say: an item without it is never among the `new` source's)."""
    parquet = open_parquet(path)
    schema = parquet.schema_arrow
    for name in ITEM_COLUMNS:
        if name not in schema.names:
            raise ContractError(path, name, f"required but missing (the file has: {', '.join(schema.names)})")
        if not _is_number(schema.field(name).type) and not pa.types.is_boolean(schema.field(name).type):
            raise ContractError(path, name, f"must be numeric, found {schema.field(name).type}")
    table = parquet.read(columns=[*ITEM_COLUMNS, *([RELEASED] if RELEASED in schema.names else [])])
    items = table.select(ITEM_COLUMNS).to_pandas()
    for name in ITEM_COLUMNS:
        if items[name].isna().any():
            raise ContractError(path, name, f"null at row {int(np.argmax(items[name].isna().to_numpy()))}")
    repeated = items["item_id"].duplicated()
    if repeated.any():
        row = int(np.argmax(repeated.to_numpy()))
        raise ContractError(path, "item_id", f"item {items['item_id'].iloc[row]} appears twice (again at row {row})")
    items = items.astype("int64").assign(**{RELEASED: _released_seconds(path, table)})
    return items.sort_values("item_id", ignore_index=True)


def _released_seconds(path: Path, table: pa.Table) -> np.ndarray:
    """When each item came to the shop (a date, or a timestamp: UTC when it has no time zone)."""
    if RELEASED not in table.column_names:
        return np.full(table.num_rows, np.nan)
    column = table.column(RELEASED)
    if not (pa.types.is_timestamp(column.type) or pa.types.is_date(column.type)):
        raise ContractError(path, RELEASED, f"must be a date or a timestamp, found {column.type}")
    if pa.types.is_timestamp(column.type) and column.type.tz is None:
        column = pc.assume_timezone(column, "UTC")
    return column.cast(_MICROS).cast(pa.int64()).to_numpy(zero_copy_only=False) / 1e6
