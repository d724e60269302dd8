"""The input contract: what the modelling stage's files must hold before anything is published.

Checks run on the schema first, then on every record batch as it streams to
PostgreSQL; whatever fails raises `ContractError`, which names the file, the
column and the problem, and the load's transaction is rolled back with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


class ContractError(ValueError):
    """A file that breaks the contract; the message is meant for the person who made it."""

    def __init__(self, path: Path | str, column: str | None, problem: str):
        where = f"{path}" + (f", column {column!r}" if column else "")
        super().__init__(f"{where}: {problem}")
        self.path, self.column, self.problem = str(path), column, problem


@dataclass(frozen=True)
class Contract:
    """Required columns of one input file, by role."""

    file: str
    ids: tuple[str, ...]
    numbers: tuple[str, ...] = ()
    label: str | None = None
    unique: tuple[str, ...] = ()
    features: tuple[str, ...] = ()

    def with_features(self, features: tuple[str, ...]) -> Contract:
        """The ranker's configured features are required too, as numbers unless already named."""
        extra = tuple(f for f in features if f not in self.ids + self.numbers)
        return Contract(self.file, self.ids, self.numbers + extra, self.label, self.unique, tuple(features))

    @property
    def required(self) -> tuple[str, ...]:
        return self.ids + self.numbers + ((self.label,) if self.label else ())


TOP_POPULAR = Contract("top_popular.parquet", ids=("item_id",), numbers=("items_cnt",))
SIMILAR = Contract("similar.parquet", ids=("itemid_1", "itemid_2"), numbers=("score",))
_CANDIDATE_IDS = ("user_id", "item_id", "category_id", "parent_id")
CANDIDATES_INFERENCE = Contract("candidates_inference.parquet", ids=_CANDIDATE_IDS,
                                numbers=("als_score", "available"), unique=("user_id", "item_id"))
CANDIDATES_TRAIN = Contract("candidates_train.parquet", ids=_CANDIDATE_IDS,
                            numbers=("als_score", "available"), label="target",
                            unique=("user_id", "item_id"))


def week_contracts(features: tuple[str, ...]) -> tuple[Contract, ...]:
    """The four files of a week, the candidates with the ranker's configured features."""
    return (TOP_POPULAR, SIMILAR, CANDIDATES_TRAIN.with_features(features),
            CANDIDATES_INFERENCE.with_features(features))


def check_week(folder: Path, features: tuple[str, ...]) -> None:
    """Check every file of the week, streaming only the contract's columns, without the database."""
    for contract in week_contracts(features):
        path = folder / contract.file
        parquet = open_parquet(path)
        schema = output_schema(contract, path, parquet.schema_arrow)
        required = pa.schema([schema.field(column) for column in contract.required])
        batches = BatchChecker(contract, path, required).checked(parquet.iter_batches(columns=list(contract.required)))
        keys = [_pair_key(batch, contract.unique) for batch in batches]
        if contract.unique:
            _refuse_duplicates(path, contract, keys)


def _pair_key(batch: pa.RecordBatch, unique: tuple[str, ...]) -> np.ndarray | None:
    """Both ids of a key in one int64 (8 bytes a row), where they fit in 32 bits each."""
    if not unique:
        return None
    first, second = (batch.column(name).to_numpy().astype(np.int64) for name in unique)
    if len(first) and (min(first.min(), second.min()) < 0 or max(first.max(), second.max()) >= 1 << 31):
        return None
    return (first << 32) | second


def _refuse_duplicates(path: Path, contract: Contract, keys: list[np.ndarray | None]) -> None:
    if any(k is None for k in keys):
        return  # ids too large to pack: the unique index at load time still refuses duplicates
    packed = np.concatenate(keys)
    packed.sort()
    repeated = np.flatnonzero(packed[1:] == packed[:-1])
    if len(repeated):
        key = packed[repeated[0]]
        raise ContractError(path, ", ".join(contract.unique),
                            f"duplicate rows: ({contract.unique[0]}, {contract.unique[1]})="
                            f"({key >> 32}, {key & 0xFFFFFFFF}) appears more than once")


