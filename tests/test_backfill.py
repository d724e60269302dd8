"""WeeklyRecsRange: missed weeks are run, each from its own inputs, and done weeks are skipped."""

from __future__ import annotations

from datetime import date

from pipeline.backfill import weeks_between
from pipeline.sample_data import write_sample_week
from tests.conftest import apply_settings, query, run_luigi

USERS = {"2026-11-07": 200, "2026-11-14": 250, "2026-11-21": 300}


def test_weeks_between_counts_saturdays_inclusively_without_a_days_back_limit():
    weeks = weeks_between(date(2025, 11, 22), date(2026, 11, 21))

    assert len(weeks) == 53 and weeks[0] == date(2025, 11, 22) and weeks[-1] == date(2026, 11, 21)


def test_three_missed_weeks_are_published_each_from_its_own_files_then_skipped(settings, config_file, tmp_path,
                                                                                 conn):
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
    second = run_luigi(config_file, *backfill)
    assert second.returncode == 0
    assert "ran successfully" not in second.stderr and "complete ones were encountered" in second.stderr
