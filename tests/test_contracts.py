"""Bad input is refused by name: each case fails the run with an error naming the file, the column
and the problem, and the published tables and markers stay exactly as they were."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline import WeeklyRecs
from tests.conftest import PUBLISHED_TABLES, WEEK, apply_settings, markers, query, run_luigi, run_tasks, table_snapshot

TASK_FAILED = 30  # [retcode] task_failed in luigi.cfg


def rewrite(folder, file, change):
    path = folder / file
    pq.write_table(change(pq.read_table(path)), path)


def replace_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def with_value(table: pa.Table, name: str, row: int, value, arrow_type=None) -> pa.Table:
    values = table.column(name).to_pylist()
    values[row] = value
    return replace_column(table, name, pa.array(values, arrow_type or table.schema.field(name).type))


def missing_file(folder, settings):
    (folder / "similar.parquet").unlink()


def truncated_file(folder, settings):
    path = folder / "candidates_train.parquet"
    path.write_bytes(path.read_bytes()[:4000])


def missing_column(folder, settings):
    rewrite(folder, "similar.parquet", lambda t: t.drop_columns(["score"]))


def string_ids(folder, settings):
    rewrite(folder, "top_popular.parquet",
            lambda t: replace_column(t, "item_id", pc.cast(t.column("item_id"), pa.string())))


def float_ids_with_fractions(folder, settings):
    def change(table):
        floats = replace_column(table, "user_id", pc.cast(table.column("user_id"), pa.float64()))
        return with_value(floats, "user_id", 7, 12.5)
    rewrite(folder, "candidates_inference.parquet", change)


def non_numeric_feature(folder, settings):
    rewrite(folder, "candidates_train.parquet",
            lambda t: replace_column(t, "als_score", pc.cast(t.column("als_score"), pa.string())))


def null_ids(folder, settings):
    rewrite(folder, "candidates_train.parquet", lambda t: with_value(t, "item_id", 42, None))


def duplicate_candidates(folder, settings):
    rewrite(folder, "candidates_inference.parquet", lambda t: pa.concat_tables([t, t.slice(3, 1)]))


def target_not_binary(folder, settings):
    rewrite(folder, "candidates_train.parquet", lambda t: with_value(t, "target", 5, 2))


def single_class(folder, settings):
    rewrite(folder, "candidates_train.parquet",
            lambda t: replace_column(t, "target", pa.array([0] * t.num_rows, pa.int64())))


def empty_file(folder, settings):
    rewrite(folder, "top_popular.parquet", lambda t: t.slice(0, 0))


def configured_feature_missing(folder, settings):
    settings["pipeline"]["features"] = '["als_score", "category_id", "parent_id", "available", "price"]'


CASES = {
    missing_file: ("similar.parquet", ": file not found"),
    truncated_file: ("candidates_train.parquet", ": not a readable parquet file"),
    missing_column: ("similar.parquet", ", column 'score': required but missing"),
    string_ids: ("top_popular.parquet", ", column 'item_id': must hold integers, found string"),
    float_ids_with_fractions: ("candidates_inference.parquet",
                               ", column 'user_id': must hold integers, found 12.5 at row 7"),
    non_numeric_feature: ("candidates_train.parquet", ", column 'als_score': must be numeric, found string"),
    null_ids: ("candidates_train.parquet", ", column 'item_id': null ids are not allowed (first at row 42)"),
    duplicate_candidates: ("candidates_inference.parquet",
                           ", column 'user_id, item_id': duplicate rows: (user_id, item_id)=(301, 2430) appears more"),
    target_not_binary: ("candidates_train.parquet", ", column 'target': must be 0 or 1, found 2"),
    single_class: ("candidates_train.parquet", ", column 'target': a single class only"),
    empty_file: ("top_popular.parquet", ": the file has no rows"),
    configured_feature_missing: ("candidates_train.parquet",
                                 ", column 'price': listed in [pipeline] features but missing"),
}


def published_state(conn) -> tuple:
    return {table: table_snapshot(conn, table) for table in PUBLISHED_TABLES}, markers(conn)


@pytest.mark.parametrize("breaks", CASES, ids=[case.__name__ for case in CASES])
def test_bad_input_is_refused_by_name_and_nothing_published_changes(breaks, settings, config_file, input_dir, conn):
    run_tasks(WeeklyRecs(week=WEEK))
    before = published_state(conn)
    breaks(input_dir, settings)
    apply_settings(settings, config_file)
    file, problem = CASES[breaks]

    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-28")

    assert result.returncode == TASK_FAILED
    assert f"ContractError: {input_dir / file}{problem}" in result.stderr
    assert published_state(conn) == before


def test_a_duplicate_that_slips_past_the_check_is_refused_at_load_and_leaves_no_staging(settings, input_dir, conn):
    """Ids too large to pack for the pre-check: the load's unique index refuses the file instead."""
    good = pq.read_table(input_dir / "candidates_inference.parquet")
    big = replace_column(good, "user_id", pc.add(good.column("user_id"), 1 << 40))
    pq.write_table(pa.concat_tables([big, big.slice(0, 1)]), input_dir / "candidates_inference.parquet")

    assert run_tasks(WeeklyRecs(week=WEEK)).name == "FAILED"
    assert query(conn, "SELECT to_regclass('candidates_inference')") == [(None,)]

    pq.write_table(big, input_dir / "candidates_inference.parquet")
    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"
    assert query(conn, "SELECT tablename FROM pg_tables WHERE tablename LIKE '%staging%'") == []
