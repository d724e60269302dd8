"""Redo a week: its markers are forgotten, its tables stay published until the redo publishes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline import WeeklyRecs
from tests.conftest import PUBLISHED_TABLES, ROOT, WEEK, markers, run_module, run_tasks, table_snapshot


def test_redo_forgets_the_weeks_markers_and_keeps_its_tables_until_it_runs_again(settings, config_file, conn):
    run_tasks(WeeklyRecs(week=WEEK), WeeklyRecs(week=WEEK.replace(day=28)))
    published = {table: table_snapshot(conn, table) for table in PUBLISHED_TABLES}

    redo = subprocess.run([sys.executable, "-m", "pipeline.redo", "2026-11-24"], cwd=ROOT, capture_output=True,
                          text=True, env={"LUIGI_CONFIG_PATH": str(config_file), "PATH": "/usr/bin:/bin"})

    assert redo.returncode == 0, redo.stderr
    assert "week 2026-11-21: 9 markers forgotten" in redo.stdout
    assert not any("2026_11_21" in marker for marker in markers(conn))
    assert len(markers(conn)) == 9  # the other week's
    assert {table: table_snapshot(conn, table) for table in PUBLISHED_TABLES} == published
    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"
    assert len(markers(conn)) == 18


@pytest.mark.published_week
def test_a_week_that_is_no_date_is_refused_with_the_usage_and_nothing_forgotten(settings, config_file, conn):
    before = markers(conn)

    redo = run_module(config_file, "redo", "2026-11-31")

    assert redo.returncode == 2
    assert "usage: python -m pipeline.redo" in redo.stderr and "'2026-11-31'" in redo.stderr
    assert "Traceback" not in redo.stderr
    assert markers(conn) == before
