"""What PostgreSQL's catalog says of a table: what it is (its kind, columns, comment, partitions, disk,
tuning), and what others built on it, which a week going live must keep: views and SQL functions,
grants, constraints, indexes and statistics a DBA made, the tables its foreign keys reference, the
publications that carry it; and which of PostgreSQL's later features the server has. Reads only;
`pipeline.publish` makes the changes.
"""

from __future__ import annotations

from typing import NamedTuple

from psycopg2 import sql

SINCE = {"transaction_timeout": 170000, "MAINTAIN": 170000, "ANALYZE ONLY": 180000}
"""The first `server_version` of each thing the pipeline uses only where the server has it (it runs
on PostgreSQL 14 and later)."""


def server_has(server_version: int, feature: str) -> bool:
    return server_version >= SINCE[feature]


def kind(cur, table: str) -> str | None:
    cur.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (f'"{table}"',))
    row = cur.fetchone()
    return row[0] if row else None


def exists(cur, table: str) -> bool:
    return kind(cur, table) is not None


def estimated_rows(cur, table: str) -> int | None:
    """The rows of `table` as its last `ANALYZE` or `VACUUM` counted them (every week is analyzed
    before it goes live); None where neither has run. Free where `count(*)` reads the whole week."""
    cur.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (f'"{table}"',))
    row = cur.fetchone()
    return round(row[0]) if row and row[0] >= 0 else None


def table_columns(cur, table: str) -> dict[str, str]:
    """Name: type, in order, as PostgreSQL names them."""
    cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(%s)"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (f'"{table}"',))
    return dict(cur.fetchall())


def comment(cur, table: str) -> str | None:
    cur.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (f'"{table}"',))
    return cur.fetchone()[0]


def constraint_comment(cur, table: str, constraint: str) -> str | None:
    cur.execute("SELECT obj_description(oid, 'pg_constraint') FROM pg_constraint"
                " WHERE conrelid = to_regclass(%s) AND conname = %s", (f'"{table}"', constraint))
    found = cur.fetchone()
    return found[0] if found else None


def attached(cur, table: str) -> list[str]:
    cur.execute("SELECT relname FROM pg_inherits JOIN pg_class ON pg_class.oid = inhrelid"
                " WHERE inhparent = to_regclass(%s)", (f'"{table}"',))
    return [name for (name,) in cur.fetchall()]


def tablespace(cur, table: str) -> str | None:
    """Where the rows of `table` are; for a live name, where its weeks belong: the tablespace it names
    for its partitions (`ALTER TABLE candidates_ranked SET TABLESPACE`), else the live week's own.
    None: the database's default."""
    cur.execute("SELECT spcname FROM pg_tablespace WHERE oid = (SELECT coalesce(nullif(p.reltablespace, 0),"
                " (SELECT w.reltablespace FROM pg_inherits JOIN pg_class w ON w.oid = inhrelid WHERE inhparent = p.oid"
                "  LIMIT 1)) FROM pg_class p WHERE p.oid = to_regclass(%s))", (f'"{table}"',))
    row = cur.fetchone()
    return row[0] if row else None


def storage_parameters(cur, table: str) -> dict[str, str]:
    """`ALTER TABLE ... SET (parallel_workers = 4)`: name: value."""
    cur.execute("SELECT option_name, option_value FROM pg_class, pg_options_to_table(reloptions)"
                " WHERE oid = to_regclass(%s)", (f'"{table}"',))
    return dict(cur.fetchall())


class ColumnTuning(NamedTuple):
    statistics: int | None  # `ALTER COLUMN ... SET STATISTICS`; None: the server's default
    options: dict[str, str]  # `ALTER COLUMN ... SET (n_distinct = -0.5)`


def column_tuning(cur, table: str) -> dict[str, ColumnTuning]:
    """How each column of `table` is sampled for the planner."""
    cur.execute("SELECT attname, nullif(attstattarget::int, -1), (SELECT coalesce(jsonb_object_agg(option_name,"
                " option_value), '{}') FROM pg_options_to_table(attoptions)) FROM pg_attribute"
                " WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped", (f'"{table}"',))
    return {column: ColumnTuning(statistics, options) for column, statistics, options in cur.fetchall()}


