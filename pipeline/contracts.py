"""The input contract: what the modelling stage's files must hold before anything is published.

Every file's whole schema is checked before anything is staged (`check_week`); values are
checked on every record batch as it streams to PostgreSQL. Whatever fails raises
`ContractError`, which names the file, the column and the problem; a load's
transaction is rolled back with it and nothing of the week goes live.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import pgcopy
from pipeline.validation import held_out_rows, held_out_week

EPOCH = date(1970, 1, 1)  # day 0 of a date32


def date_column(day: date, rows: int) -> pa.Array:
    """`day` repeated as a date32 column, made from its buffer: pyarrow converting any Python value
    imports pandas, which a load has no other use for (its cost in memory: `pgcopy._values`)."""
    days = np.full(rows, (day - EPOCH).days, np.int32)
    return pa.Array.from_buffers(pa.date32(), rows, [None, pa.py_buffer(days)])


class ContractError(ValueError):
    """A file that breaks the contract; the message is meant for the person who made it."""

    def __init__(self, path: Path | str, column: str | None, problem: str):
        where = f"{path}" + (f", column {column!r}" if column else "")
        super().__init__(f"{where}: {problem}")
        self.path, self.column, self.problem = str(path), column, problem


@dataclass(frozen=True)
class Contract:
    """Required columns of one input file, by role, and the names the pipeline adds to its table."""

    file: str
    ids: tuple[str, ...]
    numbers: tuple[str, ...] = ()
    label: str | None = None
    unique: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    reserved: tuple[str, ...] = ("week",)
    group: str | None = None  # optional column that splits a user's rows into groups (the outcome's week)

    def for_ranker(self, features: tuple[str, ...], derived: tuple[str, ...]) -> Contract:
        """Candidates carry the configured features (numbers unless already named); derived names are taken."""
        extra = tuple(f for f in features if f not in self.ids + self.numbers)
        return replace(self, numbers=self.numbers + extra, features=tuple(features),
                       reserved=self.reserved + tuple(derived))

    def unique_key(self, columns: list[str]) -> tuple[str, ...]:
        """The rows' key: with the group column where the file has it."""
        return ((self.group,) if self.group in columns else ()) + self.unique

    @property
    def required(self) -> tuple[str, ...]:
        return self.ids + self.numbers + ((self.label,) if self.label else ())


TOP_POPULAR = Contract("top_popular.parquet", ids=("item_id",), numbers=("items_cnt",))
SIMILAR = Contract("similar.parquet", ids=("itemid_1", "itemid_2"), numbers=("score",))
_CANDIDATE_IDS = ("user_id", "item_id", "category_id", "parent_id")
CANDIDATES_INFERENCE = Contract("candidates_inference.parquet", ids=_CANDIDATE_IDS,
                                numbers=("als_score", "available"), unique=("user_id", "item_id"),
                                reserved=("week", "cb_score", "rank"))
CANDIDATES_TRAIN = Contract("candidates_train.parquet", ids=_CANDIDATE_IDS,
                            numbers=("als_score", "available"), label="target",
                            unique=("user_id", "item_id"), group="outcome_week")
POSTGRES_NAME_BYTES = 63  # PostgreSQL keeps the first 63 bytes of an identifier
MIN_USERS_WITH_A_POSITIVE = 5  # on each side of the validation split


def week_contracts(features: tuple[str, ...], derived: tuple[str, ...] = ()) -> tuple[Contract, ...]:
    """The four files of a week, the candidates with the ranker's configured features."""
    return (TOP_POPULAR, SIMILAR, CANDIDATES_TRAIN.for_ranker(features, derived),
            CANDIDATES_INFERENCE.for_ranker(features, derived))


def check_week(folder: Path, contracts: tuple[Contract, ...]) -> None:
    """Every file's whole schema, from its footer: every shape loads faithfully or is refused here.

    Values are checked once, as each file streams into PostgreSQL; only what no schema shows and
    would fail after other tables were staged is read now: ids above int64 in uint64 columns.
    """
    for contract in contracts:
        path = folder / contract.file
        parquet = open_parquet(path)
        output_schema(contract, path, parquet.schema_arrow)
        for name in contract.ids:
            if parquet.schema_arrow.field(name).type == pa.uint64():
                _refuse_ids_beyond_int64(path, name, parquet.iter_batches(columns=[name]))


