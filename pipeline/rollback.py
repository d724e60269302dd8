"""Put an archived week back live in all five published tables at once.

    python -m pipeline.rollback             the week before the live one
    python -m pipeline.rollback 2026-11-14  that week
    python -m pipeline.rollback --list      the weeks there are, with their row counts

One transaction, under the same locks as publishing and waiting for readers the same way: the web
service sees the live week or the restored one, whole, and never queues behind the swap. The week
that was live stays as its archive, so a second rollback (naming it) undoes the first. Staged weeks
that never went live are not offered.
"""

from __future__ import annotations

import argparse
import logging
from datetime import date

from pipeline import catalog, config, db, live_locks, notify, publish
from pipeline.wrapper import WeeklyRecs

log = logging.getLogger("luigi-interface")


class RollbackError(RuntimeError):
    """The week asked for is not whole in every table; nothing was changed."""


def this_week() -> WeeklyRecs:
    return WeeklyRecs(week=date.today())


def published_tables() -> list[str]:
    return this_week().live_names()


def available_weeks(cur, tables: list[str]) -> dict[date, dict[str, int | None]]:
    """Every live or archived week, newest first, with each table's rows (None: not there)."""
    weeks = {week for table in tables for week in publish.archived_weeks(cur, table)}
    weeks |= {week for table in tables if (week := publish.live_week(cur, table))}
    return {week: {table: _rows(cur, table, week) for table in tables} for week in sorted(weeks, reverse=True)}


def roll_back(week: date | None = None) -> tuple[date, date]:
    """Returns the week now live and the one it replaced: the same week twice when it was live already, as
    when a rollback is typed again after its terminal lost the answer."""
    tables = published_tables()
    with db.connection() as conn, conn.cursor() as cur:
        replaced, target = _target(cur, tables, week)
        if target == replaced:
            return target, replaced
        for table in tables:
            if note := publish.columns_changed(cur, table, publish.week_name(table, target)):
                log.warning("rollback to week %s: %s", target, note)
    what = f"rollback to week {target} not done"
    live_locks.prepare_to_attach({table: publish.week_name(table, target) for table in tables}, target, what)
    live_locks.when_unblocked(lambda: _put_live(tables, target), publish.swapped(tables, target), what)
    live_locks.after_the_swap(target, {
        "sampling the live names": lambda: live_locks.analyze_live_names(tables, target),
        "refreshing the materialized views over them": lambda: live_locks.refresh_materialized_views(tables, target)})
    return target, replaced


def _target(cur, tables: list[str], week: date | None) -> tuple[date, date]:
    """(the live week, the archived week to put back in its place): refused unless whole in every table;
    the live week twice when it is the week asked for."""
    current = _live_week(cur, tables)
    if week == current:
        return current, current
    archived = sorted(set.intersection(*(set(publish.archived_weeks(cur, table)) for table in tables)))
    target = week or _week_before(current, archived)
    if target is None or target not in archived:
        wanted = f"week {target}" if target else f"a week before {current}"
        raise RollbackError(f"{wanted} is not archived in all of {', '.join(tables)} "
                            f"(complete weeks: {', '.join(map(str, archived)) or 'none'}); nothing changed")
    for table in tables:
        for column, problem in publish.refused_changes(cur, table, catalog.table_columns(
                cur, publish.week_name(table, target))):
            raise RollbackError(f"{publish.week_name(table, target)}, column {column!r}: {problem}; nothing changed")
        for problem in publish.refused_swaps(cur, table):
            raise RollbackError(f"{problem}; nothing changed")
    return current, target


def _live_week(cur, tables: list[str]) -> date:
    live_weeks = {table: publish.live_week(cur, table) for table in tables}
    if not any(live_weeks.values()):
        raise RollbackError(f"no week has gone live in {db.server()}: nothing to roll back (another database?)")
    if len(live := set(live_weeks.values())) != 1:
        raise RollbackError("the published tables hold different weeks (" + ", ".join(
            f"{table} {week or 'none'}" for table, week in live_weeks.items()) + "); nothing changed")
    return live.pop()


def _week_before(current: date, archived: list[date]) -> date | None:
    """The week a rollback without a week puts back: refused where the live week is a rollback's already,
    since a rollback typed again (its terminal lost the answer) would go back one week more."""
    before = max((w for w in archived if w < current), default=None)
    if archived and archived[-1] > current:
        further = f" (python -m pipeline.rollback {before})" if before else ""
        raise RollbackError(f"week {current} is live by a rollback already, in place of week {archived[-1]}; "
                            f"name the week to go further back{further}; nothing changed")
    return before


def _put_live(tables: list[str], week: date) -> None:
    with db.connection() as conn, conn.cursor() as cur:
        publish.lock(cur, WeeklyRecs.table, *tables)
        if _target(cur, tables, week)[0] == week:  # still whole, now that no publish can change it: live already?
            return
        live_locks.bounded(cur)
        try:
            publish.roll_back(cur, tables, week)
        except ValueError as refused:  # a DBA's key or owner since `_target` looked (`publish.refuse_swaps`)
            raise RollbackError(f"{refused}; nothing changed") from None
        publish.grant_readers(cur, this_week().served_tables(), config.postgres().readers)
        conn.commit()


def _rows(cur, table: str, week: date) -> int | None:
    return publish.row_count(cur, publish.week_table(cur, table, week)) if publish.holds_week(cur, table, week) \
        else None


def print_weeks() -> None:
    """`--list`: the live and archived weeks, with each table's rows."""
    tables = published_tables()
    with db.connection() as conn, conn.cursor() as cur:
        live, weeks = publish.live_week(cur, tables[-1]), available_weeks(cur, tables)
    if not weeks:
        raise SystemExit(f"no week is live or archived in {db.server()} (another database?)")
    print("week        " + "".join(f"{table:>22}" for table in tables))
    for week, counts in weeks.items():
        cells = "".join(f"{'-' if rows is None else f'{rows:,}':>22}" for rows in counts.values())
        print(f"{week}  {cells}" + ("  (live)" if week == live else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.rollback", description=__doc__.splitlines()[0])
    parser.add_argument("week", nargs="?", type=date.fromisoformat, help="the week to restore (YYYY-MM-DD)")
    parser.add_argument("--list", action="store_true", help="show the weeks available and their row counts")
    args = parser.parse_args(argv)
    if args.list:
        print_weeks()
        return
    week = WeeklyRecs(week=args.week).week if args.week else None
    try:
        restored, replaced = roll_back(week)
    except (RollbackError, live_locks.LiveTablesBusy) as error:
        raise SystemExit(f"rollback refused: {error}") from None
    if restored == replaced:
        print(f"week {restored} is live already in {', '.join(published_tables())}; nothing changed")
        return
    print(f"week {restored} is live again in {', '.join(published_tables())}")
    notify.say_rolled_back(restored, replaced)


if __name__ == "__main__":
    main()