def canonical_type(cur, type_name: str) -> str:
    """`type_name` as `table_columns` names types (`int8` is `bigint`)."""
    cur.execute("SELECT format_type(%s::regtype, NULL)", (type_name,))
    return cur.fetchone()[0]


def dependents(cur, table: str) -> dict[str, list[str]]:
    """Views and SQL functions that use each column of `table` (column '' for the whole row)."""
    used: dict[str, list[str]] = {}
    for column, _, _, described in dependent_objects(cur, table):
        used.setdefault(column, []).append(described)
    return used


def built_on(cur, name: str) -> list[str]:
    return sorted({user for found in dependents(cur, name).values() for user in found})


def dependent_objects(cur, table: str) -> list[tuple[str, str, int, str]]:
    """(column, catalog, object, description) of every object bound to `table` by a normal dependency
    (a view through its rewrite rule, a SQL function with a `BEGIN ATOMIC` body, a constraint) and
    of every index a DBA made on the live name, which dropping its column would drop with it."""
    cur.execute(
        "SELECT DISTINCT coalesce(a.attname, ''), o.catalog::text, o.object, pg_describe_object(o.catalog, o.object, 0)"
        " FROM pg_depend d LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid"
        " LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid,"
        " LATERAL (SELECT CASE WHEN r.oid IS NULL THEN d.classid ELSE 'pg_class'::regclass END AS catalog,"
        "          coalesce(r.ev_class, d.objid) AS object) o"
        " WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass(%s) AND (d.deptype = 'n'"
        "  OR d.deptype = 'a' AND d.classid = 'pg_class'::regclass"
        "  AND (SELECT relkind FROM pg_class WHERE oid = d.objid) = 'I')"
        " AND o.object <> d.refobjid AND NOT EXISTS (SELECT FROM pg_constraint k WHERE d.classid ="
        "  'pg_constraint'::regclass AND k.oid = d.objid AND k.conrelid = d.refobjid)"  # the table's own checks
        " ORDER BY 1, 4", (f'"{table}"',))
    return cur.fetchall()


def materialized_views_over(cur, table: str) -> list[tuple[str, bool]]:
    """The populated materialized views that read `table`, directly or through views and other
    materialized views, those read by others after them; each with whether it may be refreshed
    `CONCURRENTLY`: it has a unique index on plain columns over all its rows."""
    cur.execute(
        "WITH RECURSIVE over(oid, depth) AS (SELECT to_regclass(%s)::oid, 0 UNION"
        "  SELECT r.ev_class, over.depth + 1 FROM over JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass"
        "   AND d.refobjid = over.oid AND d.classid = 'pg_rewrite'::regclass"
        "  JOIN pg_rewrite r ON r.oid = d.objid WHERE r.ev_class <> over.oid AND over.depth < 32)"
        " SELECT c.oid::regclass::text, EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique"
        "  AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL)"
        " FROM over JOIN pg_class c ON c.oid = over.oid WHERE c.relkind = 'm' AND c.relispopulated"
        " GROUP BY c.oid ORDER BY max(over.depth), 1", (f'"{table}"',))
    return cur.fetchall()


def statistics_objects(cur, table: str) -> dict[str, list[str]]:
    """The extended statistics (`CREATE STATISTICS`) on each column of `table`: dropping the column
    drops them with it, unasked; a retype keeps them."""
    cur.execute("SELECT a.attname, pg_describe_object(d.classid, d.objid, 0) FROM pg_depend d"
                " JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
                " WHERE d.classid = 'pg_statistic_ext'::regclass AND d.refobjid = to_regclass(%s)"
                " ORDER BY 1, 2", (f'"{table}"',))
    found: dict[str, list[str]] = {}
    for column, described in cur.fetchall():
        found.setdefault(column, []).append(described)
    return found


