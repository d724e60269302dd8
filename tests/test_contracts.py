"""Every file shape loads faithfully or is refused by name: each bad case fails the run with an
error naming the file, the column and the problem, and what the web service reads stays exactly
as it was (the five live tables, their week comments, the archives and the metrics)."""

from __future__ import annotations

import datetime
import decimal
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.contracts import CANDIDATES_TRAIN, ContractError, check_positives, footer_digest, untranslatable_error
from tests.conftest import NEXT_WEEK, TASK_FAILED, WEEK, apply_settings, live_state, query, run_luigi

LIBRARY_ERRORS = re.compile(r"Arrow(Invalid|TypeError|NotImplementedError)|psycopg2\.errors|CatBoostError|TypeError")


def rewrite(folder, file, change):
    path = folder / file
    pq.write_table(change(pq.read_table(path)), path)


def without_last_user(table: pa.Table) -> pa.Table:
    """The same export with one user fewer: a file of another week, as far as its bytes go."""
    return table.filter(pc.not_equal(table.column("user_id"), pc.max(table.column("user_id"))))


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


def duplicate_outcomes(folder, settings):
    def with_outcome_week(t):
        t = t.append_column("outcome_week", pa.repeat(pa.scalar(datetime.date(2026, 11, 14), pa.date32()), t.num_rows))
        return pa.concat_tables([t, t.slice(3, 1)])
    rewrite(folder, "candidates_train.parquet", with_outcome_week)


def target_not_binary(folder, settings):
    rewrite(folder, "candidates_train.parquet", lambda t: with_value(t, "target", 5, 2))


def null_user_in_train(folder, settings):
    rewrite(folder, "candidates_train.parquet", lambda t: with_value(t, "user_id", 17, None))


def single_class(folder, settings):
    rewrite(folder, "candidates_train.parquet",
            lambda t: replace_column(t, "target", pa.array([1] * t.num_rows, pa.int64())))


def one_user_has_every_positive(folder, settings):
    def change(table):
        first_user = pc.equal(table.column("user_id"), table.column("user_id")[0])
        return replace_column(table, "target", pc.cast(first_user, pa.int64()))
    rewrite(folder, "candidates_train.parquet", change)


def extra_column(file, name, values):
    def breaks(folder, settings):
        rewrite(folder, file, lambda t: t.append_column(name, pa.array(values(t.num_rows))))
    breaks.__name__ = f"extra_{name[:12]}_in_{file.split('.')[0]}"
    return breaks


def names_equal_in_their_first_63_bytes(folder, settings):
    long = "x" * 63
    rewrite(folder, "similar.parquet", lambda t: t.append_column(long + "_a", t.column("score"))
            .append_column(long + "_b", t.column("score")))


def uint64_ids_beyond_bigint(folder, settings):
    rewrite(folder, "top_popular.parquet", lambda t: with_value(
        replace_column(t, "item_id", pc.cast(t.column("item_id"), pa.uint64())), "item_id", 3, 2**64 - 1))


def a_duration_column(folder, settings):
    rewrite(folder, "similar.parquet",
            lambda t: t.append_column("wait", pa.array([1] * t.num_rows, pa.duration("s"))))


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
    duplicate_candidates: ("candidates_inference.parquet", ", column 'user_id, item_id': duplicate rows: "
                           "Key (user_id, item_id)=(301, 2430) is duplicated"),
    duplicate_outcomes: ("candidates_train.parquet", ", column 'outcome_week, user_id, item_id': duplicate rows: "
                         "Key (outcome_week, user_id, item_id)=(2026-11-14, "),
    target_not_binary: ("candidates_train.parquet", ", column 'target': must be 0 or 1, found 2"),
    null_user_in_train: ("candidates_train.parquet", ", column 'user_id': null ids are not allowed (first at row 17)"),
    single_class: ("candidates_train.parquet", ", column 'target': a single class only"),
    one_user_has_every_positive: ("candidates_train.parquet", ", column 'target': 1 users have a positive: 0 in the "
                                  "held-out share (0.2) and 1 to train on; each needs at least 5"),
    extra_column("top_popular.parquet", "week", lambda n: ["2026-11-28"] * n):
        ("top_popular.parquet", ", column 'week': the pipeline adds a column of this name to the table; rename it"),
    extra_column("candidates_inference.parquet", "cb_score", lambda n: [0.5] * n):
        ("candidates_inference.parquet", ", column 'cb_score': the pipeline adds a column of this name"),
    extra_column("candidates_inference.parquet", "rank", lambda n: [1] * n):
        ("candidates_inference.parquet", ", column 'rank': the pipeline adds a column of this name"),
    extra_column("candidates_train.parquet", "als_rank", lambda n: [1] * n):
        ("candidates_train.parquet", ", column 'als_rank': the pipeline adds a column of this name"),
    names_equal_in_their_first_63_bytes: ("similar.parquet", f", column '{'x' * 63}_b': the column name is the same as "
                                          f"'{'x' * 63}_a' to PostgreSQL, which keeps the first 63 bytes of a name"),
    uint64_ids_beyond_bigint: ("top_popular.parquet", ", column 'item_id': id 18446744073709551615 at row 3 is above "
                               "9223372036854775807, the largest id PostgreSQL's bigint holds"),
    a_duration_column: ("similar.parquet", ", column 'wait': type duration[s] has no PostgreSQL equivalent"),
    empty_file: ("top_popular.parquet", ": the file has no rows"),
    configured_feature_missing: ("candidates_train.parquet",
                                 ", column 'price': listed in [pipeline] features but missing"),
}