def check_positives(path: Path, contract: Contract, seed: int, holdout_share: float, holdout: str) -> None:
    """Validation and training each need users with a positive; too few is refused with the numbers.

    The rows are split as the ranker will split them (`validation.held_out_week`); memory holds the
    positive rows' users and weeks. The users and labels are checked as the load will check them
    (nulls, NaN, fractions, values other than 0 and 1), since they are read here before any load.
    """
    parquet = open_parquet(path)
    schema = output_schema(contract, path, parquet.schema_arrow)
    grouped = contract.group in schema.names
    columns = ["user_id", contract.label, *([contract.group] if grouped else [])]
    checker = BatchChecker(contract, path, pa.schema([schema.field(column) for column in columns]))
    positives, weeks = [], set()
    for batch in checker.checked(parquet.iter_batches(columns=columns)):
        positives.append(batch.filter(pc.equal(batch.column(contract.label), 1)))
        weeks.update(pc.unique(batch.column(contract.group)).to_pylist() if grouped else ())
    week = held_out_week(holdout, min(weeks, default=None), max(weeks, default=None))
    positive = pa.Table.from_batches(positives, checker.schema)
    users = positive.column("user_id").to_numpy()
    held = held_out_rows(users, positive.column(contract.group).to_numpy() if week else None, week, seed,
                         holdout_share)
    validating, training = (len(np.unique(users[side])) for side in (held, ~held))
    if min(validating, training) < MIN_USERS_WITH_A_POSITIVE:
        split = f"the latest outcome week ({week})" if week else f"the held-out share ({holdout_share})"
        raise ContractError(path, contract.label, f"{len(np.unique(users))} users have a positive: {validating} in "
                            f"{split} and {training} to train on; each needs at least {MIN_USERS_WITH_A_POSITIVE}")


def _refuse_ids_beyond_int64(path: Path, name: str, batches: Iterator[pa.RecordBatch]) -> None:
    seen = 0
    for batch in batches:
        too_large = pc.greater(batch.column(0), pa.scalar(np.iinfo(np.int64).max, pa.uint64()))
        if pc.any(too_large).as_py():
            row = seen + _first(too_large)
            raise ContractError(path, name, f"id {batch.column(0)[row - seen].as_py()} at row {row} is above "
                                f"{np.iinfo(np.int64).max}, the largest id PostgreSQL's bigint holds")
        seen += batch.num_rows


def open_parquet(path: Path, empty_ok: bool = False, handle: pa.NativeFile | None = None) -> pq.ParquetFile:
    """For reading in a stream (from `handle` where one is open on `path`). pyarrow pre-buffers by
    default, and then keeps what it read for as long as the file is open: twelve weeks' outcomes open
    at once held 1.2 GB of their 1.3 GB on disk."""
    if not path.is_file():
        raise ContractError(path, None, "file not found")
    try:
        parquet = pq.ParquetFile(handle or path, pre_buffer=False)
    except (pa.ArrowException, OSError) as error:
        raise ContractError(path, None, f"not a readable parquet file ({error})") from None
    if parquet.metadata.num_rows == 0 and not empty_ok:
        raise ContractError(path, None, "the file has no rows")
    return parquet


def footer_digest(path: Path) -> str:
    """The sha256 of a parquet file's footer: its schema, row groups, their sizes and each column's
    statistics tell two exports apart without reading a row, and a copy of a file has the same."""
    with path.open("rb") as file:
        return _footer_digest(file)


def present_footer(path: Path) -> str | None:
    """The `footer_digest` of the file there now; None where there is none to read."""
    try:
        return footer_digest(path)
    except OSError:
        return None


def opened_with_footer(path: Path) -> tuple[pq.ParquetFile, str]:
    """The file and its `footer_digest`, read through one handle: the rows read later are those of the
    file digested, whatever replaces the path meanwhile."""
    if not path.is_file():
        raise ContractError(path, None, "file not found")
    handle = pa.OSFile(str(path))
    return open_parquet(path, handle=handle), _footer_digest(handle)


def _footer_digest(file) -> str:
    file.seek(-8, os.SEEK_END)  # the footer's length, then the magic "PAR1"
    length = int.from_bytes(file.read(4), "little")
    file.seek(-8 - length, os.SEEK_END)
    return hashlib.sha256(file.read(length)).hexdigest()


