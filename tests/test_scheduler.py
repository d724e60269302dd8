"""A real luigid (started as `make scheduler` starts it): the week's graph, its history, two
workers at once, a cap on the tasks at work in PostgreSQL, a failing run that still ends promptly,
and the visualizer in a browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import luigi
import pyarrow.parquet as pq
import pytest

from pipeline import ScoreShard, TrainCandidates, WeeklyRecs
from tests.conftest import (
    LUIGI,
    NEXT_WEEK,
    PUBLISHED_TABLES,
    ROOT,
    TASK_FAILED,
    WEEK,
    apply_settings,
    dba_materializes_the_top_10,
    environment_reading,
    eventually,
    for_seconds,
    free_port,
    installed_program,
    maintenance_holding,
    markers,
    query,
    run_luigi,
    run_module,
    tables_held,
)

ARTIFACTS = ROOT / "var" / "test-artifacts"  # git-ignored; docs/visualizer.png is one such screenshot


class Luigid:
    def __init__(self, port: int):
        self.port = port
        self.args = ("--scheduler-host", "127.0.0.1", "--scheduler-port", str(port))

    def api(self, method: str, **data) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/{method}?data={urllib.request.quote(json.dumps(data))}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)["response"]


@pytest.fixture
def luigid(config_file, tmp_path) -> Iterator[Luigid]:
    with luigid_serving(config_file, tmp_path) as scheduler:
        yield scheduler


@contextmanager
def luigid_serving(config_file: Path, tmp_path: Path) -> Iterator[Luigid]:
    """luigid, reading `config_file` as it starts."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "pipeline.scheduler", "--address", "127.0.0.1", "--port",
                               str(port), "--state-path", str(tmp_path / "state.pickle"), "--logdir", str(tmp_path)],
                              cwd=ROOT, env=environment_reading(config_file), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    scheduler = Luigid(port)

    def answers() -> bool:
        try:
            return scheduler.api("task_list", status="DONE") is not None
        except OSError:
            return server.poll() is not None

    eventually(answers, "luigid answering", every=0.2)
    assert server.poll() is None, "luigid did not start"
    yield scheduler
    server.terminate()
    server.wait(timeout=10)


def test_a_week_run_through_luigid_is_done_with_the_designed_graph_and_history(luigid, config_file, conn):
    result = run_luigi(config_file, "WeeklyRecs", "--week", "2026-11-21", *luigid.args)

    assert result.returncode == 0, result.stderr[-2000:]
    graph = luigid.api("dep_graph", task_id=WeeklyRecs(week=WEEK).task_id)
    assert {task["status"] for task in graph.values()} == {"DONE"}
    edges = {(task["name"], graph[dep]["name"]) for task in graph.values() for dep in task["deps"]}
    assert edges >= {("WeeklyRecs", "DefaultRecs"), ("WeeklyRecs", "OnlineRecs"), ("WeeklyRecs", "RankCandidates"),
                     ("RankCandidates", "TrainCandidates"), ("RankCandidates", "InferenceCandidates"),
                     ("RankCandidates", "TrainRanker"), ("RankCandidates", "ScoreShard"), ("ScoreShard", "TrainRanker")}
    train = TrainCandidates(week=WEEK).task_id
    assert luigid.api("get_task_status_message", task_id=train)["statusMessage"] == \
        "staged 6,000 rows for candidates_train"
    assert luigid.api("get_task_progress_percentage", task_id=train)["progressPercentage"] == 100
    history = query(conn, "SELECT t.name, e.event_name FROM tasks t JOIN task_events e ON e.task_id = t.id"
                          " WHERE t.name = 'WeeklyRecs'")
    assert ("WeeklyRecs", "DONE") in history


def test_two_workers_at_once_run_every_task_once(luigid, config_file, input_dir, conn):
    workers = [start_week(luigid, config_file, WEEK, "--no-lock") for _ in range(2)]
    outputs = [worker.communicate(timeout=300) for worker in workers]

    # a worker that saw tasks run by the other ends with [retcode] already_running (10) or not_run (25)
    assert all(worker.returncode in (0, 10, 25) for worker in workers), [err[-1500:] for _, err in outputs]
    assert luigid.api("task_list", status="FAILED") == {}
    assert len(markers(conn)) == 10
    for table, file in zip(PUBLISHED_TABLES[:4], ("top_popular", "similar", "candidates_train",
                                                   "candidates_inference"), strict=True):
        assert query(conn, f'SELECT count(*) FROM "{table}"') == [(pq.read_metadata(input_dir / f"{file}.parquet")
                                                                   .num_rows,)]