def definitions_of_dependents(cur, table: str) -> list[str]:
    """`CREATE OR REPLACE` statements of the views and SQL functions bound to `table`: run once a new
    table has its name, they bind to it and keep their own identity, grants and dependents."""
    statements = []
    for catalog, oid, described in sorted({row[1:] for row in dependent_objects(cur, table)}):
        if catalog == "pg_proc":
            cur.execute("SELECT pg_get_functiondef(%s)", (oid,))
        elif described.startswith("view "):
            cur.execute("SELECT format('CREATE OR REPLACE VIEW %%s %%s AS %%s', oid::regclass, 'WITH ('"
                        " || array_to_string(reloptions, ', ') || ')', pg_get_viewdef(oid)) FROM pg_class"
                        " WHERE oid = %s", (oid,))
        else:
            raise RuntimeError(f"{table}: {described} depends on it and cannot be carried over to the partitioned "
                               "layout; drop it, publish the week, and create it again")
        statements.append(cur.fetchone()[0])
    return statements


class Grant(NamedTuple):
    """A privilege another role holds on a table, or on one of its columns."""

    privilege: str
    grantee: str  # as `regrole` quotes it, or PUBLIC
    grantable: bool
    column: str | None  # None: the whole table

    def given_on(self, table: str) -> sql.Composable:
        return sql.SQL("GRANT {}{} ON {} TO {}{}").format(
            sql.SQL(self.privilege),
            sql.SQL(" ({})").format(sql.Identifier(self.column)) if self.column else sql.SQL(""),
            sql.Identifier(table), sql.SQL(self.grantee), sql.SQL(" WITH GRANT OPTION" if self.grantable else ""))


def grants(cur, table: str) -> list[Grant]:
    cur.execute(
        "SELECT g.privilege_type, CASE g.grantee WHEN 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END,"
        " g.is_grantable, acl.attname"
        " FROM (SELECT relacl, NULL::name, relowner FROM pg_class WHERE oid = to_regclass(%(t)s)"
        "  UNION ALL SELECT a.attacl, a.attname, c.relowner FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        "  WHERE c.oid = to_regclass(%(t)s) AND a.attnum > 0 AND NOT a.attisdropped) acl (acl, attname, owner),"
        " aclexplode(acl.acl) g WHERE g.grantee <> acl.owner ORDER BY 4 NULLS FIRST, 2, 1", {"t": f'"{table}"'})
    return [Grant(*row) for row in cur.fetchall()]


class Constraint(NamedTuple):
    """A table's constraint of a kind that attaching matches or makes (`NOT NULL` apart)."""

    name: str
    kind: str  # c(heck), p(rimary key), u(nique), f(oreign key), (e)x(clusion)
    definition: str  # without `NOT VALID`
    validated: bool
    columns: list[str]

    def matches(self, other: Constraint) -> bool:
        """Whether attaching takes `other`, on the partition, for this one: checks by name as well."""
        return (self.kind, self.definition) == (other.kind, other.definition) and (
            self.kind != "c" or self.name == other.name)

    def added_to(self, table: str) -> sql.Composable:
        """A check keeps its name (attaching matches it by name); a key's index is named after the
        table (index names are the schema's); a foreign key is added unchecked (see `publish.validate`)."""
        named = sql.SQL("" if self.kind in "pux" else "CONSTRAINT {} ").format(sql.Identifier(self.name))
        unchecked = sql.SQL(" NOT VALID" if self.kind == "f" else "")
        return sql.SQL("ALTER TABLE {} ADD {}{}{}").format(
            sql.Identifier(table), named, sql.SQL(self.definition), unchecked)


def constraints(cur, table: str) -> list[Constraint]:
    cur.execute("SELECT conname, contype, regexp_replace(pg_get_constraintdef(k.oid), ' NOT VALID$', ''),"
                " convalidated, ARRAY(SELECT attname FROM pg_attribute WHERE attrelid = conrelid"
                "  AND attnum = ANY(conkey) ORDER BY attnum)"
                " FROM pg_constraint k WHERE conrelid = to_regclass(%s) AND contype IN ('c', 'p', 'u', 'f', 'x')"
                " ORDER BY conname", (f'"{table}"',))
    return [Constraint(*row) for row in cur.fetchall()]


