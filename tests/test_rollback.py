"""`python -m pipeline.rollback`: an archived week goes back live in all five tables at once."""

from __future__ import annotations

import subprocess

import pytest

from pipeline import WeeklyRecs
from tests.conftest import (
    NEXT_WEEK,
    PUBLISHED_TABLES,
    TELEGRAM_ENV,
    WEEK,
    live_state,
    query,
    run_module,
    run_tasks,
    table_snapshot,
)


def rollback(config_file, *args: str) -> subprocess.CompletedProcess:
    return run_module(config_file, "rollback", *args)


def weeks_live(conn) -> list[tuple]:
    return [query(conn, f"SELECT DISTINCT week, obj_description('{t}'::regclass, 'pg_class') FROM {t}")[0]
            for t in PUBLISHED_TABLES]


@pytest.mark.published_week
def test_a_rollback_puts_the_previous_week_back_in_all_five_tables_goes_no_further_typed_again_and_can_be_undone(
        settings, config_file, conn, bot_api, monkeypatch):
    first_week = {table: table_snapshot(conn, table) for table in PUBLISHED_TABLES}
    run_tasks(WeeklyRecs(week=NEXT_WEEK))
    second_week = {table: table_snapshot(conn, table) for table in PUBLISHED_TABLES}
    for name, value in TELEGRAM_ENV.items():
        monkeypatch.setenv(name, value)
    said_before = len(bot_api.texts())

    listed = rollback(config_file, "--list")
    back = rollback(config_file)

    assert listed.returncode == 0
    assert "2026-11-28" in listed.stdout and "(live)" in listed.stdout and "6,000" in listed.stdout
    assert back.returncode == 0, back.stderr
    assert "week 2026-11-21 is live again" in back.stdout
    assert weeks_live(conn) == [(WEEK, "week=2026-11-21")] * 5
    assert {table: table_snapshot(conn, table) for table in PUBLISHED_TABLES} == first_week
    again = rollback(config_file)  # its terminal lost the answer: it would go back one week more
    assert again.returncode == 1
    assert ("rollback refused: week 2026-11-21 is live by a rollback already, in place of week 2026-11-28; name the "
            "week to go further back; nothing changed") in again.stderr
    assert {table: table_snapshot(conn, table) for table in PUBLISHED_TABLES} == first_week
    undo = rollback(config_file, "2026-11-28")
    assert undo.returncode == 0, undo.stderr
    assert {table: table_snapshot(conn, table) for table in PUBLISHED_TABLES} == second_week
    # the chat hears of each, as of a publish: what the web service serves changed
    assert [text.splitlines()[0] for text in bot_api.texts()[said_before:]] == [
        "weekly-recs: week 2026-11-21 is live again, in place of week 2026-11-28 (python -m pipeline.rollback)",
        "weekly-recs: week 2026-11-28 is live again, in place of week 2026-11-21 (python -m pipeline.rollback)"]


@pytest.mark.published_week
def test_a_rollback_to_the_live_week_changes_nothing_says_so_and_succeeds_as_typed_again(settings, config_file,
                                                                                       conn, bot_api, monkeypatch):
    """A rollback typed again, after its terminal lost the answer, finds its week live: done, not refused."""
    for name, value in TELEGRAM_ENV.items():
        monkeypatch.setenv(name, value)
    before = live_state(conn)

    again = rollback(config_file, "2026-11-24")  # any day of the live week

    assert again.returncode == 0, again.stderr
    assert again.stdout == (f"week 2026-11-21 is live already in {', '.join(PUBLISHED_TABLES)}; nothing changed\n")
    assert live_state(conn) == before and bot_api.texts() == []  # nothing changed, so the chat hears nothing


def test_where_no_week_went_live_the_listing_and_a_rollback_fail_naming_the_database(settings, config_file):
    """As when the command reads another config than the pipeline's: a listing of nothing would look like a loss."""
    where = f"PostgreSQL at unix socket {settings['postgres']['host']}, database {settings['postgres']['database']!r}"

    listed = rollback(config_file, "--list")
    back = rollback(config_file)

    assert listed.returncode == 1 and listed.stdout == ""
    assert f"no week is live or archived in {where} as 'postgres' (another database?)" in listed.stderr
    assert back.returncode == 1
    assert f"rollback refused: no week has gone live in {where} as 'postgres': nothing to roll back" in back.stderr


@pytest.mark.published_week
def test_a_live_name_a_dba_dropped_is_named_and_nothing_changes(settings, config_file, conn):
    conn.cursor().execute("DROP TABLE online_recs CASCADE")
    before = live_state(conn)

    refused = rollback(config_file)

    assert refused.returncode == 1
    assert ("rollback refused: the published tables hold different weeks (default_recs 2026-11-21, online_recs none, "
            "candidates_train 2026-11-21, ") in refused.stderr
    assert live_state(conn) == before


def test_a_week_that_is_not_whole_in_every_table_is_refused_and_nothing_changes(settings, config_file, conn):
    run_tasks(WeeklyRecs(week=WEEK), WeeklyRecs(week=NEXT_WEEK))
    conn.cursor().execute("DROP TABLE online_recs__20261121")  # a week archived in four tables of five
    before = live_state(conn)

    refused = rollback(config_file, "2026-11-21")
    never_run = rollback(config_file, "2026-10-03")

    assert refused.returncode == 1 and never_run.returncode == 1
    assert "rollback refused: week 2026-11-21 is not archived in all of default_recs, online_recs" in refused.stderr
    assert "rollback refused: week 2026-10-03 is not archived" in never_run.stderr
    assert live_state(conn) == before
