"""Publishing: each table of a week is staged, then all of the week's tables go live together.

The names a table takes, for `default_recs`:

    default_recs                    the live name the web service reads: a partitioned table that
                                    keeps its identity (grants, views, functions on it) for ever;
                                    the week's table attached to it is the live week (beside
                                    any partition a DBA attached, which stays)
    default_recs__20261121          a week's table: attached while the week is live, an archive
                                    for rollback otherwise (the last `retention` of them are kept)
    default_recs__staged_20261128   a week loaded and indexed but not live: not an archive, never
                                    rolled back to, dropped once that week or a later one goes live
    default_recs__20261121_replaced_1  a version of the week a redo replaced, kept while someone
                                    has built on it, dropped by a later publish once nobody has

A week goes live by detaching the live partition and attaching the week's table: two catalog
changes, whatever the table's size. Every staged table carries `CHECK (week = ...)`, so attaching
it scans nothing. The parent takes the week's columns (added, dropped or retyped) while nothing is
attached; a change that an object depending on the live name would not survive is refused before
anything is staged (`refused_changes`). What a week leaves behind, archives past `retention` and
stages that will never go live, is dropped after the swap (`obsolete`), never holding it up.

Every function here runs inside the caller's transaction, so a failure or a `kill -9` at any
point leaves the live tables, their comments and the archives exactly as they were.
"""

from __future__ import annotations

import itertools
import logging
import re
import zlib
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path

from psycopg2 import sql

from pipeline import catalog, config

log = logging.getLogger("luigi-interface")
_WEEK = re.compile(r"__(\d{8})$")
_STAGED = re.compile(r"__staged_(\d{8})$")
_REPLACED = re.compile(r"__\d{8}_replaced_\d+")
_WEEK_NOTE = re.compile(r"week=(\d{4}-\d{2}-\d{2})")
_SOURCE_NOTE = re.compile(r"loaded from .*, parquet footer sha256 ([0-9a-f]{64})", re.DOTALL)
WEEK_CHECK = "week_is"
LIVE_CHANNEL = "weekly_recs_live"
_STAGED_OPTIONS = ("autovacuum_enabled", "vacuum_truncate")  # off while staged (`stage`), and the pipeline's
_STAGED_STORAGE = sql.SQL(", ").join(sql.SQL("{} = false").format(sql.Identifier(option)) for option in _STAGED_OPTIONS)


def lock(cur, *names: str) -> None:
    """One writer per name across processes and hosts, until the transaction ends (sorted: no deadlock)."""
    for name in sorted(set(names)):
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(name),))


def lock_key(name: str) -> int:
    """The advisory lock's key of `name`, for the pipeline's locks of every kind."""
    return zlib.crc32(name.encode())


def week_name(table: str, week: date) -> str:
    """The table that holds `week` once it has gone live: attached while live, an archive after."""
    return f"{table}__{week:%Y%m%d}"


def staged_name(table: str, week: date) -> str:
    return f"{table}__staged_{week:%Y%m%d}"


def frozen_copy_name(table: str, week: date) -> str:
    """The longest name a week gives a table: the ranking's frozen copy of its shards' rows while it is
    made (`RankCandidates.written_again_frozen`), before it takes `staged_name`."""
    return f"{staged_name(table, week)}_frozen"


def checked_live_name(name: str, setting: str) -> str:
    """A published table's name, which each week's tables take with more after it: PostgreSQL cuts a
    name past 63 characters without an error, and the week's tables would lose what tells them apart."""
    added = frozen_copy_name("", date(2026, 11, 21))
    longest = 63 - len(added)
    if len(config.checked_identifier(name, setting)) > longest:
        raise ValueError(f"{setting}: {name!r} is {len(name)} characters, and a week's tables take it with up to "
                         f"{len(added)} more ({name}{added}), past the 63 at which PostgreSQL cuts a name: "
                         f"at most {longest}")
    return name


def swapped(tables: Iterable[str], week: date) -> list[str]:
    """What putting `week` live locks: the live names and the week's own tables (staged, archived,
    or the live one a redo replaces). Whoever holds any of them holds up the swap."""
    tables = list(tables)
    return tables + [name for table in tables for name in (staged_name(table, week), week_name(table, week))]


