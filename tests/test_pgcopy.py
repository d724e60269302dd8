"""COPY from Arrow: every fixed-width type and null arrives as it left in binary, every other
type the contract accepts arrives as it left in its faithful PostgreSQL type, through CSV."""

from __future__ import annotations

import datetime
import decimal
import random

import pyarrow as pa
import pytest
from psycopg2 import sql

from pipeline import db, pgcopy
from tests.conftest import query

SCHEMA = pa.schema([("id", pa.int64()), ("small", pa.int16()), ("medium", pa.int32()), ("score", pa.float32()),
                    ("precise", pa.float64()), ("flag", pa.bool_()), ("day", pa.date32()), ("day64", pa.date64()),
                    ("count", pa.uint32())])
ROWS = [(1, -2, 70_000, 0.5, 1 / 3, True, datetime.date(1999, 12, 31), datetime.date(1970, 1, 1), 2**32 - 1),
        (2, None, None, None, None, None, None, None, None),
        (-(2**62), 32_767, -(2**31), float("inf"), -0.0, False, datetime.date(2026, 11, 21),
         datetime.date(1969, 7, 20), 0)]


def load(conn, rows: list[tuple], batches: int = 1) -> None:
    table = pa.Table.from_pylist([dict(zip(SCHEMA.names, row, strict=True)) for row in rows], schema=SCHEMA)
    with conn.cursor() as cur:
        db.copy_in(cur, typed_table(cur, SCHEMA), table.to_batches(max_chunksize=len(rows) // batches or 1), SCHEMA)


def typed_table(cur, schema: pa.Schema) -> str:
    cur.execute(sql.SQL("CREATE TABLE typed ({})").format(db.column_definitions(schema)))
    return "typed"


@pytest.mark.parametrize("batches", [1, 3], ids=["one batch with nulls", "batches with and without nulls"])
def test_values_and_nulls_survive_binary_copy(conn, batches):
    load(conn, ROWS, batches)

    assert query(conn, "SELECT * FROM typed ORDER BY id DESC NULLS LAST") == \
        sorted(ROWS, key=lambda row: -row[0])


def test_batches_cut_at_any_row_keep_every_value_and_null(conn):
    """The encoder reads Arrow's buffers itself: a batch that starts mid-byte of a null bitmap or of
    the booleans' bits must still give each row its own values."""
    rng = random.Random(7)

    def day(since: datetime.date) -> datetime.date:
        return since + datetime.timedelta(days=rng.randint(-90_000, 90_000))

    def row(number: int) -> tuple:
        values = (rng.randint(-32_768, 32_767), rng.randint(-(2**31), 2**31 - 1), rng.randint(-99, 99) / 4,
                  rng.random(), rng.random() < 0.5, day(datetime.date(2000, 1, 1)), day(datetime.date(1970, 1, 1)),
                  rng.randint(0, 2**32 - 1))
        return (number, *(None if rng.random() < 0.2 else value for value in values))
    rows = [row(number) for number in range(1, 300)]

    load(conn, rows, batches=23)  # batches of 13 rows: every offset into a byte, with and without nulls

    assert query(conn, "SELECT * FROM typed ORDER BY id") == rows


def test_a_failure_while_encoding_is_the_error_raised(conn):
    def failing():
        yield pa.record_batch([pa.array([1]), pa.array([1], pa.int16()), pa.array([1], pa.int32()),
                               pa.array([1.0], pa.float32()), pa.array([1.0]), pa.array([True]),
                               pa.array([datetime.date(2026, 1, 3)]),
                               pa.array([datetime.date(2026, 1, 3)], pa.date64()), pa.array([1], pa.uint32())],
                              schema=SCHEMA)
        raise ValueError("the file broke here")

    with conn.cursor() as cur, pytest.raises(ValueError, match="the file broke here"):
        db.copy_in(cur, typed_table(cur, SCHEMA), failing(), SCHEMA)


MOMENT = datetime.datetime(2026, 11, 21, 21, 5, 0, 123456)
TEXT_TYPES = {  # Arrow column -> its PostgreSQL type and the value PostgreSQL gives back
    "stamp": (pa.array([MOMENT, None], pa.timestamp("us")), "timestamp without time zone", MOMENT),
    "stamp_utc": (pa.array([MOMENT, None], pa.timestamp("ms", tz="UTC")), "timestamp with time zone",
                  MOMENT.replace(microsecond=123000, tzinfo=datetime.UTC)),
    "day64": (pa.array([datetime.date(2026, 11, 21), None], pa.date64()), "date", datetime.date(2026, 11, 21)),
    "clock": (pa.array([datetime.time(21, 5), None], pa.time64("us")), "time without time zone", datetime.time(21, 5)),
    "price": (pa.array([decimal.Decimal("12345678901234567.89"), None], pa.decimal128(19, 2)), "numeric",
              decimal.Decimal("12345678901234567.89")),
    "big": (pa.array([2**64 - 1, None], pa.uint64()), "numeric", decimal.Decimal(2**64 - 1)),
    "tags": (pa.array([["a", "b,\"c\""], None], pa.list_(pa.string())), "jsonb", ["a", 'b,"c"']),
    "meta": (pa.array([{"k": 1, "v": "x"}, None]), "jsonb", {"k": 1, "v": "x"}),
    "blob": (pa.array([b"\x00\xff,\n", None], pa.binary()), "bytea", b"\x00\xff,\n"),
    "empty": (pa.nulls(2), "text", None),
    "label": (pa.array(["", None]), "text", ""),
}


def test_every_other_type_arrives_faithfully_through_csv(conn):
    table = pa.table({name: column for name, (column, _, _) in TEXT_TYPES.items()})
    with conn.cursor() as cur:
        db.copy_in(cur, typed_table(cur, table.schema), table.to_batches(), table.schema)

    types = dict(query(conn, "SELECT column_name, data_type FROM information_schema.columns"
                             " WHERE table_name = 'typed'"))
    assert types == {name: kind for name, (_, kind, _) in TEXT_TYPES.items()}
    first, second = query(conn, f"SELECT {', '.join(TEXT_TYPES)} FROM typed ORDER BY stamp NULLS LAST")
    assert [bytes(v) if isinstance(v, memoryview) else v for v in first] == [v for _, _, v in TEXT_TYPES.values()]
    assert second[:-1] == (None,) * (len(TEXT_TYPES) - 1) and second[-1] is None


def test_a_duration_has_no_postgresql_type():
    with pytest.raises(pgcopy.UnsupportedType, match="duration"):
        pgcopy.pg_type(pa.duration("s"))
