"""Forget one week's markers, so that the next run redoes the week.

    python -m pipeline.redo 2026-11-21

The published tables stay as they are until the redo publishes; the redone week then takes the
name of the week's table, replacing the version it redoes.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date

from psycopg2 import sql

from pipeline import db
from pipeline.base import WeekTask
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m pipeline.redo", description=__doc__.split("\n\n")[0])
    parser.add_argument("week", type=date.fromisoformat, help="any day of the week, YYYY-MM-DD")
    week = WeeklyRecs(week=parser.parse_args().week).week
    if not (forgotten := forget_week(week)):  # a mistyped week, or another database: the run would redo nothing
        sys.exit(f"week {week}: no markers to forget in {db.server()}: it has not run there, or was forgotten "
                 "already; nothing to redo")
    print(f"week {week}: {forgotten} markers forgotten; the next run redoes it")
