"""What a week that went live leaves behind and no coming week reads, on disk and in the database.

Tables are `live_locks.drop_obsolete`'s. Here: the models of weeks whose ranking is no longer held
(neither live, archived nor staged), in `ranker_models` and under `[pipeline] model_dir`, and, with
`source = events`, the stage's files of the weeks before those the next weeks learn from and may
roll back to. So what the shop keeps stays the same from one year to the next, however old it is.
A week that was a backfill (not the live one) keeps house for nobody: the live week's run does. As
for tables, what cannot be removed stays, with a warning, and never fails the week.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from datetime import date, timedelta
from pathlib import Path

from psycopg2 import sql

from pipeline import catalog, config, db, publish
from pipeline.events.tasks import stage_files
from pipeline.rank import RankCandidates, TrainRanker

log = logging.getLogger("luigi-interface")
QUIET_S = 24 * 3600  # a folder changed more recently may be a backfill's, still being made


def after_going_live(week: date) -> None:
    """`WeeklyRecs`'s last step, once `week` is live and its tables' leftovers are dropped."""
    settings = config.pipeline()
    held = forget_models_not_held(week)
    if held is None:
        return
    for old, folder in settings.week_model_dirs().items():
        if old < week and old not in held and _quiet(folder):
            _remove(folder)
    if settings.source == "events":
        removed = remove_stage_files_before(week - timedelta(weeks=max(config.events().train_weeks,
                                                                         settings.retention)))
        if removed:
            log.info("removed the events stage's files of %s: no coming week reads them", ", ".join(map(str, removed)))


def forget_models_not_held(live: date) -> set[date] | None:
    """Delete the model rows of weeks before `live` whose ranking no table holds; returns the weeks
    held, or None when `live` is not the live week (a backfill). Each week under its `TrainRanker`'s
    lock, so that a backfill storing that week's model meanwhile is not undone."""
    ranked, models = RankCandidates(week=live).table, TrainRanker(week=live).table
    with db.connection() as conn, conn.cursor() as cur:
        if publish.live_week(cur, ranked) != live:
            return None
        held = {live, *publish.archived_weeks(cur, ranked), *publish.staged_weeks(cur, ranked)}
        if catalog.exists(cur, models):
            cur.execute(sql.SQL("SELECT week FROM {} WHERE week < %s AND week <> ALL(%s) ORDER BY week").format(
                sql.Identifier(models)), (live, sorted(held)))
            for (old,) in cur.fetchall():
                publish.lock(cur, TrainRanker(week=old).task_id)
                if not publish.holds_week(cur, ranked, old):
                    cur.execute(sql.SQL("DELETE FROM {} WHERE week = %s").format(sql.Identifier(models)), (old,))
        conn.commit()
    return held


def remove_stage_files_before(oldest_kept: date) -> list[date]:
    """The events stage's files of each week before `oldest_kept`, and its folder once empty
    (anything else in it stays). A folder changed in the last `QUIET_S` stays too."""
    removed = []
    for week, folder in sorted(config.pipeline().week_input_dirs().items()):
        if week < oldest_kept and _quiet(folder):
            for target in stage_files(week):
                if target.exists():
                    _remove(Path(target.path))
            if not any(folder.iterdir()):
                _remove(folder)
            removed.append(week)
    return removed


def _quiet(folder: Path) -> bool:
    """Nothing in `folder` changed for `QUIET_S`."""
    since = time.time() - QUIET_S
    return all(os.stat(os.path.join(where, name)).st_mtime < since
               for where, _, names in os.walk(folder) for name in [".", *names])


def _remove(path: Path) -> None:
    """Gone, or kept with a warning: what the pipeline may not remove never fails the week."""
    try:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    except OSError as error:
        log.warning("%s is no longer needed but kept: %s", path, error.strerror or error)
