"""Load tasks publish exactly their file's rows, with the file's types, atomically."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import DefaultRecs, InferenceCandidates, OnlineRecs, TrainCandidates
from pipeline.contracts import ContractError
from pipeline.load import CheckInputs
from tests.conftest import NEXT_WEEK, ROOT, WEEK, environment_reading, query, run_tasks, staged

LOADS = [(DefaultRecs, "top_popular.parquet", "default_recs"),
         (OnlineRecs, "similar.parquet", "online_recs"),
         (TrainCandidates, "candidates_train.parquet", "candidates_train"),
         (InferenceCandidates, "candidates_inference.parquet", "candidates_inference")]


def rounded(rows: list[tuple]) -> list[tuple]:
    """The files' floats are float32, which PostgreSQL's `real` holds exactly."""
    return [tuple(np.float32(v) if isinstance(v, float) else v for v in row) for row in rows]


@pytest.mark.parametrize(("task", "file", "table"), LOADS)
def test_load_publishes_exactly_the_files_rows(task, file, table, settings, input_dir, conn):
    expected = pq.read_table(input_dir / file)

    assert run_tasks(task(week=WEEK)).name == "SUCCESS"

    columns = expected.column_names
    order = ", ".join(str(i + 1) for i in range(len(columns)))
    published = query(conn, f'SELECT {", ".join(columns)} FROM "{staged(table)}" ORDER BY {order}')
    rows = sorted(zip(*(expected.column(c).to_pylist() for c in columns), strict=True))
    assert len(published) == expected.num_rows
    assert rounded(published) == rounded(rows)
    assert query(conn, f'SELECT DISTINCT week FROM "{staged(table)}"') == [(WEEK,)]
    assert query(conn, f"SELECT to_regclass('{table}')") == [(None,)]  # live only with the whole week


def test_a_load_never_imports_pandas(config_file, conn):
    """pandas would be a fifth of a load's memory (README, Performance), and pyarrow imports it the
    moment a Python value becomes Arrow or Arrow becomes numpy."""
    assert run_tasks(CheckInputs(week=WEEK)).name == "SUCCESS"  # a step of its own, which reads with pandas
    load = ("import datetime, sys, luigi; from pipeline import InferenceCandidates; "
            f"week = datetime.date.fromisoformat('{WEEK}'); "
            "assert luigi.build([InferenceCandidates(week=week)], local_scheduler=True); "
            "print([name for name in sys.modules if name.startswith('pandas')])")
    result = subprocess.run([sys.executable, "-c", load], cwd=ROOT, capture_output=True, text=True,
                            env=environment_reading(config_file))

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "[]"
    assert query(conn, f"SELECT count(*) FROM \"{staged('candidates_inference')}\"")[0][0] > 0


def test_a_load_refuses_a_file_replaced_since_the_weeks_files_were_checked(settings, input_dir, conn):
    """What goes live is what CheckInputs checked: a file replaced between the check and its load
    (an export landing late, while the week runs) is refused, and the next run checks it."""
    assert run_tasks(CheckInputs(week=WEEK)).name == "SUCCESS"
    path = input_dir / "candidates_inference.parquet"
    pq.write_table(pq.read_table(path).slice(1), path)

    with pytest.raises(ContractError, match=f"{path}: replaced since the week's files were checked"):
        InferenceCandidates(week=WEEK).run()
    assert query(conn, f"SELECT to_regclass('{staged('candidates_inference')}')") == [(None,)]

    assert run_tasks(InferenceCandidates(week=WEEK)).name == "SUCCESS"  # checked again, then loaded
    assert query(conn, f"SELECT count(*) FROM \"{staged('candidates_inference')}\"")[0][0] == \
        pq.read_metadata(path).num_rows


def test_column_types_follow_the_arrow_schema(settings, conn):
    run_tasks(TrainCandidates(week=WEEK))

    types = dict(query(conn, "SELECT column_name, data_type FROM information_schema.columns"
                       " WHERE table_name = %s", staged("candidates_train")))
    assert types == {"user_id": "bigint", "item_id": "bigint", "als_score": "real",
                     "category_id": "bigint", "parent_id": "bigint", "available": "bigint",
                     "target": "bigint", "week": "date"}


def test_candidates_get_a_unique_index_on_user_and_item(settings, conn):
    run_tasks(InferenceCandidates(week=WEEK))

    indexes = query(conn, "SELECT indexdef FROM pg_indexes WHERE tablename = %s", staged("candidates_inference"))
    assert len(indexes) == 1
    assert "UNIQUE" in indexes[0][0] and "(user_id, item_id)" in indexes[0][0]


def test_extra_columns_are_kept_text_too(settings, input_dir, conn):
    table = pq.read_table(input_dir / "top_popular.parquet")
    titles = [f"item, \"{item}\"\n" for item in table.column("item_id").to_pylist()]  # CSV's hard cases
    pq.write_table(table.append_column("rec_id", table.column("item_id")).append_column("title", pa.array(titles)),
                   input_dir / "top_popular.parquet")

    run_tasks(DefaultRecs(week=WEEK))

    assert query(conn, f"SELECT count(DISTINCT rec_id) FROM {staged('default_recs')}") == [(table.num_rows,)]
    assert sorted(title for (title,) in query(conn, f"SELECT title FROM {staged('default_recs')}")) == sorted(titles)


def test_any_day_of_a_week_names_the_same_task():
    tuesday, saturday = NEXT_WEEK.replace(day=24), WEEK
    assert DefaultRecs(week=tuesday).task_id == DefaultRecs(week=saturday).task_id
    assert DefaultRecs(week=NEXT_WEEK).task_id != DefaultRecs(week=saturday).task_id