def output_schema(contract: Contract, path: Path, schema: pa.Schema) -> pa.Schema:
    """The schema the table gets: the file's own, with ids as int64; every column checked."""
    _check_names(contract, path, schema)
    for column in contract.required:
        if column not in schema.names:
            why = "listed in [pipeline] features but missing" if column in contract.features else "required but missing"
            raise ContractError(path, column, f"{why} (the file has: {', '.join(schema.names)})")
    fields = []
    for field in map(_decoded, schema):
        if field.name in contract.ids + ((contract.label,) if contract.label else ()):
            fields.append(_integer_field(path, field))
        elif field.name in contract.numbers and not _is_number(field.type):
            raise ContractError(path, field.name, f"must be numeric, found {field.type}")
        else:
            _check_loadable(path, field)
            fields.append(field)
    return pa.schema(fields)


def _check_names(contract: Contract, path: Path, schema: pa.Schema) -> None:
    seen: dict[bytes, str] = {}
    for name in schema.names:
        if name in contract.reserved:
            raise ContractError(path, name, "the pipeline adds a column of this name to the table; rename it")
        if not name.strip():
            raise ContractError(path, name, "a column needs a name")
        key = name.encode()[:POSTGRES_NAME_BYTES]
        if key in seen:
            same = "appears twice" if seen[key] == name else f"is the same as {seen[key]!r} to PostgreSQL, " \
                f"which keeps the first {POSTGRES_NAME_BYTES} bytes of a name"
            raise ContractError(path, name, f"the column name {same}")
        seen[key] = name


def _decoded(field: pa.Field) -> pa.Field:
    """Dictionary-encoded columns (pandas' `category`) load as their values."""
    return field.with_type(field.type.value_type) if pa.types.is_dictionary(field.type) else field


def _check_loadable(path: Path, field: pa.Field) -> None:
    try:
        pgcopy.pg_type(field.type)
    except pgcopy.UnsupportedType:
        raise ContractError(path, field.name, f"type {field.type} has no PostgreSQL equivalent; "
                            "convert it or drop the column") from None


def _is_number(arrow_type: pa.DataType) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)


def _integer_field(path: Path, field: pa.Field) -> pa.Field:
    if _is_number(field.type):
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
            if column.null_count and field.name in self.contract.ids + (self.contract.label,):
                row = self.rows_seen + _first(pc.is_null(column))
                what = "ids" if field.name in self.contract.ids else "labels"
                raise ContractError(self.path, field.name, f"null {what} are not allowed (first at row {row})")
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
            if not pa.types.is_floating(column.type):
                raise  # uint64 beyond int64: refused by check_week before any load
            whole = pc.and_(pc.is_finite(column), pc.equal(column, pc.floor(column)))
            index = _first(pc.invert(pc.and_(whole, pc.less(pc.abs(column), 2.0 ** 63))))
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


def duplicate_key_error(path: Path, key: tuple[str, ...], detail: str) -> ContractError:
    """Turn PostgreSQL's unique-index failure into the contract's words, with its example key."""
    return ContractError(path, ", ".join(key), f"duplicate rows: {detail}")


def untranslatable_error(path: Path, message: str, copy_context: str) -> ContractError:
    """Turn PostgreSQL's refusal of a character that its database's encoding (one that is not UTF8)
    has none for into the file's words: the row (the `COPY`'s line, the file's rows being its lines in
    order), and the column whose value there holds the character. The context is `COPY <table>, line
    <n>` in the server's language (`COPY <table>, Zeile <n>`, `<table>のCOPY、行 <n>`): the line is
    the first number after the table's name."""
    after_table = re.split(r", |、", copy_context.splitlines()[0], maxsplit=1)[1:] if copy_context else []
    line = re.search(r"\d+", after_table[0]) if after_table else None
    if line is None:
        return ContractError(path, None, f"{message}: {_NOT_IN_ENCODING}")
    row = int(line[0])
    hex_bytes = re.findall(r"0x([0-9a-f]{2})", message)
    character = bytes.fromhex("".join(hex_bytes)).decode(errors="replace")
    return ContractError(path, _column_holding(path, row - 1, character), f"row {row:,}: {message}: {_NOT_IN_ENCODING}")


_NOT_IN_ENCODING = ("the database's encoding cannot hold it (a database created with ENCODING 'UTF8' holds every "
                    "character)")


def _column_holding(path: Path, index: int, character: str) -> str | None:
    """The first text column whose value in row `index` of the file holds `character`."""
    parquet = pq.ParquetFile(path)
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if index < rows:
            row = parquet.read_row_group(group).slice(index, 1).to_pylist()[0]
            return next((name for name, value in row.items() if isinstance(value, str) and character in value), None)
        index -= rows
    return None