def live_week(cur, table: str) -> date | None:
    """The week a live name holds: that of the week's table attached to it, which is named for it.

    On the layout before partitions, the week the pipeline wrote in the table's comment."""
    if catalog.kind(cur, table) == "r":
        noted = _WEEK_NOTE.fullmatch(catalog.comment(cur, table) or "")
        return date.fromisoformat(noted.group(1)) if noted else None
    weeks = [_week(_WEEK.fullmatch(name.removeprefix(table))) for name in _attached_weeks(cur, table)]
    return weeks[0] if weeks else None


def _attached_weeks(cur, table: str) -> list[str]:
    """The week's table attached to the live name: one, or none before the first week."""
    return [name for name in catalog.attached(cur, table) if _WEEK.fullmatch(name.removeprefix(table))]


def _dbas_partitions(cur, table: str) -> list[str]:
    """Partitions a DBA attached to the live name beside the week, of rows the shop serves whatever
    the week (a `DEFAULT` one, or one for values no week has): theirs, so no week detaches them, nor
    is tuned like them, nor drops or retypes a column of their rows (`refused_changes`)."""
    return [name for name in catalog.attached(cur, table) if not _WEEK.fullmatch(name.removeprefix(table))]


def _note_week(cur, table: str, week: date) -> None:
    """The live week in the live name's comment, for whoever lists the tables; but a comment a DBA
    wrote (what the table is, whom to ask) is theirs, and stays."""
    comment = catalog.comment(cur, table)
    if comment is None or _WEEK_NOTE.fullmatch(comment):
        cur.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
            sql.Identifier(table), sql.Literal(f"week={week.isoformat()}")))


def note_source(cur, name: str, path: Path, digest: str) -> None:
    """The file a week's table was loaded from: what a later week's file is compared with, kept as
    long as the week's table is, and read by whoever asks where it came from. It sits on the
    pipeline's own week check, not on the table: a table's comment is the DBA's to write, and one
    they wrote on a week's table would otherwise hide its file from every check that compares it."""
    cur.execute(sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS {}").format(
        sql.Identifier(WEEK_CHECK), sql.Identifier(name),
        sql.Literal(f"loaded from {path}, parquet footer sha256 {digest}")))


def source_digest(cur, name: str) -> str | None:
    """The footer digest `note_source` left on a week's table; None on a table loaded before it did.
    Versions before 2026-12-06 noted it in the table's own comment, which is read where the week
    check has none."""
    note = catalog.constraint_comment(cur, name, WEEK_CHECK) or catalog.comment(cur, name)
    noted = _SOURCE_NOTE.fullmatch(note or "")
    return noted.group(1) if noted else None


def live_week_repeated(cur, table: str, week: date, digest: str | None) -> date | None:
    """The live week of `table` whose file had the footer `digest` (`source_digest`), where `week`
    comes after it: the week that `week`, so loaded, would serve again. None otherwise."""
    live = live_week(cur, table)
    if digest is None or live is None or live >= week:
        return None
    return live if source_digest(cur, week_table(cur, table, live)) == digest else None


def week_table(cur, table: str, week: date) -> str:
    """The physical table that holds `week` of `table`: staged, live or archived."""
    for name in (staged_name(table, week), week_name(table, week)):
        if catalog.exists(cur, name):
            return name
    if live_week(cur, table) == week:
        return table  # a live table of the layout before partitions, until its first publish
    raise LookupError(f"{table}: week {week} is neither staged, live nor archived")


def holds_week(cur, table: str, week: date) -> bool:
    try:
        week_table(cur, table, week)
    except LookupError:
        return False
    return True


def stage(cur, table: str, week: date, columns: sql.Composable, name: str | None = None, logged: bool = True) -> str:
    """A fresh staging table for the week, `name` or `staged_name` (not `logged`: `UNLOGGED`); the
    caller has dropped one a forgotten run left.

    Its week check makes attaching it a catalog change: PostgreSQL sees that no row can break the
    partition's bound without scanning one. Autovacuum leaves it alone until it goes live: a
    vacuum of a table just loaded (33 s at 10M rows, throttled as autovacuum is) would hold up the
    week's own bounded attempts on it, which give up before PostgreSQL would cancel the vacuum for
    them; the pipeline gathers its statistics itself (`analyze`). And no vacuum ever truncates it:
    truncating takes an exclusive lock, which a standby replays, waiting for its readers of the
    live week while every later read there queues behind it.
    """
    staged = name or staged_name(table, week)
    build_beside(cur, table)
    cur.execute(sql.SQL("CREATE {}TABLE {} ({}, CONSTRAINT {} {}) WITH ({})").format(
        sql.SQL("" if logged else "UNLOGGED "), sql.Identifier(staged), columns, sql.Identifier(WEEK_CHECK),
        _week_check(week), _STAGED_STORAGE))
    return staged


