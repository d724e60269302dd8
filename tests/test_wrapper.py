"""WeeklyRecs: the whole week, idempotent reruns, later weeks, rollback copies, failures."""

from __future__ import annotations

from pipeline import WeeklyRecs
from tests.conftest import (
    NEXT_WEEK,
    PUBLISHED_TABLES,
    WEEK,
    apply_settings,
    markers,
    query,
    run_luigi,
    run_tasks,
    table_snapshot,
)


def test_a_week_publishes_every_table_and_prints_a_summary(config_file, conn):
    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-24")

    assert result.returncode == 0, result.stderr
    assert "week 2026-11-21 published" in result.stdout
    for table in PUBLISHED_TABLES:
        (count,) = query(conn, f'SELECT count(*) FROM "{table}"')[0]
        assert f"{table}" in result.stdout and f"{count:,} rows" in result.stdout
    assert len(markers(conn)) == 7  # the six tasks of the graph and CheckInputs


def test_a_rerun_of_a_done_week_runs_nothing_and_changes_nothing(config_file, conn):
    run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-21")
    before = {t: table_snapshot(conn, t) for t in PUBLISHED_TABLES}, markers(conn)

    again = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-21")

    assert again.returncode == 0
    assert "complete ones were encountered" in again.stderr and "ran successfully" not in again.stderr
    assert ({t: table_snapshot(conn, t) for t in PUBLISHED_TABLES}, markers(conn)) == before


def test_a_second_week_is_published_and_the_first_kept_for_rollback(settings, conn):
    run_tasks(WeeklyRecs(week=WEEK))
    first = table_snapshot(conn, "candidates_ranked")

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"

    for table in PUBLISHED_TABLES:
        assert query(conn, f'SELECT DISTINCT week FROM "{table}"') == [(NEXT_WEEK,)]
        assert query(conn, f'SELECT DISTINCT week FROM "{table}__20261121"') == [(WEEK,)]
    assert table_snapshot(conn, "candidates_ranked__20261121") == first


def test_archives_older_than_the_retention_are_dropped(settings, conn):
    settings["pipeline"]["retention"] = "1"
    apply_settings(settings)
    for day in (7, 14, 21):
        run_tasks(WeeklyRecs(week=WEEK.replace(day=day)))

    archives = query(conn, "SELECT tablename FROM pg_tables WHERE tablename LIKE 'default_recs%'"
                     " ORDER BY 1")
    assert archives == [("default_recs",), ("default_recs__20261114",)]


def test_a_backfilled_older_week_goes_to_the_archive_not_the_published_table(settings, conn):
    run_tasks(WeeklyRecs(week=NEXT_WEEK))

    run_tasks(WeeklyRecs(week=WEEK))

    assert query(conn, "SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]
    assert query(conn, "SELECT DISTINCT week FROM candidates_ranked__20261121") == [(WEEK,)]


def test_a_week_whose_ranking_fails_leaves_the_previous_ranking_published(settings, conn):
    run_tasks(WeeklyRecs(week=WEEK))
    before = table_snapshot(conn, "candidates_ranked")
    settings["pipeline"]["cat_features"] = '["als_score"]'  # CatBoost refuses float categories
    apply_settings(settings)

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "FAILED"

    assert table_snapshot(conn, "candidates_ranked") == before
    assert not any(m.startswith(("RankCandidates_2026_11_28", "WeeklyRecs_2026_11_28"))
                   for m in markers(conn))
    assert query(conn, "SELECT DISTINCT week FROM candidates_train") == [(NEXT_WEEK,)]
