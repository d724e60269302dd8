"""Redo a week: its markers are forgotten, its tables stay published until the redo publishes."""

from __future__ import annotations

import logging
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline import TrainCandidates, WeeklyRecs, redo
from tests.conftest import (
    NEXT_WEEK,
    PUBLISHED_TABLES,
    ROOT,
    TASK_FAILED,
    WEEK,
    apply_settings,
    markers,
    query,
    run_luigi,
    run_module,
    run_tasks,
    table_snapshot,
)
from tests.events.test_tasks import shop_events_and


def test_redo_forgets_the_weeks_markers_and_keeps_its_tables_until_it_runs_again(settings, config_file, conn):
    run_tasks(WeeklyRecs(week=WEEK), WeeklyRecs(week=WEEK.replace(day=28)))
    published = {table: table_snapshot(conn, table) for table in PUBLISHED_TABLES}

    redo = subprocess.run([sys.executable, "-m", "pipeline.redo", "2026-11-24"], cwd=ROOT, capture_output=True,
                          text=True, env={"LUIGI_CONFIG_PATH": str(config_file), "PATH": "/usr/bin:/bin"})

    assert redo.returncode == 0, redo.stderr
    assert "week 2026-11-21: 10 markers forgotten" in redo.stdout
    assert not any("2026_11_21" in marker for marker in markers(conn))
    assert len(markers(conn)) == 10  # the other week's
    assert {table: table_snapshot(conn, table) for table in PUBLISHED_TABLES} == published
    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"
    assert len(markers(conn)) == 20


@pytest.mark.published_week
def test_a_redo_that_finds_no_marker_of_its_week_says_so_and_fails(config_file, conn):
    """A mistyped week (2027 for 2026), or another database: a run after it would redo nothing."""
    before = markers(conn)

    redo = run_module(config_file, "redo", "2027-11-24")

    assert redo.returncode == 1 and redo.stdout == ""
    assert "week 2027-11-20: no marker and no table of it in PostgreSQL at " in redo.stderr
    assert ": it has not run there (a mistyped week? another database?); nothing to redo" in redo.stderr
    assert markers(conn) == before


@pytest.mark.published_week
def test_a_redo_typed_again_finds_its_markers_forgotten_already_and_says_the_next_run_redoes_it(config_file, conn):
    """As after its terminal lost the answer: the week's tables are there, its markers gone."""
    first = run_module(config_file, "redo", str(WEEK))
    before = markers(conn)

    again = run_module(config_file, "redo", str(WEEK))

    assert first.returncode == 0 and again.returncode == 0, again.stderr
    assert again.stdout == "week 2026-11-21: its markers were forgotten already; the next run redoes it\n"
    assert markers(conn) == before


def test_a_file_replaced_after_its_load_staged_is_refused_before_the_fit_and_a_redo_loads_it(
        settings, config_file, input_dir, conn):
    """The re-export that fixes a week the quality gate refused: the train rows staged before it would
    be fitted on again (and the gate refuse them again), so the run says which file and what to do."""
    assert run_tasks(TrainCandidates(week=WEEK)).name == "SUCCESS"
    path = input_dir / "candidates_train.parquet"
    pq.write_table(pq.read_table(path).slice(1), path)  # the re-export

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", WEEK.isoformat())

    assert refused.returncode == TASK_FAILED
    assert (f"ContractError: {path}: replaced after candidates_train was staged from it for week {WEEK}: "
            f"python -m pipeline.redo {WEEK} and a rerun load the file there now") in refused.stderr
    assert query(conn, "SELECT to_regclass('ranker_models')") == [(None,)]  # refused before the fit, nothing stored
    assert run_module(config_file, "redo", str(WEEK)).returncode == 0
    redone = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", WEEK.isoformat())
    assert redone.returncode == 0, redone.stderr[-2000:]
    assert query(conn, "SELECT count(*) FROM candidates_train")[0][0] == pq.read_metadata(path).num_rows


@pytest.mark.published_week
def test_a_week_that_is_no_date_is_refused_with_the_usage_and_nothing_forgotten(settings, config_file, conn):
    before = markers(conn)

    redo = run_module(config_file, "redo", "2026-11-31")

    assert redo.returncode == 2
    assert "usage: python -m pipeline.redo" in redo.stderr and "'2026-11-31'" in redo.stderr
    assert "Traceback" not in redo.stderr
    assert markers(conn) == before


@pytest.mark.published_week
def test_a_redo_goes_live_and_an_analysts_view_on_the_version_it_replaced_reads_that_version_until_dropped(
        settings, input_dir, conn, reader, caplog):
    conn.cursor().execute("CREATE VIEW popular_as_published AS SELECT item_id, items_cnt FROM default_recs__20261121")
    published = query(conn, "SELECT * FROM popular_as_published ORDER BY item_id")
    popular = pq.read_table(input_dir / "top_popular.parquet")
    pq.write_table(popular.set_column(popular.column_names.index("items_cnt"), "items_cnt",
                                      pc.multiply(popular["items_cnt"], 2)), input_dir / "top_popular.parquet")
    redo.forget_week(WEEK)

    with caplog.at_level(logging.WARNING, logger="luigi-interface"):
        assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"

    assert reader.read("SELECT item_id, items_cnt / 2 FROM default_recs ORDER BY item_id") == published
    assert query(conn, "SELECT * FROM popular_as_published ORDER BY item_id") == published
    assert ("default_recs__20261121 is replaced by a redo of its week; the version it replaced is kept as "
            "default_recs__20261121_replaced_1 until nothing depends on it: view popular_as_published") in caplog.text
    conn.cursor().execute("DROP VIEW popular_as_published")

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"

    assert query(conn, "SELECT to_regclass('default_recs__20261121_replaced_1') IS NULL") == [(True,)]


def test_a_redo_from_the_events_makes_the_week_again_with_the_events_that_arrived_late(
        events_settings, shop, tmp_path, config_file, reader):
    """An export that was short when the week ran, completed since: a rerun alone would make the week
    again from the files the stage made then."""
    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"
    latecomer = 9_000_001
    events_settings["events"]["events_path"] = str(shop_events_and(  # three events before the cutoff
        shop, tmp_path / "events-completed", user_id=pa.array([latecomer] * 3, pa.int64())))
    apply_settings(events_settings, config_file)

    redo = run_module(config_file, "redo", str(WEEK), "--from-events")

    assert redo.returncode == 0, redo.stderr
    assert redo.stdout == ("week 2026-11-21: 10 markers forgotten, 6 files of the events stage removed; the next "
                           "run redoes it from the events\n")  # its 4 files, the outcomes of its 2 train weeks
    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"
    assert reader.read("SELECT count(*) > 0 FROM candidates_ranked WHERE user_id = %s", latecomer) == [(True,)]


def test_a_redo_from_the_events_of_a_week_made_of_the_modelling_stages_files_is_refused(config_file):
    redo = run_module(config_file, "redo", str(WEEK), "--from-events")

    assert redo.returncode == 2 and redo.stdout == ""
    assert "error: --from-events: [pipeline] source is files, whose weeks the modelling stage makes" in redo.stderr