def build_beside(cur, table: str) -> None:
    """What the rest of the transaction creates goes where `table`'s rows are (`catalog.tablespace`):
    a DBA who put the live weeks on the shop's fast disks finds every later week there, its indexes
    with it, as PostgreSQL would place a partition created in the live name."""
    place = catalog.tablespace(cur, table)
    if place is None:
        return
    cur.execute("SELECT has_tablespace_privilege(%s, 'CREATE'), quote_ident(%s), quote_ident(current_user)",
                (place, place))
    allowed, spelled, role = cur.fetchone()
    if not allowed:
        raise PermissionError(f"{table}: its weeks belong on tablespace {spelled}, where the pipeline's role may not "
                              f"create tables (GRANT CREATE ON TABLESPACE {spelled} TO {role})")
    cur.execute(sql.SQL("SET LOCAL default_tablespace = {}").format(sql.Identifier(place)))


def go_live(cur, tables: Iterable[str], week: date) -> None:
    """Swap the week's staged tables in together; a week older than the live one goes to its archive.

    The caller holds the tables' advisory locks and has set a `lock_timeout`: the live names are
    locked first, so that no change is made before every one of them is held.
    """
    tables = list(tables)
    missing = [table for table in tables if not catalog.exists(cur, staged_name(table, week))]
    if missing:
        raise LookupError(f"week {week} cannot go live: not staged in {', '.join(missing)}")
    swapping = [table for table in tables if (live_week(cur, table) or week) <= week]  # the others: a backfill
    _lock_live_names(cur, tables, swapping)
    for table in tables:
        if table in swapping:
            _put_live(cur, table, week, staged_name(table, week))
        else:
            _rename(cur, staged_name(table, week), week_name(table, week))
        _left_to_autovacuum(cur, week_name(table, week))


def roll_back(cur, tables: Iterable[str], week: date) -> None:
    """Put the archived `week` live in every table; the live week stays as its archive."""
    tables = list(tables)
    _lock_live_names(cur, tables, tables)
    for table in tables:
        _put_live(cur, table, week, week_name(table, week))
        _left_to_autovacuum(cur, week_name(table, week))  # an archive staged before `stage` said so


def prepare_to_attach(cur, table: str, name: str, week: date) -> None:
    """Do before the swap, in a transaction of its own, what attaching `name` to the live `table`
    would otherwise do inside it, while the web service waits on the live names, or refuse: check
    the week over the whole table (an archive of the layout before partitions has no week check),
    give it the `NOT NULL`, `CHECK`, key and foreign-key constraints a DBA put on the live name
    (attaching refuses a table without the first two, and makes the others itself, building their
    indexes or checking every row), and build the DBA's other indexes. A foreign key is added
    unchecked, for `validate` to check in a transaction of its own. A week whose rows break a DBA's
    constraint fails here, naming it, with the live week whole."""
    build_beside(cur, name)
    present = catalog.constraints(cur, name)
    if not any(constraint.name == WEEK_CHECK for constraint in present):
        cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            sql.Identifier(name), sql.Identifier(WEEK_CHECK), _week_check(week)))
    if catalog.kind(cur, table) != "p":  # none yet, or a live table of the layout before partitions: nothing to match
        return
    tune_like_the_live_week(cur, table, name)
    for column in (catalog.not_null(cur, table) & set(catalog.table_columns(cur, name))) - catalog.not_null(cur, name):
        cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(
            sql.Identifier(name), sql.Identifier(column)))
    for constraint in catalog.constraints(cur, table):
        if not any(constraint.matches(other) for other in present):
            cur.execute(constraint.added_to(name))
    built = set(catalog.index_shapes(cur, name))
    for unique, shape in catalog.index_shapes(cur, table, without_constraints=True):
        if (unique, shape) not in built:
            cur.execute(sql.SQL("CREATE {}INDEX ON {} {}").format(
                sql.SQL("UNIQUE " if unique else ""), sql.Identifier(name), sql.SQL(shape)))


