"""WeeklyRecs: the whole week, idempotent reruns, later weeks, rollback copies, failures."""

from __future__ import annotations

from datetime import date, timedelta

import pyarrow.parquet as pq
import pytest

from pipeline import DefaultRecs, OnlineRecs, RankCandidates, WeeklyRecs
from tests.conftest import (
    NEXT_WEEK,
    PUBLISHED_TABLES,
    TASK_FAILED,
    TELEGRAM_ENV,
    UNHANDLED,
    WEEK,
    apply_settings,
    live_state,
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
    assert len(markers(conn)) == 10  # CheckInputs, five staged tables, TrainRanker, one shard, WeeklyRecs twice


def test_a_rerun_of_a_done_week_runs_nothing_and_changes_nothing(config_file, conn):
    run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-21")
    before = {t: table_snapshot(conn, t) for t in PUBLISHED_TABLES}, markers(conn)

    again = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-21")

    assert again.returncode == 0
    assert "complete ones were encountered" in again.stderr and "ran successfully" not in again.stderr
    assert ({t: table_snapshot(conn, t) for t in PUBLISHED_TABLES}, markers(conn)) == before


@pytest.mark.published_week
def test_a_second_week_is_published_and_the_first_kept_for_rollback(settings, conn):
    first = table_snapshot(conn, "candidates_ranked")

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"

    for table in PUBLISHED_TABLES:
        assert query(conn, f'SELECT DISTINCT week FROM "{table}"') == [(NEXT_WEEK,)]
        assert query(conn, f'SELECT DISTINCT week FROM "{table}__20261121"') == [(WEEK,)]
    assert table_snapshot(conn, "candidates_ranked__20261121") == first


@pytest.mark.published_week
def test_the_live_week_is_complete_once_settled_and_a_week_replaced_since_needs_no_settling(settings, conn):
    """What follows the swap is done for the live week; a week put live before the settling was
    marked, or left unsettled by a run that stopped, needs none once another week replaced it."""
    first, second = WeeklyRecs(week=WEEK), WeeklyRecs(week=NEXT_WEEK)
    run_tasks(second)
    unsettle = "DELETE FROM table_updates WHERE update_id = %s"

    conn.cursor().execute(unsettle, (first.settled().update_id,))
    conn.cursor().execute(unsettle, (second.settled().update_id,))

    assert first.complete() and not second.complete()
    assert run_tasks(second).name == "SUCCESS" and second.complete()
    assert second.settled().update_id in markers(conn)


@pytest.mark.published_week
def test_weeks_that_never_went_live_are_named_when_a_later_one_does(bot_api, settings, config_file, conn):
    """The last word on weeks no check of cron's runs again: killed, run by hand, failed twice."""
    settings["pipeline"]["allow_future_weeks"] = "true"  # the weeks after the template's run into 2027
    apply_settings(settings, config_file)
    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-12-12", env=TELEGRAM_ENV)

    assert result.returncode == 0, result.stderr[-2000:]
    [text] = bot_api.texts()
    assert ("never published, between the live week 2026-11-21 and this one: 2026-11-28, 2026-12-05 (their runs "
            "failed twice, were killed, or ran by hand; `WeeklyRecsRange --start 2026-11-28 --stop 2026-12-05` "
            "archives them)") in text
    assert "never published" not in run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week",
                                              "2026-12-19").stderr
    assert ("never published, between the live week 2026-12-19 and this one: 6 weeks, 2026-12-26 to 2027-01-30 "
            in run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2027-02-06").stderr)


def test_archives_older_than_the_retention_are_dropped(settings, conn):
    settings["pipeline"]["retention"] = "1"
    apply_settings(settings)
    for day in (7, 14, 21):
        run_tasks(WeeklyRecs(week=WEEK.replace(day=day)))

    archives = query(conn, "SELECT tablename FROM pg_tables WHERE tablename LIKE 'default_recs%'"
                     " ORDER BY 1")
    assert archives == [("default_recs",), ("default_recs__20261114",), ("default_recs__20261121",)]  # live: 21


def test_a_backfilled_older_week_goes_to_the_archive_not_the_published_table(settings, conn):
    run_tasks(WeeklyRecs(week=NEXT_WEEK))

    run_tasks(WeeklyRecs(week=WEEK))

    assert query(conn, "SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]
    assert query(conn, "SELECT DISTINCT week FROM candidates_ranked__20261121") == [(WEEK,)]


@pytest.mark.published_week
def test_a_backfill_older_than_the_retention_keeps_is_refused_before_anything_is_staged(settings, config_file, conn):
    """Archived behind newer weeks, it would be dropped the moment it went live, its markers saying done."""
    settings["pipeline"]["retention"] = "1"
    apply_settings(settings, config_file)
    run_tasks(WeeklyRecs(week=NEXT_WEEK))  # live 2026-11-28, its one archive 2026-11-21
    before = live_state(conn), markers(conn)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-14")

    assert refused.returncode == TASK_FAILED
    assert ("ValueError: week 2026-11-14 is older than what [pipeline] retention = 1 keeps of default_recs (the live "
            "week 2026-11-28 and the archived weeks 2026-11-21): backfilled, it would be archived and dropped at once; "
            "raise [pipeline] retention to keep it") in refused.stderr
    assert (live_state(conn), markers(conn)) == before
    assert query(conn, "SELECT tablename FROM pg_tables WHERE tablename LIKE '%%2026111%%'") == []

    kept = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-14",
                     "--pipeline-retention", "2")

    assert kept.returncode == 0, kept.stderr
    assert query(conn, "SELECT DISTINCT week FROM candidates_ranked__20261114") == [(WEEK.replace(day=14),)]
    assert query(conn, "SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]


@pytest.mark.parametrize(("task", "flags", "named"), [
    ("WeeklyRecs", ["--week", "2026-11-31"], "week '2026-11-31'"),
    ("WeeklyRecsRange", ["--start", "2026-11-07", "--stop", "21/11/2026"], "stop '21/11/2026'")])
def test_a_week_that_is_no_date_is_refused_naming_its_parameter(task, flags, named, config_file, conn):
    """Luigi's own words (`day is out of range for month`) name no parameter."""
    refused = run_luigi(config_file, task, "--local-scheduler", *flags)

    assert refused.returncode == UNHANDLED
    assert f"ValueError: {named} is no date (YYYY-MM-DD, any day of the week): " in refused.stderr
    assert query(conn, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == [(0,)]


@pytest.mark.published_week
def test_a_week_that_has_not_begun_anywhere_is_refused_before_anything_is_staged(bot_api, config_file, conn):
    """A mistyped --week (2027 for 2026): live, it would make every week run until its Saturday a
    backfill, archived behind it, while the web service served it."""
    ahead = date.today() + timedelta(weeks=2)
    saturday = WeeklyRecs(week=ahead).week  # the week's, 8 to 14 days ahead
    before = live_state(conn), markers(conn)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(ahead), env=TELEGRAM_ENV)

    assert refused.returncode == TASK_FAILED
    assert f"ValueError: week {saturday} has not begun anywhere yet (it is " in refused.stderr
    assert ("UTC): live, it would make every week run until then a backfill, archived behind it. A mistyped --week? "
            "[pipeline] allow_future_weeks (--pipeline-allow-future-weeks) publishes it") in refused.stderr
    [text] = bot_api.texts()
    assert f"FAILED: CheckInputs for week {saturday}" in text and "has not begun anywhere yet" in text
    assert (live_state(conn), markers(conn)) == before
    assert query(conn, "SELECT tablename FROM pg_tables WHERE tablename LIKE %s", f"%{saturday:%Y%m%d}%") == []


@pytest.mark.published_week
def test_a_week_whose_ranking_fails_leaves_every_table_of_the_previous_week_live(settings, conn):
    before = live_state(conn)
    settings["pipeline"]["cat_features"] = '["als_score"]'  # CatBoost refuses float categories
    apply_settings(settings)

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "FAILED"

    assert live_state(conn) == before
    assert not any(m.startswith(("RankCandidates_2026_11_28", "WeeklyRecs_2026_11_28")) for m in markers(conn))
    assert query(conn, "SELECT DISTINCT week FROM candidates_train__staged_20261128") == [(NEXT_WEEK,)]


@pytest.mark.published_week
def test_stages_of_a_week_that_never_went_live_are_dropped_when_a_later_week_goes_live(settings, conn):
    settings["pipeline"]["cat_features"] = '["als_score"]'
    apply_settings(settings)
    run_tasks(WeeklyRecs(week=NEXT_WEEK))
    settings["pipeline"]["cat_features"] = '["category_id", "parent_id"]'
    apply_settings(settings)
    later = NEXT_WEEK.replace(day=5, month=12)

    assert run_tasks(WeeklyRecs(week=later)).name == "SUCCESS"

    tables = [name for (name,) in query(conn, "SELECT tablename FROM pg_tables WHERE tablename LIKE 'candidates_train%'"
                                              " ORDER BY 1")]
    assert tables == ["candidates_train", "candidates_train__20261121", "candidates_train__20261205"]  # no 11-28
    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"  # its rerun loads it again, to the archive
    assert query(conn, "SELECT DISTINCT week FROM candidates_train__20261128") == [(NEXT_WEEK,)]


@pytest.mark.published_week
def test_a_week_staged_whole_is_not_put_live_once_a_file_it_was_staged_from_is_replaced(
        settings, config_file, input_dir, conn):
    """The swap is the last place to see it: what went live would be the file of before, named as this week's."""
    assert run_tasks(RankCandidates(week=NEXT_WEEK), DefaultRecs(week=NEXT_WEEK),
                     OnlineRecs(week=NEXT_WEEK)).name == "SUCCESS"
    path = input_dir / "similar.parquet"
    pq.write_table(pq.read_table(path).slice(1), path)
    before = live_state(conn)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", NEXT_WEEK.isoformat())

    assert refused.returncode == TASK_FAILED
    assert f"ContractError: {path}: replaced after online_recs was staged from it for week {NEXT_WEEK}" in \
        refused.stderr
    assert live_state(conn) == before
