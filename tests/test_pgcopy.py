"""Binary COPY from Arrow: every fixed-width type and null arrives as it left."""

from __future__ import annotations

import datetime

import pyarrow as pa
import pytest

from pipeline import db
from tests.conftest import query

SCHEMA = pa.schema([("id", pa.int64()), ("small", pa.int16()), ("medium", pa.int32()), ("score", pa.float32()),
                    ("precise", pa.float64()), ("flag", pa.bool_()), ("day", pa.date32())])
ROWS = [(1, -2, 70_000, 0.5, 1 / 3, True, datetime.date(1999, 12, 31)),
        (2, None, None, None, None, None, None),
        (-(2**62), 32_767, -(2**31), float("inf"), -0.0, False, datetime.date(2026, 11, 21))]


def load(conn, rows: list[tuple], batches: int = 1) -> None:
    table = pa.Table.from_pylist([dict(zip(SCHEMA.names, row, strict=True)) for row in rows], schema=SCHEMA)
    with conn.cursor() as cur:
        staging = db.create_staging(cur, "typed", SCHEMA)
        db.copy_in(cur, staging, table.to_batches(max_chunksize=len(rows) // batches or 1), SCHEMA)
        cur.execute(f'ALTER TABLE "{staging}" RENAME TO typed')


@pytest.mark.parametrize("batches", [1, 3], ids=["one batch with nulls", "batches with and without nulls"])
def test_values_and_nulls_survive_binary_copy(conn, batches):
    load(conn, ROWS, batches)

    assert query(conn, "SELECT * FROM typed ORDER BY id DESC NULLS LAST") == \
        sorted(ROWS, key=lambda row: -row[0])


def test_a_failure_while_encoding_is_the_error_raised(conn):
    def failing():
        yield pa.record_batch([pa.array([1]), pa.array([1], pa.int16()), pa.array([1], pa.int32()),
                               pa.array([1.0], pa.float32()), pa.array([1.0]), pa.array([True]),
                               pa.array([datetime.date(2026, 1, 3)])], schema=SCHEMA)
        raise ValueError("the file broke here")

    with conn.cursor() as cur, pytest.raises(ValueError, match="the file broke here"):
        db.copy_in(cur, db.create_staging(cur, "typed", SCHEMA), failing(), SCHEMA)