def tune_like_the_live_week(cur, table: str, name: str) -> None:
    """Give `name` what a DBA tuned on the week's table attached to the live `table`, and nothing
    else: its storage parameters (`parallel_workers`, autovacuum's thresholds), which PostgreSQL
    refuses on a partitioned table and asks for on its partitions, and its columns' statistics
    targets and options, which `ALTER TABLE <live name> ALTER COLUMN ... SET STATISTICS` passes
    down to the week attached then, never to later ones. Before `name` is sampled, so that its
    statistics are gathered as the DBA asked. `autovacuum_enabled` and `vacuum_truncate` stay the
    pipeline's (`stage`, `_left_to_autovacuum`)."""
    live = [attached for attached in _attached_weeks(cur, table) if attached != name]
    if not live:
        return
    changes = _options_changed(sql.SQL(""), catalog.storage_parameters(cur, name),
                               catalog.storage_parameters(cur, live[0]), _STAGED_OPTIONS)
    tuned, own = catalog.column_tuning(cur, live[0]), catalog.column_tuning(cur, name)
    for column, wanted in tuned.items():
        if column not in own:
            continue
        altered = sql.SQL("ALTER COLUMN {} ").format(sql.Identifier(column))
        if own[column].statistics != wanted.statistics:
            changes.append(altered + sql.SQL("SET STATISTICS {}").format(sql.Literal(
                -1 if wanted.statistics is None else wanted.statistics)))
        changes += _options_changed(altered, own[column].options, wanted.options)
    if changes:
        cur.execute(sql.SQL("ALTER TABLE {} ").format(sql.Identifier(name)) + sql.SQL(", ").join(changes))


def _options_changed(altered: sql.Composable, present: dict[str, str], wanted: dict[str, str],
                     kept: Iterable[str] = ()) -> list[sql.Composable]:
    """`SET (...)` and `RESET (...)` clauses after `altered` that turn options `present` into `wanted`,
    leaving the `kept` ones as they are."""
    kept = set(kept)
    setting = {option: value for option, value in wanted.items() if present.get(option) != value and option not in kept}
    resetting = [option for option in present if option not in wanted and option not in kept]
    clauses = []
    if setting:
        clauses.append(altered + sql.SQL("SET ({})").format(sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(option), sql.Literal(value))
            for option, value in setting.items())))
    if resetting:
        clauses.append(altered + sql.SQL("RESET ({})").format(sql.SQL(", ").join(map(sql.Identifier, resetting))))
    return clauses


def validate(cur, name: str) -> None:
    """Check the rows of `name` against the constraints it was given unchecked: scanning it holds
    no lock that keeps the tables they reference from their writers."""
    for constraint in catalog.constraints(cur, name):
        if not constraint.validated:
            cur.execute(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                sql.Identifier(name), sql.Identifier(constraint.name)))


def analyze(cur, name: str) -> None:
    """The planner's statistics of `name`. For a live name, its own, over the week attached, which
    autovacuum never gathers for a partitioned table, and which the planner reads for every join
    and grouping over the name; not its partition's again where the server can leave them out."""
    only = catalog.kind(cur, name) == "p" and catalog.server_has(cur.connection.server_version, "ANALYZE ONLY")
    cur.execute(sql.SQL("ANALYZE {}{}").format(sql.SQL("ONLY " if only else ""), sql.Identifier(name)))


def columns_changed(cur, table: str, name: str) -> str | None:
    """What putting `name` live in `table` changes of the columns a `SELECT *` of the live name
    returns, as a note for whoever runs the web service (None: nothing). A statement it prepared
    on `SELECT *` before the change fails after it, on every call, until prepared again: PostgreSQL
    will not change a cached plan's result type. A view keeps its columns through it."""
    if catalog.kind(cur, table) != "p" or not catalog.exists(cur, name):
        return None
    live, week = catalog.table_columns(cur, table), catalog.table_columns(cur, name)
    changes = [f"added {column} ({kind})" for column, kind in week.items() if column not in live]
    changes += [f"dropped {column}" for column in live if column not in week]
    changes += [f"retyped {column} ({live[column]} to {kind})" for column, kind in week.items()
                if column in live and live[column] != kind]
    if not changes:
        return None
    return (f"{table} changes its columns: {', '.join(changes)}; a SELECT * of it prepared before fails "
            "(cached plan must not change result type) until prepared again")