def not_null(cur, table: str) -> set[str]:
    cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
                " AND NOT attisdropped AND attnotnull", (f'"{table}"',))
    return {column for (column,) in cur.fetchall()}


def index_shapes(cur, table: str, without_constraints: bool = False) -> list[tuple[bool, str]]:
    """Each index of `table` as (unique, its definition from `USING` on), which two indexes share
    when attaching may take one for the other; `without_constraints`: not those of its keys."""
    cur.execute("SELECT i.indisunique, pg_get_indexdef(i.indexrelid), format('%%I.%%I', n.nspname, c.relname)"
                " FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE i.indrelid = to_regclass(%s) AND NOT (%s AND EXISTS (SELECT FROM pg_constraint k"
                "  WHERE k.conrelid = i.indrelid AND k.conindid = i.indexrelid))", (f'"{table}"', without_constraints))
    return [(unique, definition.split(f" {qualified} ", 1)[1]) for unique, definition, qualified in cur.fetchall()]


def referenced(cur, table: str) -> list[str]:
    """The tables that foreign keys of `table` reference: adding such a key locks them too."""
    cur.execute("SELECT DISTINCT c.relname FROM pg_constraint k JOIN pg_class c ON c.oid = k.confrelid"
                " WHERE k.conrelid = to_regclass(%s) AND k.contype = 'f' ORDER BY 1", (f'"{table}"',))
    return [name for (name,) in cur.fetchall()]


def current_role(cur) -> str:
    """The role the pipeline's statements run as, spelled as SQL needs it (`quote_ident`): the grants
    a message asks a DBA for run as pasted, whatever the role's name."""
    cur.execute("SELECT quote_ident(current_user)")
    return cur.fetchone()[0]


class Creation(NamedTuple):
    """Where a table named without a schema is made: `schema`, the first of the role's
    `search_path` that exists (None: none does), and whether the role may make tables there; with
    the role and the database, each name spelled as SQL needs it, for the grant that lets it."""

    schema: str | None
    allowed: bool
    search_path: str
    role: str
    database: str


def creation(cur) -> Creation:
    cur.execute("SELECT quote_ident(current_schema()), coalesce(has_schema_privilege(current_schema(), 'CREATE'),"
                " false), current_setting('search_path'), quote_ident(current_user), quote_ident(current_database())")
    return Creation(*cur.fetchone())


def foreign_owner(cur, table: str) -> str | None:
    """The role that owns `table`, spelled as SQL needs it, where the current role does not have its
    rights (not it, nor a role it inherits); None otherwise."""
    cur.execute("SELECT quote_ident(pg_get_userbyid(relowner)) FROM pg_class WHERE oid = to_regclass(%s)"
                " AND NOT pg_has_role(current_user, relowner, 'USAGE')", (f'"{table}"',))
    found = cur.fetchone()
    return found[0] if found else None


def referencing_keys(cur, table: str) -> list[tuple[str, str]]:
    """The foreign keys of other tables that reference `table`, each with the table it is on, both
    spelled as SQL needs them (not the copies PostgreSQL makes of a key for each partition on
    either side)."""
    cur.execute("SELECT quote_ident(conname), conrelid::regclass::text FROM pg_constraint"
                " WHERE confrelid = to_regclass(%s) AND contype = 'f' AND conparentid = 0 ORDER BY 1, 2",
                (f'"{table}"',))
    return cur.fetchall()


def publications(cur, table: str) -> list[str]:
    """The logical replication publications that carry `table` or its weeks' tables (without
    `publish_via_partition_root`, a publication lists a partitioned table's partitions)."""
    cur.execute("SELECT DISTINCT pubname FROM pg_publication_tables WHERE schemaname = current_schema()"
                " AND (tablename = %s OR starts_with(tablename, %s)) ORDER BY 1", (table, f"{table}__"))
    return [name for (name,) in cur.fetchall()]
