"""WeeklyRecsRange: missed weeks are run, each from its own inputs, and done weeks are skipped."""

from __future__ import annotations

from datetime import date

from pipeline.backfill import weeks_between
from pipeline.sample_data import write_sample_week
from tests.conftest import SCHEDULING_FAILED, TASK_FAILED, TELEGRAM_ENV, apply_settings, query, run_luigi

USERS = {"2026-11-07": 200, "2026-11-14": 250, "2026-11-21": 300}


def test_weeks_between_counts_saturdays_inclusively_without_a_days_back_limit():
    weeks = weeks_between(date(2025, 11, 22), date(2026, 11, 21))

    assert len(weeks) == 53 and weeks[0] == date(2025, 11, 22) and weeks[-1] == date(2026, 11, 21)


def test_a_range_whose_stop_is_before_its_start_is_refused_naming_both(bot_api, config_file, conn):
    """Swapped dates: no week is between them, and the range was complete, saying all was well."""
    refused = run_luigi(config_file, "WeeklyRecsRange", "--local-scheduler", "--start", "2026-11-21",
                        "--stop", "2026-10-31", env=TELEGRAM_ENV)

    assert refused.returncode == SCHEDULING_FAILED
    said = "WeeklyRecsRange: --stop 2026-10-31 is before --start 2026-11-21, so no week is between them (swapped?)"
    assert f"ValueError: {said}" in refused.stderr
    [text] = bot_api.texts()
    assert text.startswith("weekly-recs FAILED: WeeklyRecsRange(start=2026-11-21, stop=2026-10-31)\n") and said in text
    assert query(conn, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == [(0,)]


def test_three_missed_weeks_go_live_in_turn_oldest_first_each_from_its_own_files_then_are_skipped(
        settings, config_file, tmp_path, conn):
    for week, users in USERS.items():
        write_sample_week(tmp_path / "exports" / week, seed=users, users=users)
    settings["pipeline"]["input_dir"] = str(tmp_path / "exports" / "{week}")
    apply_settings(settings, config_file)
    backfill = ("WeeklyRecsRange", "--local-scheduler", "--start", "2026-11-09", "--stop", "2026-11-24")

    first = run_luigi(config_file, *backfill)

    assert first.returncode == 0, first.stderr[-2000:]
    assert query(conn, "SELECT count(*) FROM candidates_ranked") == [(300 * 20,)]
    assert query(conn, "SELECT count(*) FROM candidates_ranked__20261114") == [(250 * 20,)]
    assert query(conn, "SELECT count(*) FROM candidates_ranked__20261107") == [(200 * 20,)]
    settled = query(conn, "SELECT update_id FROM table_updates WHERE update_id LIKE 'WeeklyRecs%%settled'"
                          " ORDER BY inserted")
    assert [update_id[11:21] for (update_id,) in settled] == ["2026_11_07", "2026_11_14", "2026_11_21"]
    second = run_luigi(config_file, *backfill)
    assert second.returncode == 0
    assert "ran successfully" not in second.stderr and "complete ones were encountered" in second.stderr


def test_a_missed_week_that_fails_stops_the_weeks_after_it_and_the_rerun_goes_on_from_it(settings, config_file,
                                                                                          tmp_path, conn):
    for week, users in USERS.items():
        write_sample_week(tmp_path / "exports" / week, seed=users, users=users)
    (tmp_path / "exports" / "2026-11-14" / "similar.parquet").unlink()
    settings["pipeline"]["input_dir"] = str(tmp_path / "exports" / "{week}")
    apply_settings(settings, config_file)
    backfill = ("WeeklyRecsRange", "--local-scheduler", "--start", "2026-11-07", "--stop", "2026-11-21")

    failed = run_luigi(config_file, *backfill)

    assert failed.returncode == TASK_FAILED
    assert "similar.parquet" in failed.stderr and "CheckInputs(week=2026-11-21)" not in failed.stderr
    assert query(conn, "SELECT DISTINCT week FROM candidates_ranked") == [(date(2026, 11, 7),)]
    write_sample_week(tmp_path / "exports" / "2026-11-14", seed=250, users=250)
    assert run_luigi(config_file, *backfill).returncode == 0
    assert query(conn, "SELECT DISTINCT week FROM candidates_ranked") == [(date(2026, 11, 21),)]