def grant_readers(cur, tables: Iterable[str], readers: Iterable[str]) -> None:
    """`SELECT` on the served names, which keep it for every week they serve; nothing else. A reader
    the DBA granted some columns only keeps just those: the pipeline widens no one's grant."""
    for table in tables:
        for role in readers:
            cur.execute("SELECT has_any_column_privilege(%s, to_regclass(%s), 'SELECT')", (role, f'"{table}"'))
            if not cur.fetchone()[0]:
                cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), sql.Identifier(role)))


def refuse_unfit_role(cur) -> None:
    """Refuse a week that the pipeline's role could not publish whatever its files: no schema to make
    its tables in, or a reader to grant them to that does not exist. Checked before the week's
    files are checked (`CheckInputs`), and first of all before the events stage makes them, which
    may take an hour on a shop's first week."""
    refuse_without_schema(cur)
    missing = missing_roles(cur, config.postgres().readers)
    if missing:
        raise ValueError(f"[postgres] readers: no role named {', '.join(map(repr, missing))} in the database")


def refuse_without_schema(cur) -> None:
    """Refuse a week whose tables the role could not make: no schema of its `search_path` exists (a
    DBA's `"$user"` before its schema), or the first that does is not the role's to create in (the
    `public` schema of a database it does not own, since PostgreSQL 15). PostgreSQL's own words come
    at the first table and name neither the role nor the setting."""
    made = catalog.creation(cur)
    if made.allowed:
        return
    role, database = made.role, made.database
    if made.schema is None:
        raise ValueError(f"[postgres] user {role} has no schema to make the week's tables in, in database "
                         f"{database}: none of its search_path ({made.search_path}) exists (CREATE SCHEMA {role} "
                         f"AUTHORIZATION {role}, or ALTER ROLE {role} IN DATABASE {database} SET search_path = a "
                         "schema it may create in)")
    raise ValueError(f"[postgres] user {role} may not make tables in schema {made.schema}, the first of its "
                     f"search_path ({made.search_path}) that exists in database {database} (GRANT CREATE ON "
                     f"SCHEMA {made.schema} TO {role}, or ALTER ROLE {role} IN DATABASE {database} SET search_path "
                     "= a schema of its own)")


def missing_roles(cur, roles: Iterable[str]) -> list[str]:
    roles = list(roles)
    cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (roles,))
    found = {name for (name,) in cur.fetchall()}
    return [role for role in roles if role not in found]


def refused_changes(cur, table: str, columns: dict[str, str]) -> list[tuple[str, str]]:
    """What of a week's `columns` (name: PostgreSQL type) the objects that depend on the live
    `table`, a DBA's partition among them, would not survive: a column they use that the week drops
    or retypes; and a column that a role was granted by name, which it reads, or that a DBA's
    extended statistics are on, dropped (a retyped one keeps both)."""
    live = catalog.table_columns(cur, table)
    used = catalog.dependents(cur, table)
    for partition in _dbas_partitions(cur, table):  # retyped, their rows' values would go (`_reshape`)
        for column in live:
            used.setdefault(column, []).append(f"partition {partition}")
    dbas = [constraint for constraint in catalog.constraints(cur, table) if constraint.name != WEEK_CHECK]
    for constraint in dbas:  # dropping or retyping a column would drop them with it
        for column in constraint.columns:
            used.setdefault(column, []).append(f"constraint {constraint.name}")
    kept_if_retyped = catalog.statistics_objects(cur, table)
    for grant in catalog.grants(cur, table):
        if grant.column is not None:
            kept_if_retyped.setdefault(grant.column, []).append(f"the grant of {grant.privilege} to {grant.grantee}")
    problems = []
    for column, kind in live.items():
        users = ", ".join(used.get(column, []))
        dropped = ", ".join(used.get(column, []) + kept_if_retyped.get(column, []))
        if dropped and column not in columns:
            problems.append((column, f"the week has no column {column!r}, which {dropped} uses in {table}"))
        elif users and catalog.canonical_type(cur, columns[column]) != kind:
            problems.append((column, f"the week's {column!r} is {columns[column]}, not {kind}, and {users} "
                                     f"uses it in {table}"))
    return problems


