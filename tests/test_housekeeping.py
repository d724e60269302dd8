"""Once a week is live, what no coming week reads goes, on disk as in the database: the models of
weeks whose ranking no table holds, and the events stage's files of the weeks before those the next
weeks learn from and may roll back to. What changed in the last day stays (a backfill may be making
it), and so does what the pipeline did not write: the shop keeps as much at ten years as at one."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from pipeline import config
from pipeline.wrapper import WeeklyRecs
from tests.conftest import NEXT_WEEK, WEEK, apply_settings, query, run_module, run_tasks


def as_if_written_days_ago(folder: Path, days: float = 2) -> None:
    then = time.time() - days * 24 * 3600
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (then, then))


def test_the_models_of_weeks_no_table_holds_go_once_their_archive_has_gone(settings, config_file, conn):
    settings["pipeline"]["retention"] = "1"
    apply_settings(settings, config_file)
    weeks = [WEEK - timedelta(weeks=1), WEEK, NEXT_WEEK]
    for week in weeks[:2]:
        assert run_tasks(WeeklyRecs(week=week)).name == "SUCCESS"
        as_if_written_days_ago(config.pipeline().week_model_dir(week))
    backfilling = config.pipeline().week_model_dir(WEEK - timedelta(weeks=10)) / "training-a-backfill"
    backfilling.mkdir(parents=True)

    assert run_tasks(WeeklyRecs(week=weeks[2])).name == "SUCCESS"

    assert query(conn, "SELECT week FROM ranker_models ORDER BY week") == [(weeks[1],), (weeks[2],)]
    assert backfilling.is_dir()  # changed in the last day: kept
    assert sorted(config.pipeline().week_model_dirs()) == [WEEK - timedelta(weeks=10), *weeks[1:]]
    assert run_module(config_file, "rollback").returncode == 0  # the archive's model, kept with it
    assert query(conn, "SELECT DISTINCT week FROM candidates_ranked") == [(weeks[1],)]


def test_a_backfill_keeps_house_for_nobody_and_the_next_live_week_does(settings, conn):
    settings["pipeline"]["retention"] = "1"
    apply_settings(settings)
    earlier = WEEK - timedelta(weeks=1)
    for week in (earlier, NEXT_WEEK):
        assert run_tasks(WeeklyRecs(week=week)).name == "SUCCESS"
        as_if_written_days_ago(config.pipeline().week_model_dir(week))

    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"  # a backfill: its archive takes the place of earlier's

    assert query(conn, "SELECT week FROM ranker_models ORDER BY week") == [(earlier,), (WEEK,), (NEXT_WEEK,)]
    later = NEXT_WEEK + timedelta(weeks=1)
    assert run_tasks(WeeklyRecs(week=later)).name == "SUCCESS"
    assert query(conn, "SELECT week FROM ranker_models ORDER BY week") == [(NEXT_WEEK,), (later,)]
    assert earlier not in config.pipeline().week_model_dirs()


def test_the_events_stage_keeps_the_files_of_the_weeks_the_next_learns_from_and_nothing_older(
        events_settings, conn):
    events_settings["pipeline"]["retention"] = "1"
    apply_settings(events_settings)
    week = [WEEK - timedelta(weeks=k) for k in range(4)]  # week[k]: k weeks before the shop's last
    assert run_tasks(WeeklyRecs(week=week[1])).name == "SUCCESS"  # made the two train weeks before it too
    folders = config.pipeline().week_input_dirs()
    assert sorted(folders) == [week[3], week[2], week[1]]
    (folders[week[3]] / "notes.txt").write_text("an analyst's")
    for folder in folders.values():
        as_if_written_days_ago(folder)

    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"

    # WEEK learnt from the two weeks before it (train_weeks 2), which the week after needs one of
    assert sorted(config.pipeline().week_input_dirs()) == [week[3], week[2], week[1], WEEK]
    assert [path.name for path in folders[week[3]].iterdir()] == ["notes.txt"]
    assert (folders[week[2]] / "outcomes.parquet").exists()
    assert query(conn, "SELECT DISTINCT outcome_week FROM candidates_train ORDER BY 1") == [(week[2],), (week[1],)]