def test_two_workers_against_one_luigid_split_the_scoring_shards_each_run_once(luigid, settings, config_file, conn,
                                                                               tmp_path):
    settings["pipeline"]["shards"] = "4"
    apply_settings(settings, config_file)
    workers = [another_worker(luigid, config_file, tmp_path / f"worker{n}.log") for n in range(2)]
    for worker in workers:
        worker.wait(timeout=300)
    logs = [(tmp_path / f"worker{n}.log").read_text() for n in range(2)]

    assert all(worker.returncode in (0, 10, 25) for worker in workers), [log[-1500:] for log in logs]
    shards = [re.findall(r"running   ScoreShard\(week=2026-11-21, shard=(\d), shards=4\)", log) for log in logs]
    assert sorted(shards[0] + shards[1]) == ["0", "1", "2", "3"]  # every shard once, by one worker or the other
    assert shards[0] and shards[1], shards  # both workers scored
    assert query(conn, "SELECT count(*) FROM table_updates_unlogged WHERE update_id LIKE 'ScoreShard%%'") == [(4,)]
    assert query(conn, "SELECT count(*), count(DISTINCT (user_id, item_id)) FROM candidates_ranked") == [(6000, 6000)]
    progress = [luigid.api("get_task_progress_percentage", task_id=ScoreShard(week=WEEK, shard=k, shards=4).task_id)
                for k in range(4)]
    assert [p["progressPercentage"] for p in progress] == [100] * 4


@pytest.mark.parametrize(("cap", "at_once"), [("1", 1), ("0", 2)], ids=["postgres = 1", "no cap"])
def test_a_cap_on_the_tasks_at_work_in_postgresql_holds_across_workers_and_the_week_goes_live(
        cap, at_once, settings, config_file, conn, reader, tmp_path):
    """`[resources] postgres`: a DBA's bound on the tasks at work in the shop's database at once, which
    luigid keeps for every worker of every host. Each load waits at its table's lock (held here), with
    its unit: under a cap of one the other worker takes nothing meanwhile."""
    settings["resources"] = {"postgres": cap}
    apply_settings(settings, config_file)
    with luigid_serving(config_file, tmp_path) as luigid:
        with tables_held():
            workers = [another_worker(luigid, config_file, tmp_path / f"worker{n}.log") for n in range(2)]
            eventually(lambda: len(luigid.api("worker_list")) == 2 and at_work(luigid)[0],
                       "both workers asking luigid for work, and one of them at it", seconds=60)
            held = [at_work(luigid) for _ in for_seconds(3)]
        after = [at_work(luigid) for _ in for_seconds(300, lambda: all(worker.poll() is not None
                                                                         for worker in workers))]

    assert all(worker.wait() in (0, 10, 25) for worker in workers)
    assert max(len(running) for running, _ in held) == at_once and len(held[-1][0]) == at_once, held
    assert held[-1][1] == (1 if cap == "1" else 0)  # the units in use, as luigid shows them
    assert any("TrainRanker" in running and used == 0 for running, used in after)  # its fits hold none
    assert len(markers(conn)) == 10
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(WEEK,)]


def at_work(luigid: Luigid) -> tuple[list[str], int]:
    """The tasks luigid has running, by name, and the units of `[resources] postgres` they hold."""
    running = [task["name"] for task in luigid.api("task_list", status="RUNNING").values()]
    used = {resource["name"]: resource["num_used"] for resource in luigid.api("resource_list")}
    return running, used.get("postgres", 0)


@pytest.mark.parametrize("cap", ["two", "-1"])
def test_luigid_refuses_a_cap_it_cannot_keep_naming_it(cap, settings, config_file):
    """A cap that is no number would stop luigid in a traceback; a negative one would hold every task."""
    settings["resources"] = {"postgres": cap}
    apply_settings(settings, config_file)

    refused = run_module(config_file, "scheduler", "--address", "127.0.0.1", "--port", str(free_port()), timeout=60)

    assert refused.returncode == 1
    assert refused.stderr == (f"luigid not started: [resources] postgres = {cap}: a whole number of tasks at once, "
                              "at least 1 (0, or no setting: no cap)\n")


def test_a_second_luigid_on_its_port_is_refused_saying_one_runs_already_and_the_first_answers_on(luigid, config_file,
                                                                                                  tmp_path):
    second = run_module(config_file, "scheduler", "--address", "127.0.0.1", "--port", str(luigid.port),
                        "--state-path", str(tmp_path / "second.pickle"), timeout=60)

    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert ("luigid not started: Address already in use: a luigid runs on this host already (make scheduler, once a "
            "host), or another program has its port (--port, --address)") in second.stderr
    assert luigid.api("task_list", status="DONE") is not None