def refused_swaps(cur, table: str) -> list[str]:
    """What would keep any week from going live in `table`, seen in the catalog before the week's
    work rather than at the swap after it: a live name a DBA gave to a role whose rights the
    pipeline's role lacks (only an owner attaches and detaches partitions); and a foreign key of
    another table that references it, which no week could be put live past: PostgreSQL will not
    detach a partition that a row references, and each week replaces every row of the live week,
    the only rows such a key can reference."""
    refused = []
    if owner := catalog.foreign_owner(cur, table):
        role = catalog.current_role(cur)
        refused.append(f"{table} belongs to role {owner}, whose rights the pipeline's role {role} does not have: "
                       f"it could not put a week live there (ALTER TABLE {table} OWNER TO {role}, or GRANT {owner} "
                       f"TO {role})")
    refused += [f"{table}: the foreign key {key} of {owner} references it, and each week replaces every row of "
                f"{table}: PostgreSQL will not detach the live week while a row of {owner} references it, so no "
                f"later week nor a rollback could go live (ALTER TABLE {owner} DROP CONSTRAINT {key}, or have it "
                "reference a table of the shop's own)"
                for key, owner in catalog.referencing_keys(cur, table)]
    return refused


def archived_weeks(cur, table: str) -> list[date]:
    """Newest first; neither the live week nor staged weeks are archives."""
    live = live_week(cur, table)
    return sorted((w for w in map(_week, _matches(cur, table, _WEEK)) if w != live), reverse=True)


def kept_archives(weeks: Iterable[date], retention: int) -> list[date]:
    """Of archived weeks, those a publish keeps: the newest `retention`, newest first."""
    return sorted(set(weeks), reverse=True)[:retention]


def obsolete(cur, table: str, week: date, retention: int) -> list[str]:
    """What `week` going live left behind: archives past the newest `retention`, the versions redos
    replaced (`_rename`) and, unless the week was a backfill, weeks staged before it, which will never
    go live (a rerun stages them again)."""
    archived = archived_weeks(cur, table)
    kept = kept_archives(archived, retention)
    expired = [week_name(table, w) for w in archived if w not in kept]
    expired += [f"{table}{match.string}" for match in _matches(cur, table, _REPLACED)]
    if live_week(cur, table) != week:
        return expired
    return [staged_name(table, w) for w in staged_weeks(cur, table) if w < week] + expired


def drop_unless_built_on(cur, name: str) -> None:
    """An obsolete table goes, unless someone built on it: a publish never fails for that."""
    users = catalog.built_on(cur, name)
    if users:
        log.warning("%s is no longer needed but kept: %s depends on it", name, ", ".join(users))
        return
    cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))


def staged_weeks(cur, table: str) -> list[date]:
    return sorted(_week(match) for match in _matches(cur, table, _STAGED))


def row_count(cur, table: str) -> int:
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    return cur.fetchone()[0]


def refuse_swaps(cur, tables: Iterable[str]) -> None:
    """The first of `refused_swaps` for any of `tables`, as the error a week or a rollback fails with."""
    for table in tables:
        for problem in refused_swaps(cur, table):
            raise ValueError(problem)


def _lock_live_names(cur, tables: list[str], swapping: list[str]) -> None:
    """All live names at once, before any change: a reader waits for the swap, never for a half of it.

    Those `swapping` are refused (`refused_swaps`) before the lock, which a role that lost a live
    name may not take, and again under it: a publish may wait for readers long after the week was
    checked, and a DBA's key or change of owner made meanwhile would otherwise fail the swap with
    PostgreSQL's bare error. Once the lock is held, neither can be made.

    They come in the graph's order (`WeeklyRecs.live_names`), the popular items first, the ranking
    last, and are locked the other way round: in the order the web service's reads take them
    (`serving.TOP_K`: the ranking, then the popular items). Otherwise a request holding the ranking
    would ask for the popular items the swap has taken while the swap waits for the ranking: on
    the primary the request waits out the attempt's `lock_timeout`, and on a standby, whose replay
    cannot give up, the standby cancels the request as a deadlock."""
    refuse_swaps(cur, swapping)
    live = [table for table in reversed(tables) if catalog.exists(cur, table)]
    if live:
        cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.SQL(", ").join(map(sql.Identifier, live))))
    refuse_swaps(cur, swapping)


