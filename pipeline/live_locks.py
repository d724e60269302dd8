"""Taking the live names without making their readers wait.

Swapping a week in needs an exclusive lock on each live name for a moment. While a reader (an
analyst's open transaction, a long report) holds one, the lock cannot be had; and while the
swap waits in the lock queue, every reader that comes after it waits behind it. So each attempt
waits at most `[pipeline] lock_timeout`, then gives up its place, backs off and tries again, for
up to `[pipeline] publish_wait`: readers queue for a fraction of a second at worst, and the week
goes live within seconds of the blocker's end. Past the wait the publish fails, naming the blocker.
Nor is an attempt made while a session has held a table since a `lock_timeout` ago: that one will
not end within the attempt, and the readers would queue behind the attempt for nothing.

A hot standby replays that exclusive lock, and its replay does not back off: it waits for the
standby's readers (up to `max_standby_streaming_delay`, 30 s by default, then cancels them), and
every read there queues behind it. So with `[postgres] standbys` an attempt is made only when no
session on a standby holds what it locks exclusively; the primary cannot see a standby's locks.
Even a short request there is waited for: the replay takes the live names one at a time, and a
request that holds one and asks for another the replay has taken (it reads them in another order
than the web service's, `publish._lock_live_names`) is a deadlock the standby ends by cancelling
the request, after `deadlock_timeout`. A standby busy at every moment keeps the week staged until
`publish_wait`, the requests named.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import TypeVar

import psycopg2.errors
import tenacity
from psycopg2 import sql

from pipeline import catalog, config, db, publish

log = logging.getLogger("luigi-interface")
T = TypeVar("T")


class LiveTablesBusy(RuntimeError):
    """The live names (or a stage a rerun replaces) stayed held past `[pipeline] publish_wait`; nothing was changed."""


class _Held(Exception):
    """A session holds what the attempt would lock exclusively, on a standby or for a while: it waits, as for a lock."""


@dataclass(frozen=True)
class Blocker:
    """A session holding a lock on a live name (or its live partition), on the primary or a standby."""

    pid: int
    application: str
    state: str | None
    transaction_s: float | None
    idle_s: float | None  # since it went idle in its transaction, if it is
    relation: str
    transaction: str  # its virtual transaction: the same one seen twice has held the table all along
    standby: str = ""  # its address in `[postgres] standbys`; "" on the primary

    def __str__(self) -> str:
        state = self.state or "state hidden: grant pg_read_all_stats to see it"
        held = f", transaction open {self.transaction_s:.0f} s" if self.transaction_s is not None else ""
        where = f" on standby {self.standby}" if self.standby else ""
        return (f"pid {self.pid} ({self.application or 'no application_name'}, {state}{held}) holding "
                f"{self.relation}{where}")


def bounded(cur, seconds: float | None = None) -> None:
    """Every lock this transaction waits for from now on, it waits for at most `seconds`, by default
    `lock_timeout`."""
    seconds = config.pipeline().lock_timeout if seconds is None else seconds
    cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{round(seconds * 1000)}ms",))


def when_unblocked(work: Callable[[], T], tables: Iterable[str], what: str,
                   report: Callable[[str], None] = log.info, held: str = "the live tables",
                   exclusive: Iterable[str] | None = None, own_session: int | None = None) -> T:
    """Run `work` (one transaction, or a savepoint, that takes its locks under `bounded`) until it
    gets them, each attempt once no session on a standby holds what `work` locks exclusively
    (`exclusive`; by default all of `tables`), nor one on the primary since a `lock_timeout` ago.

    `report` is told, between attempts, who holds the tables; `what` names the change for errors,
    `held` the tables; `own_session` is the pid of the caller's open session, if any, whose locks
    never hold up its own attempts.
    """
    settings, tables = config.pipeline(), list(tables)
    exclusive = tables if exclusive is None else list(exclusive)
    not_ours_to_end: set[tuple[str, int]] = set()  # (standby, pid)

    def waiting(state: tenacity.RetryCallState) -> None:
        holders = blockers(tables)
        if settings.terminate_idle_blockers:
            holders = [holder for holder in holders if not _terminated_if_idle(holder, not_ours_to_end)]
        report(f"waiting {state.seconds_since_start:.0f} s of {settings.publish_wait:.0f} s for {held}: "
               + _named(holders, "their holder has just ended"))

    def attempt() -> T:
        if _held_for_a_while(exclusive, own_session) or standby_blockers(exclusive):
            raise _Held
        return work()

    attempts = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((psycopg2.errors.LockNotAvailable, _Held)),
        stop=tenacity.stop_after_delay(settings.publish_wait),
        wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1), before_sleep=waiting)
    try:
        return attempts(attempt)
    except tenacity.RetryError:
        holders = _named(blockers(tables), "sessions that have just ended")
        raise LiveTablesBusy(f"{what}: {held} stayed held for more than {settings.publish_wait:.0f} s "
                             f"([pipeline] publish_wait) by {holders}; nothing was changed, rerun to publish") from None


def dropped_when_unheld(cur, name: str, what: str, report: Callable[[str], None] = log.info) -> None:
    """Drop `name` if it exists, in the caller's transaction, waiting for whoever holds it as a publish
    waits for the live names. A rerun replaces the stage its week left, and someone may be looking
    at that stage (what did the failed week hold?): waiting for them unbounded, the week would hang
    without a word for as long as their transaction stays open.

    Between attempts the caller's transaction is idle for up to 2 s, which a DBA's
    `idle_in_transaction_session_timeout` would end the week for: it is lifted for the wait."""
    cur.execute("SELECT current_setting('lock_timeout'), current_setting('idle_in_transaction_session_timeout')")
    own = cur.fetchone()
    cur.execute("SELECT set_config('idle_in_transaction_session_timeout', '0', true)")

    def attempt() -> None:
        with _undone_if_refused(cur):
            bounded(cur)
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))

    when_unblocked(attempt, [name], what, report, held=name, own_session=cur.connection.get_backend_pid())
    cur.execute("SELECT set_config('lock_timeout', %s, true), set_config('idle_in_transaction_session_timeout', %s,"
                " true)", own)


def prepare_to_attach(attaching: dict[str, str], week: date, what: str,
                      report: Callable[[str], None] = log.info) -> None:
    """Each table to attach (live name: table) made ready before the swap, so that the swap only
    changes the catalog (`publish.prepare_to_attach`): each in a transaction of its own, and a DBA's
    foreign keys checked in one more, so that the table they reference is kept from its writers for
    the moment of adding them, never for the check. Then its statistics, so that the web service's
    first query of the week is planned on the week's own figures, not on PostgreSQL's guesses for
    a table it has never sampled.

    Adding a foreign key waits for the referenced table's writers, and while it waits, every writer
    that comes after queues behind it: so it waits as the swap does, in bounded attempts (`what`
    names the change for errors, `report` is told who holds the tables), and a long import into
    the shop's catalogue never holds up the shop's other writes to it."""
    with db.connection() as conn, conn.cursor() as cur:
        for table, name in attaching.items():
            locked = [name, *catalog.referenced(cur, table)]  # only `name` exclusively
            when_unblocked(functools.partial(_made_ready, conn, table, name, week), locked, what, report,
                           held=" and ".join(locked), exclusive=[name], own_session=conn.get_backend_pid())


def _made_ready(conn, table: str, name: str, week: date) -> None:
    """`name` made ready, unless another run of the week puts it live first (renaming it), before
    this attempt or while it waits for a lock."""
    with conn.cursor() as cur:
        try:
            bounded(cur)
            publish.prepare_to_attach(cur, table, name, week)
            conn.commit()
            bounded(cur)
            publish.validate(cur, name)
            publish.analyze(cur, name)
            conn.commit()
        except psycopg2.errors.LockNotAvailable:
            conn.rollback()
            raise
        except psycopg2.errors.UndefinedTable:
            conn.rollback()
            if catalog.exists(cur, name):  # something else is missing
                raise


def after_the_swap(week: date, steps: dict[str, Callable[[], object]],
                   report: Callable[[str], None] = log.info) -> list[str]:
    """Run what follows the swap of `week`, step by step, and return the steps that failed; `report`
    is told each step as it starts (the visualizer shows why a live week's run goes on: a refresh
    waiting for a `VACUUM`).

    The week is live once the swap commits: a step after it that fails (the connection lost, the
    server restarting) must not report the week failed, nor stop the steps after it. Each one is
    named in a warning, and a rerun of the week (`WeeklyRecs.settle`) or the next publish does it
    again: each step samples, refreshes, drops and keeps house for what it finds, not for what one
    week left."""
    failed = []
    for step, run in steps.items():
        report(f"week {week} is live; {step}")
        try:
            run()
        except (psycopg2.Error, OSError) as error:
            why = db.redact(db.described(error), config.postgres().resolved_password())
            log.warning("week %s is live, but %s failed, for a rerun or the next publish to do: %s", week, step,
                        why)
            failed.append(f"{step} ({why})")
    return failed


def analyze_live_names(tables: Iterable[str], week: date) -> None:
    """After the swap, the statistics of each live name that now holds `week` (`publish.analyze`),
    each in a transaction of its own. A name held by what conflicts with sampling it (a DBA's
    `VACUUM`, another `ANALYZE`) keeps its former statistics until a later publish, with a warning:
    the week is live, and its partition has its own."""
    with db.connection() as conn, conn.cursor() as cur:
        for table in tables:
            if publish.live_week(cur, table) != week:  # a backfill: the live week has not changed
                continue
            try:
                bounded(cur)
                publish.analyze(cur, table)
                conn.commit()
            except psycopg2.errors.LockNotAvailable as refused:
                conn.rollback()
                log.warning("%s keeps the statistics of its former week until a later publish: %s", table,
                            _why_kept(table, refused))


def refresh_materialized_views(tables: Iterable[str], week: date) -> list[str]:
    """After the swap, the DBA's materialized views over the live names that now hold `week`, each
    refreshed `CONCURRENTLY` in a transaction of its own: their readers read the former rows until it
    commits, and never wait for it (it locks out writers, of which a materialized view has none).
    Otherwise a view the web service reads would serve the first week it was made on, every week
    after, and say nothing. What cannot be refreshed so is left as it is, and named with why, as
    notes for the success message.

    Its lock is one no reader's conflicts with, so it waits for maintenance on the view as long as a
    publish waits (`publish_wait`, at least a `lock_timeout`), holding up no one: autovacuum, often
    at work on a view the last refresh changed, gives way to it after the server's
    `deadlock_timeout`, and a DBA's `VACUUM` is waited out. Given up after a `lock_timeout`, the
    view would serve the former week until the next."""
    with db.connection() as conn, conn.cursor() as cur:
        live = [table for table in tables if publish.live_week(cur, table) == week]  # not a backfill
        views = dict.fromkeys(view for table in live for view in catalog.materialized_views_over(cur, table))
        notes = [f"materialized view {view} still holds the rows of before week {week}: {why}"
                 for view, concurrently in views if (why := _not_refreshed(conn, view, concurrently))]
    for note in notes:
        log.warning("%s", note)
    return notes


def _not_refreshed(conn, view: str, concurrently: bool) -> str | None:
    """Why `view` could not be refreshed concurrently; None once it is."""
    if not concurrently:
        return ("without a unique index it cannot be refreshed CONCURRENTLY, and a refresh would lock out its "
                f"readers (give it one, or REFRESH MATERIALIZED VIEW {view} when it suits them)")
    with conn.cursor() as cur:
        try:
            settings = config.pipeline()
            bounded(cur, max(settings.publish_wait, settings.lock_timeout))  # PostgreSQL's 0: no limit
            log.info("refreshing materialized view %s", view)  # as regclass prints it: quoted, qualified where need be
            cur.execute(sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {}").format(sql.SQL(view)))
            conn.commit()
        except psycopg2.errors.InsufficientPrivilege:
            conn.rollback()
            return f"the pipeline's role may not refresh it ({_grant_to_refresh(cur, view)})"
        except psycopg2.Error as refused:
            conn.rollback()
            return _why_kept(view, refused)
    return None


def _grant_to_refresh(cur, view: str) -> str:
    """What lets the pipeline's role refresh `view`: `MAINTAIN` on it since PostgreSQL 17; before
    that, only its owner's rights refresh it, which membership in the owner's role gives."""
    role = catalog.current_role(cur)
    if catalog.server_has(cur.connection.server_version, "MAINTAIN"):
        return f"GRANT MAINTAIN ON {view} TO {role}, PostgreSQL 17 and later; or its owner refreshes it"
    cur.execute("SELECT quote_ident(pg_get_userbyid(relowner)) FROM pg_class WHERE oid = %s::regclass", (view,))
    (owner,) = cur.fetchone()
    return f"GRANT {owner} TO {role}: before PostgreSQL 17 only its owner's rights refresh it; or {owner} refreshes it"


def drop_obsolete(lock_names: Iterable[str], tables: Iterable[str], week: date, retention: int) -> None:
    """What `week` going live left behind (`publish.obsolete`) goes after the swap, not in it.

    An analyst may be reading an old archive or a stage: dropping it in the swap would hold up the
    week, and every attempt would keep the live names locked while it waited. So a table someone
    holds stays, with a warning naming them, and a later publish drops it; so does one the pipeline
    may no longer drop (a DBA made it another role's), which would otherwise fail every week.
    """
    with db.connection() as conn, conn.cursor() as cur:
        publish.lock(cur, *lock_names)  # no rollback puts an archive live while it is being dropped
        bounded(cur)
        for name in [name for table in tables for name in publish.obsolete(cur, table, week, retention)]:
            if elsewhere := standby_blockers([name]):
                _kept(name, _named(elsewhere))
                continue
            try:
                with _undone_if_refused(cur):
                    publish.drop_unless_built_on(cur, name)
            except psycopg2.Error as refused:  # held by a reader, or no longer the pipeline's to drop
                _kept(name, _why_kept(name, refused))
        conn.commit()


def _kept(name: str, why: str) -> None:
    log.warning("%s is no longer needed but kept until a later publish: %s", name, why)


@contextmanager
def _undone_if_refused(cur) -> Iterator[None]:
    """A savepoint: what the block did is undone if PostgreSQL refuses any of it, and the caller's
    transaction goes on."""
    cur.execute("SAVEPOINT attempt")
    try:
        yield
    except psycopg2.Error:
        cur.execute("ROLLBACK TO SAVEPOINT attempt")
        raise
    cur.execute("RELEASE SAVEPOINT attempt")


def _why_kept(name: str, refused: psycopg2.Error) -> str:
    if isinstance(refused, psycopg2.errors.LockNotAvailable):
        return _named(blockers([name]), "its holder has just ended")
    return db.first_line(refused)


def _named(holders: list[Blocker], when_none: str = "") -> str:
    """The holders for a message, or `when_none`: a holder seen a moment ago may have ended since."""
    return "; ".join(map(str, holders)) or when_none


def blockers(tables: list[str]) -> list[Blocker]:
    """Other sessions holding a lock on the tables, on what is attached to them, or on a table a
    foreign key of theirs references (a DBA's: attaching and detaching lock that table too): on
    the primary, and on each of `[postgres] standbys`."""
    with db.connection() as conn:
        return _holding(conn, tables) + standby_blockers(tables)


def standby_blockers(tables: list[str]) -> list[Blocker]:
    """`blockers` on the standbys alone. A standby that cannot be reached holds nothing up (said once
    a run): it has no readers, or it will replay the change late, not block it."""
    found = []
    for address, standby in db.standbys().items():
        try:
            with db.connection(standby) as conn:
                found += [dataclasses.replace(holder, standby=address) for holder in _holding(conn, tables)]
        except ConnectionError as unreachable:
            if address not in _UNREACHABLE:
                _UNREACHABLE.add(address)
                log.warning("[postgres] standbys: not waiting for readers on %s: %s", address, unreachable)
    return found


_UNREACHABLE: set[str] = set()


def _held_for_a_while(tables: list[str], own_session: int | None) -> bool:
    """Whether a session on the primary holds one of `tables` in the same transaction now as a
    `lock_timeout` ago. Most holders are the web service's reads, which end in a moment: seen once,
    such a session is looked at again before an attempt is made, not waited for. With `lock_timeout`
    0 an attempt waits for its locks as long as it takes, and is made at once."""
    wait = config.pipeline().lock_timeout
    if not wait:
        return False
    with db.connection(autocommit=True) as conn:  # each look a fresh snapshot of the sessions
        holding = {holder.transaction for holder in _holding(conn, tables) if holder.pid != own_session}
        if not holding:
            return False
        time.sleep(wait)
        return not holding.isdisjoint(holder.transaction for holder in _holding(conn, tables))


def _holding(conn, tables: list[str]) -> list[Blocker]:
    with conn.cursor() as cur:
        cur.execute(
            "WITH named AS (SELECT to_regclass(quote_ident(name)) AS oid FROM unnest(%s::text[]) name),"
            " held AS (SELECT oid FROM named"
            "  UNION SELECT inhrelid FROM pg_inherits WHERE inhparent IN (SELECT oid FROM named))"
            " SELECT DISTINCT ON (l.pid) l.pid, coalesce(a.application_name, ''), a.state,"
            "  greatest(extract(epoch FROM now() - a.xact_start)::float8, 0),"  # begun since this look began
            "  CASE WHEN a.state LIKE 'idle in transaction%%'"
            "  THEN greatest(extract(epoch FROM now() - a.state_change)::float8, 0) END, l.relation::regclass::text,"
            "  l.virtualtransaction"
            " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.granted AND l.pid <> pg_backend_pid() AND a.backend_type IS DISTINCT FROM 'startup'"
            " AND l.relation IN (SELECT oid FROM held"
            "  UNION SELECT confrelid FROM pg_constraint WHERE contype = 'f' AND conrelid IN (SELECT oid FROM held))"
            " ORDER BY l.pid, l.relation::regclass::text", (tables,))
        return [Blocker(*row) for row in cur.fetchall()]


def _terminated_if_idle(holder: Blocker, not_ours_to_end: set[tuple[str, int]]) -> bool:
    """`[pipeline] terminate_idle_blockers`: a session idle in its transaction holds its locks and does nothing.

    Only one idle for `idle_blocker_seconds` is ended: a web service that holds each request in a
    transaction (SQLAlchemy's session, Django's ATOMIC_REQUESTS), a report between its queries or a
    backup between its tables is idle in its transaction for moments, and is waited for.

    A session of another role the pipeline's role may not end (no `pg_signal_backend`) is waited
    for as without the setting, and said so once: the week may still go live when it ends.
    """
    forgotten = holder.idle_s is not None and holder.idle_s >= config.pipeline().idle_blocker_seconds
    if not forgotten or (holder.standby, holder.pid) in not_ours_to_end:
        return False
    try:
        with db.connection(db.standbys().get(holder.standby)) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (holder.pid,))
            (done,) = cur.fetchone()
    except psycopg2.errors.InsufficientPrivilege as denied:
        not_ours_to_end.add((holder.standby, holder.pid))
        log.warning("[pipeline] terminate_idle_blockers: cannot end %s (%s: grant the pipeline's role "
                    "pg_signal_backend); waiting for it instead", holder, db.first_line(denied))
        return False
    log.warning("terminated %s: idle in its transaction ([pipeline] terminate_idle_blockers)", holder)
    return done
