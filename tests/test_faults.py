"""Faults, injected for real: a killed worker, a database that is down or restarts, two runs at
once, an unwritable model folder, an interrupted week, a connection lost as the swap commits or after
it. Published data survives each of them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import DefaultRecs, OnlineRecs, RankCandidates, WeeklyRecs, db
from tests.conftest import (
    NEXT_WEEK,
    PUBLISHED_TABLES,
    TASK_FAILED,
    TELEGRAM_ENV,
    WEEK,
    Reader,
    admin_connection,
    apply_settings,
    eventually,
    free_port,
    live_state,
    markers,
    query,
    run_luigi,
    run_tasks,
    set_for_the_database,
    staged,
    start_luigi,
)

LARGE_ROWS = 3_000_000


@pytest.fixture(scope="module")
def large_inference_file(tmp_path_factory) -> Path:
    """Three million inference candidates: long enough a COPY to be interrupted in the middle."""
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(LARGE_ROWS // 20, dtype=np.int64), 20)
    items = np.tile(np.arange(20, dtype=np.int64), LARGE_ROWS // 20) * 7 + users % 5
    path = tmp_path_factory.mktemp("large") / "candidates_inference.parquet"
    pq.write_table(pa.table({
        "user_id": users, "item_id": items, "als_score": rng.random(LARGE_ROWS, dtype=np.float32),
        "category_id": items % 24, "parent_id": items % 6, "available": (items % 3 > 0).astype(np.int64),
    }), path)
    return path


def publishing_markers(conn) -> list[str]:
    return [m for m in markers(conn) if not m.startswith("CheckInputs")]


def wait_for_copy(conn) -> None:
    eventually(lambda: query(conn, "SELECT coalesce(max(tuples_processed), 0) FROM pg_stat_progress_copy")[0][0]
               > 100_000, "a COPY past its first 100,000 rows", seconds=60)


def test_kill_9_in_the_middle_of_a_copy_leaves_the_published_table_and_a_rerun_loads_exactly_once(
        settings, config_file, input_dir, conn, large_inference_file):
    run_tasks(WeeklyRecs(week=WEEK))
    before = live_state(conn), publishing_markers(conn)
    (input_dir / "candidates_inference.parquet").write_bytes(large_inference_file.read_bytes())

    worker = start_luigi(config_file, "InferenceCandidates", "--week", "2026-11-28")
    wait_for_copy(conn)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    eventually(lambda: query(conn, "SELECT count(*) FROM pg_stat_progress_copy") == [(0,)], "the killed COPY ending")

    assert (live_state(conn), publishing_markers(conn)) == before
    assert query(conn, "SELECT to_regclass('candidates_inference__staged_20261128')") == [(None,)]
    rerun = run_luigi(config_file, "InferenceCandidates", "--local-scheduler", "--week", "2026-11-28")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert query(conn, "SELECT count(*), count(DISTINCT (user_id, item_id)) FROM candidates_inference__staged_20261128"
                 ) == [(LARGE_ROWS, LARGE_ROWS)]


def test_a_database_that_is_down_fails_the_run_naming_the_server(settings, config_file):
    port = free_port()
    settings["postgres"].update(host="127.0.0.1", port=str(port))
    apply_settings(settings, config_file)

    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-21")

    assert result.returncode != 0
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}" in result.stderr


@pytest.fixture
def throwaway_server(tmp_path) -> tuple[str, Callable[..., None]]:
    """A server of this test's own, so that restarting it leaves the session's server alone; and
    its restart (`mode="immediate"`: as after a crash, recovering from the WAL)."""
    pgserver = db.embedded_package()
    data, pg_ctl_program = tmp_path / "throwaway", pgserver.utils.POSTGRES_VERSIONS[18] / "pg_ctl"
    server = pgserver.get_server(data, cleanup_mode=None)
    as_user = db.server_process_user()

    def pg_ctl(action: str, mode: str = "fast") -> None:  # with a log file, so the server does not hold our pipes
        subprocess.run([pg_ctl_program, "-D", data, "-l", data / "log", "-m", mode, "-w", action],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_user)

    yield str(server.get_postmaster_info().socket_dir), lambda mode="fast": pg_ctl("restart", mode)
    pg_ctl("stop")


def test_a_database_restart_fails_the_task_cleanly_and_the_rerun_completes(
        settings, config_file, input_dir, large_inference_file, throwaway_server):
    socket_dir, restart = throwaway_server
    settings["postgres"].update(host=socket_dir, database="postgres")
    apply_settings(settings, config_file)
    (input_dir / "candidates_inference.parquet").write_bytes(large_inference_file.read_bytes())
    worker = start_luigi(config_file, "InferenceCandidates", "--week", "2026-11-21")
    with admin_connection(socket_dir) as watcher:
        wait_for_copy(watcher)
    restart()
    _, errors = worker.communicate(timeout=120)

    assert worker.returncode != 0
    assert "InferenceCandidates" in errors and "failed" in errors
    rerun = run_luigi(config_file, "InferenceCandidates", "--local-scheduler", "--week", "2026-11-21")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    with admin_connection(socket_dir) as conn:
        assert query(conn, "SELECT count(*) FROM candidates_inference__staged_20261121") == [(LARGE_ROWS,)]


def test_a_crash_of_the_server_after_the_shards_scored_has_them_score_again_and_the_week_go_live_whole(
        settings, config_file, throwaway_server):
    """The shards' rows go to an unlogged table, which a crash empties, and so do their markers: the
    rerun scores them again, where markers that outlived the rows would stage an empty ranking."""
    socket_dir, restart = throwaway_server
    web_service = Reader(socket_dir, "postgres")
    with admin_connection(socket_dir) as admin:
        admin.cursor().execute(f"CREATE ROLE {web_service.name} LOGIN")
    settings["postgres"].update(host=socket_dir, database="postgres", readers=f'["{web_service.name}"]')
    apply_settings(settings, config_file)
    ranking = RankCandidates(week=WEEK)
    assert run_tasks(*ranking.shards(ranking.shard_count())).name == "SUCCESS"
    with admin_connection(socket_dir) as admin:
        scored = query(admin, f"SELECT count(*) FROM {staged(ranking.table)}")[0][0]

    restart(mode="immediate")

    with admin_connection(socket_dir) as admin:
        assert query(admin, f"SELECT count(*) FROM {staged(ranking.table)}") == [(0,)]
    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"
    assert web_service.read("SELECT count(*), count(DISTINCT user_id) FROM candidates_ranked") == [(scored, 300)]


@pytest.mark.parametrize("defaults", [{}, {"default_transaction_isolation": "repeatable read"},
                                      {"lock_timeout": "1ms"}], ids=["server's", "repeatable read", "lock_timeout"])
def test_two_runs_of_the_same_week_at_once_publish_each_table_once_whatever_the_database_defaults_to(
        settings, config_file, input_dir, conn, pg_socket_dir, database, defaults):
    """A DBA may make REPEATABLE READ the database's default, or bound every lock wait: a run still waits
    for the other, however long it takes, and then sees what it did."""
    set_for_the_database(pg_socket_dir, database, **defaults)
    runs = [start_luigi(config_file, "WeeklyRecs", "--week", "2026-11-21") for _ in range(2)]
    results = [run.communicate(timeout=300) for run in runs]

    assert [run.returncode for run in runs] == [0, 0], [err[-1500:] for _, err in results]
    assert query(conn, "SELECT tablename FROM pg_tables WHERE tablename LIKE '%\\_\\_%' ESCAPE '\\' ORDER BY 1") == \
        sorted((f"{table}__20261121",) for table in PUBLISHED_TABLES)  # the live week's partitions: no stage left
    assert len(markers(conn)) == 10
    for table, file in zip(PUBLISHED_TABLES[:4], ("top_popular", "similar", "candidates_train",
                                                   "candidates_inference"), strict=True):
        rows = pq.read_metadata(input_dir / f"{file}.parquet").num_rows
        assert query(conn, f'SELECT count(*) FROM "{table}"') == [(rows,)]


def test_an_unwritable_model_dir_fails_before_training(settings, config_file, input_dir, conn):
    settings["pipeline"]["model_dir"] = str(input_dir / "top_popular.parquet" / "models")
    apply_settings(settings, config_file)

    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-21")

    assert result.returncode != 0
    assert "PermissionError: [pipeline] model_dir: cannot create" in result.stderr
    assert "training on" not in result.stderr
    assert query(conn, "SELECT to_regclass('candidates_ranked')") == [(None,)]


def test_an_interrupted_week_resumes_with_only_the_tasks_not_done(settings, config_file, conn):
    run_tasks(DefaultRecs(week=WEEK), OnlineRecs(week=WEEK))
    done_before = query(conn, "SELECT update_id, inserted FROM table_updates ORDER BY 1")

    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-21")

    assert result.returncode == 0
    assert "running   DefaultRecs" not in result.stderr and "running   OnlineRecs" not in result.stderr
    assert "running   TrainCandidates" in result.stderr
    after = dict(query(conn, "SELECT update_id, inserted FROM table_updates"))
    assert all(after[update_id] == inserted for update_id, inserted in done_before)
    assert len(markers(conn)) == 10


def test_a_connection_lost_after_the_swap_leaves_the_week_live_reported_published_and_the_rest_to_a_rerun(
        bot_api, config_file, conn, reader):
    forgotten = staged("default_recs", date(2026, 11, 14))
    run_tasks(DefaultRecs(week=date(2026, 11, 14)))  # a week that never went live: the publish drops its stage
    conn.cursor().execute(f"""
        CREATE FUNCTION lose_the_connection() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN
            IF EXISTS (SELECT FROM pg_event_trigger_dropped_objects() WHERE object_name = '{forgotten}') THEN
                PERFORM pg_terminate_backend(pg_backend_pid());
            END IF;
        END $$;
        CREATE EVENT TRIGGER lost_after_the_swap ON sql_drop EXECUTE FUNCTION lose_the_connection()""")

    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-21", env=TELEGRAM_ENV)

    assert result.returncode == 0, result.stderr[-2000:]
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(WEEK,)]
    assert ("week 2026-11-21 is live, but dropping what the week left behind failed, for a rerun or the next "
            "publish to do: " in result.stderr)
    assert "housekeeping failed" not in result.stderr and "weekly-recs: week 2026-11-21 published" in result.stdout
    [text] = bot_api.texts()
    assert "week 2026-11-21 published" in text and "FAILED" not in text
    assert "live, but failed, for a rerun or the next publish to do: dropping what the week left behind (" in text
    assert query(conn, "SELECT to_regclass(%s) IS NOT NULL", forgotten) == [(True,)]

    conn.cursor().execute("DROP EVENT TRIGGER lost_after_the_swap")
    rerun = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-21")

    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "running   WeeklyRecs" in rerun.stderr and "running   DefaultRecs" not in rerun.stderr
    assert query(conn, "SELECT to_regclass(%s) IS NOT NULL", forgotten) == [(False,)]
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(WEEK,)]
    assert "complete ones were encountered" in run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week",
                                                         "2026-11-21").stderr


class CommitUnheard:
    """A hop between the pipeline (run in a process of its own: its driver may block in a socket write
    holding the GIL) and the embedded server, on a socket of its own: a connection that
    has sent `armed_by` is lost at its next COMMIT, after the server has committed and answered (the
    pipeline never hears so), or, unless `reaching`, before the COMMIT reaches the server."""

    COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the protocol's simple query, as psycopg2 sends it

    def __init__(self, server_dir: str, folder: Path, armed_by: bytes, reaching: bool = True):
        (self.server,) = (path for path in Path(server_dir).glob(".s.PGSQL.*") if path.suffix != ".lock")
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(folder / self.server.name))
        self.listener.listen()
        self.armed_by, self.reaching, self.unheard = armed_by, reaching, 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(str(self.server))
            committing = threading.Event()
            threading.Thread(target=self._to_server, args=(client, upstream, committing), daemon=True).start()
            threading.Thread(target=self._to_client, args=(upstream, client, committing), daemon=True).start()

    def _to_server(self, client: socket.socket, upstream: socket.socket, committing: threading.Event) -> None:
        armed = False
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                armed = armed or self.armed_by in data
                if armed and self.COMMIT in data:
                    committing.set()
                    if not self.reaching:
                        self.unheard += 1
                        break
                upstream.sendall(data)
        _lose(client, upstream)

    def _to_client(self, upstream: socket.socket, client: socket.socket, committing: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if committing.is_set():  # the server's answer to the COMMIT
                    self.unheard += 1
                    break
                client.sendall(data)
        _lose(client, upstream)


def _lose(*ends: socket.socket) -> None:
    for end in ends:  # shut down, so that the other pump's recv() returns too
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
        end.close()


def test_a_connection_lost_as_the_swap_commits_leaves_the_week_live_and_reported_published(
        settings, config_file, pg_socket_dir, tmp_path, reader):
    hop = CommitUnheard(pg_socket_dir, tmp_path, armed_by=b"ATTACH PARTITION")
    settings["postgres"]["host"] = str(tmp_path)
    apply_settings(settings, config_file)

    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(WEEK))

    assert result.returncode == 0, result.stderr[-2000:]
    assert hop.unheard == 1
    assert "week 2026-11-21 is live: the connection was lost as the swap committed (server closed" in result.stderr
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(WEEK,)]


@pytest.mark.published_week
def test_a_connection_lost_before_the_swap_commits_fails_the_run_and_changes_nothing(
        settings, config_file, pg_socket_dir, tmp_path, conn):
    before = live_state(conn)
    hop = CommitUnheard(pg_socket_dir, tmp_path, armed_by=b"ATTACH PARTITION", reaching=False)
    settings["postgres"]["host"] = str(tmp_path)
    apply_settings(settings, config_file)

    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK))

    assert result.returncode == TASK_FAILED
    assert "OperationalError: server closed the connection unexpectedly" in result.stderr
    assert hop.unheard == 1
    assert live_state(conn) == before  # the week before, live and whole