def open_parquet(path: Path) -> pq.ParquetFile:
    if not path.is_file():
        raise ContractError(path, None, "file not found")
    try:
        parquet = pq.ParquetFile(path, pre_buffer=False)
    except (pa.ArrowException, OSError) as error:
        raise ContractError(path, None, f"not a readable parquet file ({error})") from None
    if parquet.metadata.num_rows == 0:
        raise ContractError(path, None, "the file has no rows")
    return parquet


def output_schema(contract: Contract, path: Path, schema: pa.Schema) -> pa.Schema:
    """The schema the table gets: the file's own, with float ids narrowed to int64."""
    for column in contract.required:
        if column not in schema.names:
            why = "listed in [pipeline] features but missing" if column in contract.features else "required but missing"
            raise ContractError(path, column, f"{why} (the file has: {', '.join(schema.names)})")
    fields = []
    for field in schema:
        if field.name in contract.ids + ((contract.label,) if contract.label else ()):
            fields.append(_integer_field(path, field))
        elif field.name in contract.numbers and not _is_number(field.type):
            raise ContractError(path, field.name, f"must be numeric, found {field.type}")
        else:
            fields.append(field)
    return pa.schema(fields)


def _is_number(arrow_type: pa.DataType) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)


def _integer_field(path: Path, field: pa.Field) -> pa.Field:
    if pa.types.is_integer(field.type):
        return field
    if pa.types.is_floating(field.type) or pa.types.is_boolean(field.type):
        return pa.field(field.name, pa.int64())
    raise ContractError(path, field.name, f"must hold integers, found {field.type}")


class BatchChecker:
    """Checks batches against the contract as they stream, and casts them to the output schema."""

    def __init__(self, contract: Contract, path: Path, schema: pa.Schema):
        self.contract, self.path, self.schema = contract, path, schema
        self.label_counts = {0: 0, 1: 0}
        self.rows_seen = 0

    def checked(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield self._checked(batch)
            self.rows_seen += batch.num_rows
        if self.contract.label and 0 in self.label_counts.values():
            raise ContractError(self.path, self.contract.label,
                                f"a single class only ({self.label_counts}); training needs both 0 and 1")

    def _checked(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        columns = []
        for field in self.schema:
            column = batch.column(field.name)
            if field.name in self.contract.ids and column.null_count:
                row = self.rows_seen + _first(pc.is_null(column))
                raise ContractError(self.path, field.name, f"null ids are not allowed (first at row {row})")
            columns.append(self._cast(field, column))
        checked = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        if self.contract.label:
            self._count_labels(checked.column(self.contract.label))
        return checked

    def _cast(self, field: pa.Field, column: pa.Array) -> pa.Array:
        if column.type == field.type:
            return column
        try:
            return pc.cast(column, field.type, safe=True)
        except pa.ArrowInvalid:
            index = _first(pc.not_equal(column, pc.floor(column)))
            raise ContractError(self.path, field.name, f"must hold integers, found {column[index].as_py()!r} "
                                f"at row {self.rows_seen + index}") from None

    def _count_labels(self, label: pa.Array) -> None:
        counts = pc.value_counts(label)
        for entry in counts.to_pylist():
            value = entry["values"]
            if value not in (0, 1):
                raise ContractError(self.path, self.contract.label, f"must be 0 or 1, found {value!r}")
            self.label_counts[value] += entry["counts"]


def _first(mask: pa.Array) -> int:
    return pc.index(mask, True).as_py()


def duplicate_key_error(path: Path, contract: Contract, detail: str) -> ContractError:
    """Turn PostgreSQL's unique-index failure into the contract's words, with its example key."""
    return ContractError(path, ", ".join(contract.unique), f"duplicate rows: {detail}")