@pytest.mark.published_week
@pytest.mark.parametrize("breaks", CASES, ids=[case.__name__ for case in CASES])
def test_bad_input_is_refused_by_name_and_nothing_published_changes(breaks, settings, config_file, input_dir, conn):
    before = live_state(conn)
    assert before[1], "the sample week is live when the bad one comes"
    breaks(input_dir, settings)
    apply_settings(settings, config_file)
    file, problem = CASES[breaks]

    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-28")

    assert result.returncode == TASK_FAILED
    assert f"ContractError: {input_dir / file}{problem}" in result.stderr
    assert live_state(conn) == before
    assert not LIBRARY_ERRORS.search(result.stderr)  # the failure is told in the contract's words


@pytest.mark.published_week
def test_a_file_cut_to_under_half_the_live_weeks_rows_is_refused_and_goes_live_only_when_asked(
        settings, config_file, input_dir, conn, reader):
    """A file cut short passes every contract; going live it would take most users' recommendations."""
    path = input_dir / "candidates_inference.parquet"
    live_rows = query(conn, "SELECT count(*) FROM candidates_ranked")[0][0]  # granted to the reader at the next publish
    rewrite(input_dir, path.name, lambda table: table.slice(0, table.num_rows * 2 // 5))
    kept = pq.read_metadata(path).num_rows
    before = live_state(conn)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", NEXT_WEEK.isoformat())

    assert refused.returncode == TASK_FAILED
    assert (f"ContractError: {path}: {kept:,} rows, where the live week {WEEK} of candidates_ranked has about "
            f"{live_rows:,}: more than [pipeline] max_row_drop = 0.5 of them would go") in refused.stderr
    assert live_state(conn) == before

    asked = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", NEXT_WEEK.isoformat(),
                      "--pipeline-max-row-drop", "1")

    assert asked.returncode == 0, asked.stderr[-2000:]
    assert reader.read("SELECT week, count(*) FROM candidates_ranked GROUP BY week") == [(NEXT_WEEK, kept)]


@pytest.mark.published_week
def test_a_file_replaced_after_a_failed_run_is_checked_again_before_it_loads(settings, config_file, input_dir, conn):
    """A week that failed after its files were checked is rerun on whatever files are there then: a
    re-export meets the checks the first export met, here the cut-short one."""
    duplicate_candidates(input_dir, settings)  # passes CheckInputs, fails at the load's unique index
    before = live_state(conn)
    failed = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", NEXT_WEEK.isoformat())
    assert failed.returncode == TASK_FAILED and "duplicate rows" in failed.stderr
    path = input_dir / "candidates_inference.parquet"
    rewrite(input_dir, path.name, lambda table: table.slice(0, table.num_rows * 2 // 5))  # the re-export, cut short

    rerun = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", NEXT_WEEK.isoformat())

    assert rerun.returncode == TASK_FAILED
    assert f"{path} is not the file checked for week {NEXT_WEEK}: the week's files are checked again" in rerun.stderr
    assert f"ContractError: {path}: {pq.read_metadata(path).num_rows:,} rows, where the live week" in rerun.stderr
    assert live_state(conn) == before


def test_a_footer_digest_tells_two_exports_apart_and_a_copy_alike(sample_week, tmp_path):
    path = sample_week / "candidates_inference.parquet"
    copy, other = tmp_path / "copy.parquet", tmp_path / "other.parquet"
    copy.write_bytes(path.read_bytes())
    pq.write_table(without_last_user(pq.read_table(path)), other)

    assert footer_digest(copy) == footer_digest(path)
    assert footer_digest(other) != footer_digest(path)


@pytest.mark.published_week
def test_candidates_the_live_week_was_loaded_from_are_refused_as_the_next_weeks_and_go_live_only_when_asked(
        settings, config_file, input_dir, conn, reader):
    """A modelling stage that did not run leaves last week's files where this week's should be; going
    live, they would be served as this week's and the success message would say all was well."""
    settings["pipeline"]["allow_same_files"] = "false"  # a shop's default; the suite's weeks share one sample
    apply_settings(settings, config_file)
    rewrite(input_dir, "candidates_train.parquet", without_last_user)  # the train export ran, the other did not
    path = input_dir / "candidates_inference.parquet"
    before = live_state(conn)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", NEXT_WEEK.isoformat())

    assert refused.returncode == TASK_FAILED
    assert (f"ContractError: {path}: the very file the live week {WEEK} of candidates_inference was loaded from "
            "(the same parquet footer)") in refused.stderr
    assert live_state(conn) == before

    asked = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", NEXT_WEEK.isoformat(),
                      "--pipeline-allow-same-files")

    assert asked.returncode == 0, asked.stderr[-2000:]
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]


@pytest.mark.published_week
def test_a_dbas_comment_on_the_live_weeks_table_stays_and_hides_nothing_from_the_repeated_file_check(
        settings, config_file, input_dir, conn):
    """A week's table is the DBA's to document, as a live name is; the file it was loaded from is
    noted on the pipeline's own week check, which a DBA's comment on the table leaves alone."""
    settings["pipeline"]["allow_same_files"] = "false"
    apply_settings(settings, config_file)
    documented = f"candidates_inference__{WEEK:%Y%m%d}"
    conn.cursor().execute(f"COMMENT ON TABLE {documented} IS 'what the web service ranks: ask #recs'")
    rewrite(input_dir, "candidates_train.parquet", without_last_user)
    before = live_state(conn)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", NEXT_WEEK.isoformat())

    assert refused.returncode == TASK_FAILED
    assert "the very file the live week" in refused.stderr
    assert live_state(conn) == before
    assert query(conn, "SELECT obj_description(%s::regclass, 'pg_class')", documented) == [
        ("what the web service ranks: ask #recs",)]


@pytest.mark.published_week
def test_new_candidates_files_go_live_as_the_next_week_by_default(settings, config_file, input_dir, reader):
    settings["pipeline"]["allow_same_files"] = "false"
    apply_settings(settings, config_file)
    for file in ("candidates_train.parquet", "candidates_inference.parquet"):
        rewrite(input_dir, file, without_last_user)

    published = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", NEXT_WEEK.isoformat())

    assert published.returncode == 0, published.stderr[-2000:]
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]


