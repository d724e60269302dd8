"""Publishing: each table of a week is staged, then all of the week's tables go live together.

The names a table takes, for `default_recs`:

    default_recs                    the live week, which the web service reads (week in its comment)
    default_recs__20261114          an archived week, kept for rollback (the last `retention` of them)
    default_recs__staged_20261121   a week loaded and indexed but not live: not an archive, never
                                    rolled back to, dropped once that week or a later one goes live

Every function here runs inside the caller's transaction, so a failure or a `kill -9` at any
point leaves the live tables, their comments and the archives exactly as they were.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from datetime import date, datetime

from psycopg2 import sql

_ARCHIVE = re.compile(r"__(\d{8})$")
_STAGED = re.compile(r"__staged_(\d{8})$")


def lock(cur, *names: str) -> None:
    """One writer per name across processes and hosts, until the transaction ends (sorted: no deadlock)."""
    for name in sorted(set(names)):
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(name.encode()),))


def archive_name(table: str, week: date) -> str:
    return f"{table}__{week:%Y%m%d}"


def staged_name(table: str, week: date) -> str:
    return f"{table}__staged_{week:%Y%m%d}"


def exists(cur, table: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{table}"',))
    return cur.fetchone()[0]


def live_week(cur, table: str) -> date | None:
    """The week a live table holds, kept in its comment."""
    cur.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (f'"{table}"',))
    (comment,) = cur.fetchone()
    return date.fromisoformat(comment.removeprefix("week=")) if comment else None


def week_table(cur, table: str, week: date) -> str:
    """The physical table that holds `week` of `table`: staged, live or archived."""
    if exists(cur, staged_name(table, week)):
        return staged_name(table, week)
    if live_week(cur, table) == week:
        return table
    if exists(cur, archive_name(table, week)):
        return archive_name(table, week)
    raise LookupError(f"{table}: week {week} is neither staged, live nor archived")


def holds_week(cur, table: str, week: date) -> bool:
    try:
        week_table(cur, table, week)
    except LookupError:
        return False
    return True


def stage(cur, table: str, week: date, columns: sql.Composable) -> str:
    """A fresh staging table for the week, replacing one a forgotten run left."""
    staged = staged_name(table, week)
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(staged)))
    cur.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(staged), columns))
    return staged


def go_live(cur, tables: Iterable[str], week: date, retention: int) -> None:
    """Swap the week's staged tables in together; a week older than the live one goes to its archive.

    The caller holds the tables' locks. A table whose stage is missing fails the whole swap.
    """
    tables = list(tables)
    missing = [table for table in tables if not exists(cur, staged_name(table, week))]
    if missing:
        raise LookupError(f"week {week} cannot go live: not staged in {', '.join(missing)}")
    for table in tables:
        current = live_week(cur, table)
        if current is not None and week < current:
            _rename(cur, staged_name(table, week), archive_name(table, week))
            continue
        if current is not None:
            _rename(cur, table, archive_name(table, current))
        _rename(cur, staged_name(table, week), table)
        _comment(cur, table, week)
        _drop_stale_stages(cur, table, week)
    for table in tables:
        for expired in archived_weeks(cur, table)[retention:]:
            cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(archive_name(table, expired))))


def roll_back(cur, tables: Iterable[str], week: date) -> None:
    """Put the archived `week` live in every table, each live week going back to its archive."""
    for table in tables:
        current = live_week(cur, table)
        if current is not None:
            _rename(cur, table, archive_name(table, current))
        _rename(cur, archive_name(table, week), table)
        _comment(cur, table, week)


def archived_weeks(cur, table: str) -> list[date]:
    """Newest first; staged weeks are not archives."""
    return sorted((_week(match) for match in _matches(cur, table, _ARCHIVE)), reverse=True)


def staged_weeks(cur, table: str) -> list[date]:
    return sorted(_week(match) for match in _matches(cur, table, _STAGED))


def row_count(cur, table: str) -> int:
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    return cur.fetchone()[0]


def _matches(cur, table: str, pattern: re.Pattern) -> list[re.Match]:
    cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                " AND starts_with(tablename, %s)", (f"{table}__",))
    return [m for (name,) in cur.fetchall() if (m := pattern.fullmatch(name.removeprefix(table)))]


def _week(match: re.Match) -> date:
    return datetime.strptime(match.group(1), "%Y%m%d").date()


def _drop_stale_stages(cur, table: str, live: date) -> None:
    """Weeks staged before the one that just went live will never go live: they are not archives."""
    for week in staged_weeks(cur, table):
        if week < live:
            cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(staged_name(table, week))))


def _rename(cur, table: str, new_name: str) -> None:
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(new_name)))
    cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(table), sql.Identifier(new_name)))


def _comment(cur, table: str, week: date) -> None:
    cur.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
        sql.Identifier(table), sql.Literal(f"week={week.isoformat()}")))
