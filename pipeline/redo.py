"""Forget one week's markers, so that the next run redoes the week.

    python -m pipeline.redo 2026-11-21
    python -m pipeline.redo 2026-11-21 --from-events    (source = events) its files made again, from the events

The published tables stay as they are until the redo publishes; the redone week then takes the
name of the week's table, replacing the version it redoes.

With `source = events`, a rerun makes the week again from the files the stage made for it, so that
it is reproducible whatever events arrived since. Events that arrived late, with times before the
cutoff (an export that was short when the week ran), or `[events]` settings changed since, need those
files made again: `--from-events`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from psycopg2 import sql

from pipeline import config, db, publish
from pipeline.base import WeekTask
from pipeline.events.tasks import files_a_redo_remakes
from pipeline.load import CheckInputs
from pipeline.rank import TrainRanker, forget_scored_shards
from pipeline.wrapper import WeeklyRecs


def week_tasks(week: date) -> list[WeekTask]:
    weekly = WeeklyRecs(week=week)
    return [CheckInputs(week=week), *weekly.published(), TrainRanker(week=week), weekly]


def forget_week(week: date) -> int:
    """Delete the week's marker rows, its scoring shards' and its settling's too; returns how many
    there were."""
    tasks = week_tasks(week)
    update_ids = [task.task_id for task in tasks] + [WeeklyRecs(week=week).settled().update_id]
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DELETE FROM {} WHERE update_id = ANY(%s)").format(
            sql.Identifier(tasks[0].output().marker_table)), (update_ids,))
        forgotten = cur.rowcount + forget_scored_shards(cur, week)
        conn.commit()
        return forgotten


def week_made_here(week: date) -> bool:
    """Whether a table of the week is staged, live or archived in the database: a redo typed again, after
    its terminal lost the answer, finds no marker of a week that ran there."""
    with db.connection() as conn, conn.cursor() as cur:
        return any(publish.holds_week(cur, task.table, week) for task in WeeklyRecs(week=week).published())


def remove_files_made_from_events(week: date) -> list[Path]:
    """The events stage's files that the next run is to make again from the events as they are now."""
    removed = [Path(target.path) for target in files_a_redo_remakes(week) if target.exists()]
    for path in removed:
        path.unlink()
    return removed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.redo", description=__doc__.split("\n\n")[0])
    parser.add_argument("week", type=date.fromisoformat, help="any day of the week, YYYY-MM-DD")
    parser.add_argument("--from-events", action="store_true",
                        help="[pipeline] source = events: make the week's files again from the events, late ones too")
    args = parser.parse_args(argv)
    if args.from_events and config.pipeline().source != "events":
        parser.error("--from-events: [pipeline] source is files, whose weeks the modelling stage makes, not the "
                     "pipeline: put the corrected files in the week's folder and redo without it")
    week = WeeklyRecs(week=args.week).week
    forgotten = forget_week(week)  # first: with the database down, nothing has changed
    removed = remove_files_made_from_events(week) if args.from_events else []
    if not forgotten and not removed:
        if not week_made_here(week):  # the run would redo nothing
            sys.exit(f"week {week}: no marker and no table of it in {db.server()}: it has not run there (a mistyped "
                     "week? another database?); nothing to redo")
        print(f"week {week}: its markers were forgotten already; the next run redoes it")
        return
    made_again = f", {len(removed)} files of the events stage removed" if args.from_events else ""
    print(f"week {week}: {forgotten} markers forgotten{made_again}; the next run redoes it"
          + (" from the events" if args.from_events else ""))


if __name__ == "__main__":
    main()