def test_extra_columns_of_every_loadable_type_go_live_with_faithful_types(settings, config_file, input_dir, conn):
    moment = datetime.datetime(2026, 11, 20, 9, 30, tzinfo=datetime.UTC)
    def change(table):
        n = table.num_rows
        extra = {"seen_at": pa.array([moment] * n, pa.timestamp("us", tz="UTC")),
                 "price": pa.array([decimal.Decimal("19.99")] * n, pa.decimal128(10, 2)),
                 "tags": pa.array([["new", "sale"]] * n), "brand": pa.array(["acme"] * n).dictionary_encode(),
                 "meta": pa.array([{"color": "red"}] * n), "thumb": pa.array([b"\x89PNG"] * n)}
        table = replace_column(table, "item_id", pc.cast(table.column("item_id"), pa.uint64()))
        for name, values in extra.items():
            table = table.append_column(name, values)
        return table
    rewrite(input_dir, "top_popular.parquet", change)

    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-21")

    assert result.returncode == 0, result.stderr[-2000:]
    types = dict(query(conn, "SELECT column_name, data_type FROM information_schema.columns"
                             " WHERE table_name = 'default_recs'"))
    assert types == {"item_id": "bigint", "items_cnt": "bigint", "seen_at": "timestamp with time zone",
                     "price": "numeric", "tags": "jsonb", "brand": "text", "meta": "jsonb", "thumb": "bytea",
                     "week": "date"}
    row = query(conn, "SELECT seen_at, price, tags, brand, meta, thumb FROM default_recs LIMIT 1")[0]
    assert row[:5] == (moment, decimal.Decimal("19.99"), ["new", "sale"], "acme", {"color": "red"})
    assert bytes(row[5]) == b"\x89PNG"