def _put_live(cur, table: str, week: date, source: str) -> None:
    """Detach the live week, shape the live name like `source`, attach `source` as `week`."""
    kind = catalog.kind(cur, table)
    if kind == "r":
        _partition_in_place(cur, table)
    elif kind is None:
        _create_partitioned(cur, table, catalog.table_columns(cur, source))
    for attached in _attached_weeks(cur, table):
        cur.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
            sql.Identifier(table), sql.Identifier(attached)))
    target = week_name(table, week)
    if source != target:
        _rename(cur, source, target)  # a redo of the live week replaces it
    _reshape(cur, table, catalog.table_columns(cur, target))
    cur.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ({})").format(
        sql.Identifier(table), sql.Identifier(target), sql.Literal(week)))
    _note_week(cur, table, week)
    _announce(cur, week)


def _announce(cur, week: date) -> None:
    """The week now live, to whoever listens (`LISTEN weekly_recs_live`): a web service that caches
    the week's rows drops them the moment they change, rather than at their next expiry. Sent at
    commit, so never for a swap that did not happen; once per transaction, as PostgreSQL delivers a
    notification repeated in one transaction once."""
    cur.execute("SELECT pg_notify(%s, %s)", (LIVE_CHANNEL, week.isoformat()))


def _left_to_autovacuum(cur, name: str) -> None:
    """A week's table, live or archived, is autovacuum's like any table, but never truncated (`stage`)."""
    cur.execute(sql.SQL("ALTER TABLE {} RESET (autovacuum_enabled), SET (vacuum_truncate = false)").format(
        sql.Identifier(name)))


def _partition_in_place(cur, table: str) -> None:
    """A deployment of the layout before partitions: its live table becomes its week's archive and a
    partitioned table takes its name, its grants and everything that depended on it."""
    week = live_week(cur, table)
    rebind = catalog.definitions_of_dependents(cur, table)
    grants = catalog.grants(cur, table)
    _rename(cur, table, week_name(table, week))
    _create_partitioned(cur, table, catalog.table_columns(cur, week_name(table, week)))
    for grant in grants:
        cur.execute(grant.given_on(table))
    for definition in rebind:
        cur.execute(definition)


def _create_partitioned(cur, table: str, columns: dict[str, str]) -> None:
    cur.execute(sql.SQL("CREATE TABLE {} ({}) PARTITION BY LIST (week)").format(
        sql.Identifier(table), sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind)) for name, kind in columns.items())))


def _reshape(cur, table: str, columns: dict[str, str]) -> None:
    """The live name takes the week's columns; no week is attached, so this changes only the catalog
    (a DBA's partition keeps every column, `refused_changes`, and takes the week's new ones).

    A retyped column keeps its place, grants, comment and statistics settings (no row to convert:
    `USING NULL`). Dependent objects make PostgreSQL refuse to drop or retype a column they use,
    which `refused_changes` reports before any staging.
    """
    live = catalog.table_columns(cur, table)
    for name, kind in live.items():
        if name not in columns:
            cur.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(sql.Identifier(table), sql.Identifier(name)))
        elif columns[name] != kind:
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {} USING NULL").format(
                sql.Identifier(table), sql.Identifier(name), sql.SQL(columns[name])))
    for name, kind in columns.items():
        if name not in live:
            cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                sql.Identifier(table), sql.Identifier(name), sql.SQL(kind)))


def _week_check(week: date) -> sql.Composable:
    return sql.SQL("CHECK (week IS NOT NULL AND week = {})").format(sql.Literal(week))


def _matches(cur, table: str, pattern: re.Pattern) -> list[re.Match]:
    cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                " AND starts_with(tablename, %s)", (f"{table}__",))
    return [m for (name,) in cur.fetchall() if (m := pattern.fullmatch(name.removeprefix(table)))]


def _week(match: re.Match) -> date:
    return datetime.strptime(match.group(1), "%Y%m%d").date()


def _rename(cur, table: str, new_name: str) -> None:
    """`table` takes `new_name`. A table of that name is the version of its week that a redo replaces:
    it goes, unless someone built on it (an analyst's view): then it is set aside under a name of its
    own, which a later publish drops once nothing depends on it, and the redo goes on."""
    users = catalog.built_on(cur, new_name)  # none when there is no such table
    if users:
        aside = next(name for n in itertools.count(1) if not catalog.exists(cur, name := f"{new_name}_replaced_{n}"))
        cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(new_name), sql.Identifier(aside)))
        log.warning("%s is replaced by a redo of its week; the version it replaced is kept as %s until nothing "
                    "depends on it: %s", new_name, aside, ", ".join(users))
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(new_name)))
    cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(table), sql.Identifier(new_name)))