def test_a_failing_run_ends_promptly_with_a_non_zero_exit(luigid, config_file, input_dir):
    (input_dir / "similar.parquet").unlink()

    result = run_luigi(config_file, "WeeklyRecs", "--week", "2026-11-21", *luigid.args, timeout=120)

    assert result.returncode == TASK_FAILED
    assert "CheckInputs" in luigid.api("task_list", status="FAILED").__str__()


def test_the_visualizer_shows_the_finished_week_in_a_browser(luigid, config_file, tmp_path):
    browser = installed_program("chromium", "chromium")
    assert run_luigi(config_file, "WeeklyRecs", "--week", "2026-11-21", *luigid.args).returncode == 0
    page = (f"http://127.0.0.1:{luigid.port}/static/visualiser/index.html"
            f"#tab=graph&taskId={WeeklyRecs(week=WEEK).task_id}")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=8000",
             "--window-size=1400,900"]

    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    subprocess.run([*flags, f"--screenshot={tmp_path / 'visualizer.png'}", page], capture_output=True, timeout=120)

    rendered = {name: status for status, name in re.findall(
        r'class="graph-node-a" data-task-status="(\w+)" data-task-id="(\w+?)_2026_11_21_', dom)}
    assert rendered == {task: "DONE" for task in ("WeeklyRecs", "DefaultRecs", "OnlineRecs", "RankCandidates",
                                                 "TrainCandidates", "InferenceCandidates", "CheckInputs",
                                                 "TrainRanker", "ScoreShard_0_1")}  # shard 0 of 1
    assert (tmp_path / "visualizer.png").stat().st_size > 10_000
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "visualizer.png", ARTIFACTS / "visualizer.png")


@pytest.mark.published_week
def test_a_publish_waiting_for_a_reader_shows_in_luigid_whom_it_waits_for(luigid, settings, config_file, conn, reader):
    report = reader.connect("quarterly-report")
    report.cursor().execute("SELECT count(*) FROM default_recs")  # and keeps its transaction open
    pid = report.get_backend_pid()
    worker = start_week(luigid, config_file, NEXT_WEEK)

    message = status_once(luigid, WeeklyRecs(week=NEXT_WEEK), f"pid {pid}")
    report.close()
    _, errors = worker.communicate(timeout=120)

    assert "waiting" in message and "for the live tables" in message
    assert f"pid {pid} (quarterly-report, idle in transaction" in message, message
    assert "holding default_recs" in message
    assert worker.returncode == 0, errors[-2000:]


@pytest.mark.published_week
def test_a_live_weeks_run_going_on_shows_in_luigid_the_step_it_is_at(
        luigid, settings, config_file, conn, reader, pg_socket_dir, database):
    """After the swap the week is live, and its run may go on: a materialized view's refresh waits
    for a `VACUUM` of it, as long as a publish would wait."""
    dba_materializes_the_top_10(conn, reader)
    vacuum = maintenance_holding(pg_socket_dir, database, "service_top")
    worker = start_week(luigid, config_file, NEXT_WEEK)

    message = status_once(luigid, WeeklyRecs(week=NEXT_WEEK), "materialized views")
    vacuum.rollback()
    _, errors = worker.communicate(timeout=120)

    assert message == f"week {NEXT_WEEK} is live; refreshing the materialized views over them"
    assert worker.returncode == 0, errors[-2000:]
    assert reader.read("SELECT DISTINCT week FROM service_top") == [(NEXT_WEEK,)]
    vacuum.close()


def another_worker(luigid: Luigid, config_file: Path, log: Path) -> subprocess.Popen:
    """A worker for the week through `luigid`, as another host starts one, logging into `log`: it waits
    for what other workers hold (`--worker-keep-alive`), and Luigi's lock on its command line, one a
    host, is off."""
    with log.open("w") as logged:
        return start_week(luigid, config_file, WEEK, "--no-lock", "--worker-keep-alive", "--worker-wait-interval",
                          "0.1", "--worker-wait-jitter", "0", stdout=subprocess.DEVNULL, stderr=logged)


def start_week(luigid: Luigid, config_file: Path, week: date, *flags: str, **output) -> subprocess.Popen:
    """`luigi ... WeeklyRecs --week` through `luigid`, in the background; its output piped, unless
    `output` says where it goes."""
    streams = output or {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen([LUIGI, "--module", "pipeline", "WeeklyRecs", "--week", str(week), *flags, *luigid.args],
                            cwd=ROOT, env=environment_reading(config_file), **streams)


def status_once(luigid: Luigid, task: luigi.Task, showing: str) -> str:
    """The task's status message in `luigid`, once it shows `showing`."""
    def message_showing_it() -> str:
        message = luigid.api("get_task_status_message", task_id=task.task_id).get("statusMessage") or ""
        return message if showing in message else ""

    return eventually(message_showing_it, f"luigid showing {showing!r} for {task.task_id}", seconds=120, every=0.5)