def as_float(table: pa.Table, name: str) -> pa.Table:
    return replace_column(table, name, pc.cast(table.column(name), pa.float64()))


POSITIVES_CASES = {
    "null user": (lambda t: with_value(t, "user_id", 17, None),
                  "'user_id': null ids are not allowed (first at row 17)"),
    "null target": (lambda t: with_value(t, "target", 9, None),
                    "'target': null labels are not allowed (first at row 9)"),
    "NaN target": (lambda t: with_value(as_float(t, "target"), "target", 4, float("nan")),
                   "'target': must hold integers, found nan at row 4"),
    "NaN user": (lambda t: with_value(as_float(t, "user_id"), "user_id", 6, float("nan")),
                 "'user_id': must hold integers, found nan at row 6"),
    "infinite user": (lambda t: with_value(as_float(t, "user_id"), "user_id", 2, float("inf")),
                      "'user_id': must hold integers, found inf at row 2"),
    "fractional target": (lambda t: with_value(as_float(t, "target"), "target", 3, 0.5),
                          "'target': must hold integers, found 0.5 at row 3"),
    "target of 3": (lambda t: with_value(t, "target", 8, 3), "'target': must be 0 or 1, found 3"),
    "string target": (lambda t: replace_column(t, "target", pc.cast(t.column("target"), pa.string())),
                      "'target': must hold integers, found string"),
}


@pytest.mark.parametrize("case", POSITIVES_CASES)
def test_the_positives_check_meets_every_value_shape_with_the_file_column_and_row(case, input_dir):
    """It reads users and labels before any load has checked them: each shape is refused by name."""
    change, problem = POSITIVES_CASES[case]
    rewrite(input_dir, "candidates_train.parquet", change)
    path = input_dir / "candidates_train.parquet"

    with pytest.raises(ContractError) as refused:
        check_positives(path, CANDIDATES_TRAIN, seed=42, holdout_share=0.2, holdout="users")

    assert str(refused.value) == f"{path}, column {problem}"


def test_the_positives_check_splits_as_the_ranker_does_when_it_holds_out_the_latest_week(input_dir):
    """Two outcome weeks whose later one has positives of 3 users only: enough users held out at random,
    too few in the latest week."""
    path = input_dir / "candidates_train.parquet"
    table = pq.read_table(path)
    users = np.unique(table.column("user_id").to_numpy())
    latest = np.isin(table.column("user_id").to_numpy(), users[:3])
    weeks = np.where(latest, np.datetime64("2026-11-14"), np.datetime64("2026-11-07"))
    pq.write_table(table.append_column("outcome_week", pa.array(weeks, pa.date32())), path)

    check_positives(path, CANDIDATES_TRAIN, seed=42, holdout_share=0.2, holdout="users")
    with pytest.raises(ContractError) as refused:
        check_positives(path, CANDIDATES_TRAIN, seed=42, holdout_share=0.2, holdout="latest_week")

    positive_users = len(np.unique(table.filter(pc.equal(table.column("target"), 1)).column("user_id")))
    latest_positive = len(np.unique(table.filter(pc.and_(pc.equal(table.column("target"), 1), pa.array(latest)))
                                    .column("user_id")))
    assert str(refused.value) == (f"{path}, column 'target': {positive_users} users have a positive: {latest_positive} "
                                  f"in the latest outcome week (2026-11-14) and {positive_users - latest_positive} "
                                  "to train on; each needs at least 5")


@pytest.mark.parametrize("context", ["COPY default_recs__staged_20261128, line 3",
                                     "COPY default_recs__staged_20261128, Zeile 3",
                                     "default_recs__staged_20261128のCOPY、行 3"],
                         ids=["English", "German", "Japanese"])
def test_a_character_the_database_cannot_hold_is_named_by_row_and_column_whatever_the_servers_language(
        tmp_path, context):
    """PostgreSQL names the `COPY`'s line in its own language; the file's row 3 is in its second row group."""
    path = tmp_path / "top_popular.parquet"
    pq.write_table(pa.table({"item_id": [1, 2, 3], "note": ["a", "b", "c"], "title": ["x", "y ✓", "café ✓"]}), path,
                   row_group_size=2)
    message = "Zeichen mit Byte-Folge 0xe2 0x9c 0x93 in Kodierung »UTF8« hat keine Entsprechung in Kodierung »LATIN1«"

    error = untranslatable_error(path, message, context)

    assert str(error) == (f"{path}, column 'title': row 3: {message}: the database's encoding cannot hold it (a "
                          "database created with ENCODING 'UTF8' holds every character)")
