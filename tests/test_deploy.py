"""What operations install: the crontab runs the week under cron's own environment, cannot overlap
itself, and says every way a firing ends, those no handler of the pipeline hears included (a run
killed, one that could not start, one still going or cut off by its host, which then runs again);
with luigid down, the firings of several hosts make the week one at a time; docker-compose's
services agree with what the pipeline reads."""

from __future__ import annotations

import configparser
import os
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from croniter import croniter
from luigi.configuration.cfg_parser import LuigiConfigParser

from pipeline import cron, publish
from pipeline.wrapper import WeeklyRecs
from tests.conftest import (
    NEXT_WEEK,
    ROOT,
    SCHEDULING_FAILED,
    TASK_FAILED,
    TELEGRAM_ENV,
    WEEK,
    apply_settings,
    environment_reading,
    eventually,
    free_port,
    installed_program,
    query,
    tables_held,
    write_settings,
)

CRONTAB = ROOT / "deploy" / "crontab"
SATURDAY, MORNING_AFTER = "5 21 * * 6", "0 9 * * 0"
LOG = ROOT / "var" / "log" / "weekly-recs.log"
RUNNING = ROOT / "var" / "run-week.running"  # the week of a firing under way
FIRED = ROOT / "var" / "run-week.fired"  # the week of the latest firing
FAILED = ROOT / "var" / "run-week.failed"  # the week of a firing that failed, for the next check's second try


def crontab() -> tuple[dict[str, str], dict[str, str]]:
    """(its variables, its jobs: each schedule's command) of deploy/crontab."""
    lines = [line for line in CRONTAB.read_text().splitlines() if line.strip() and not line.startswith("#")]
    variables = dict(line.split("=", 1) for line in lines if "=" in line.split()[0])
    jobs = [line.split(maxsplit=1 if line.startswith("@") else 5) for line in lines if "=" not in line.split()[0]]
    return variables, {" ".join(fields[:-1]): fields[-1] for fields in jobs}


def test_the_week_fires_every_saturday_at_21_05_and_is_checked_the_morning_after_and_at_boot():
    _, jobs = crontab()

    assert set(jobs) == {SATURDAY, MORNING_AFTER, "@reboot"}
    firings = croniter(SATURDAY, datetime(2026, 11, 24, 12, 0))
    assert [firings.get_next(datetime) for _ in range(2)] == [datetime(2026, 11, 28, 21, 5),
                                                             datetime(2026, 12, 5, 21, 5)]
    assert croniter(MORNING_AFTER, datetime(2026, 11, 28, 21, 5)).get_next(datetime) == datetime(2026, 11, 29, 9)
    assert "sh deploy/run-week >>" in jobs[SATURDAY]
    assert "sh deploy/run-week check >>" in jobs[MORNING_AFTER] and "sh deploy/run-week check >>" in jobs["@reboot"]
    assert '.venv/bin/luigi --module pipeline WeeklyRecs --week "$week"' in (ROOT / "deploy" / "run-week").read_text()
    assert f"{cron.FIRING.minute} {cron.FIRING.hour} * * 6" == SATURDAY  # what a check takes the firing's time for


@pytest.mark.parametrize(("now", "due"), [
    (datetime(2026, 12, 5, 21, 4), date(2026, 11, 28)),  # Saturday, before the firing
    (datetime(2026, 12, 5, 21, 5), date(2026, 12, 5)),
    (datetime(2026, 12, 6, 9, 0), date(2026, 12, 5)),  # the morning after
    (datetime(2026, 12, 11, 23, 59), date(2026, 12, 5)),  # Friday
])
def test_the_week_due_is_that_of_the_latest_saturday_firing(now, due):
    assert cron.due_week(now) == due
    assert cron.unfired(due - timedelta(days=1), now) == due  # a day of the week before: its firing never came
    assert cron.unfired(due, now) is None and cron.unfired(due + timedelta(days=6), now) is None


def cron_environment(config_file, tmp_path) -> dict[str, str]:
    """What cron gives a job: its own PATH and SHELL, HOME, the crontab's variables; here also the
    test's config, which a server takes from luigi.cfg in the checkout."""
    variables, _ = crontab()
    return {**variables, "HOME": str(tmp_path), "WEEKLY_RECS": str(ROOT), "LUIGI_CONFIG_PATH": str(config_file)}


@pytest.fixture
def cron_config(settings, config_file):
    settings["core"]["local_scheduler"] = "true"
    apply_settings(settings, config_file)
    for left in (RUNNING, FIRED, FAILED):
        left.unlink(missing_ok=True)
    yield config_file
    for left in (RUNNING, FIRED, FAILED):
        left.unlink(missing_ok=True)


def cron_job(environment: dict[str, str], schedule: str = SATURDAY) -> subprocess.Popen:
    """The crontab's job started as cron would, with `environment` only; at boot without its wait."""
    command = crontab()[1][schedule]
    if schedule == "@reboot":
        wait, command = command.split(" && ", 1)
        assert wait.startswith("sleep ")
    return subprocess.Popen(["env", "-i", *(f"{k}={v}" for k, v in environment.items()), "/bin/sh", "-c", command],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def cron_fires(environment: dict[str, str], timeout: float = 300, log: Path = LOG,
               schedule: str = SATURDAY) -> tuple[int, str]:
    """Runs a crontab job to its end: its exit status and what it logged."""
    logged_before = log.stat().st_size if log.exists() else 0
    job = cron_job(environment, schedule)
    job.communicate(timeout=timeout)
    return job.returncode, log.read_text()[logged_before:]


def test_the_crontab_command_runs_the_week_under_crons_environment(cron_config, tmp_path, conn):
    status, logged = cron_fires(cron_environment(cron_config, tmp_path))

    assert status == 0, logged[-2000:]
    # the week live and settled
    assert query(conn, "SELECT count(*) FROM table_updates WHERE update_id LIKE 'WeeklyRecs_2026%'") == [(2,)]
    assert "weekly-recs: week" in logged


def test_a_firing_with_luigid_down_makes_the_week_with_the_local_scheduler_and_says_so(
        cron_config, bot_api, reader, settings, tmp_path):
    """The visualizer is for people: its outage (luigid not started at boot, or crashed) must not cost
    the web service its week."""
    port = free_port()  # luigid behind a proxy that asks for a password, given in the URL
    settings["core"].update({"local_scheduler": "false", "scheduler_url": f"http://ops:pw-{port}@localhost:{port}/",
                             "rpc-retry-attempts": "2", "rpc-retry-wait": "1"})  # of 3, 30 s
    apply_settings(settings, cron_config)

    status, logged = cron_fires({**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV})

    assert status == 0, logged[-2000:]
    down, published = bot_api.texts()
    week = WeeklyRecs(week=date.today()).week
    assert down.startswith(f"weekly-recs FAILED: WeeklyRecs for week {week}\nluigid does not answer at "
                           f"http://ops:***@localhost:{port}/ (its error in the cron log of {socket.gethostname()}): "
                           f"the week runs with the local scheduler on {socket.gethostname()} instead")
    assert down in logged
    assert ("luigid does not answer (RPCError: Errors (2 attempts) when connecting to remote scheduler "
            f"'http://ops:***@localhost:{port}") in logged
    assert f"pw-{port}" not in logged + down
    assert published.startswith(f"weekly-recs: week {week} published")
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(week,)]


def another_hosts_firing(settings: dict, folder: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`run-week`'s run with the local scheduler on a host of its own: its own luigi pid files and models
    (a luigi of the same command line on the same host is refused by Luigi's own lock), the database shared."""
    host = {**settings, "core": {**settings["core"], "lock_pid_dir": str(folder / "luigi-pids")},
            "pipeline": {**settings["pipeline"], "model_dir": str(folder / "models")}}
    folder.mkdir()
    write_settings(host, folder / "luigi.cfg")
    return subprocess.Popen([sys.executable, "-m", "pipeline.cron", "local", str(WEEK)], cwd=ROOT,
                            env=environment_reading(folder / "luigi.cfg", env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def waiting_for_the_week(firing: subprocess.Popen) -> str:
    """What a firing says as it finds another host making the week, once it says it."""
    for said in firing.stdout:
        if "is being made by another run with the local scheduler" in said:
            return said
    raise AssertionError("the firing ended without waiting for the week")


def week_holder_pid(conn) -> int:
    """The pid, as the holder's application_name gives it, of the run holding the week's lock."""
    key = publish.lock_key(f"week {WEEK} with the local scheduler")
    with conn.cursor() as cur:
        holder = eventually(lambda: re.search(r", pid (\d+),", cron.week_holder(cur, key)), "a run holding the week")
    return int(holder[1])


def test_with_no_luigid_two_hosts_firings_make_the_week_once_the_second_waiting_for_the_first(
        settings, bot_api, reader, conn, tmp_path):
    """Without a scheduler to hand each task to one worker, each host's firing would make the whole week,
    and each would say that luigid is down."""
    with tables_held():
        first = another_hosts_firing(settings, tmp_path / "first", TELEGRAM_ENV)
        assert week_holder_pid(conn) == first.pid
        second = another_hosts_firing(settings, tmp_path / "second", TELEGRAM_ENV)
        said = waiting_for_the_week(second)
    first_log, second_log = first.communicate(timeout=120)[0], second.communicate(timeout=120)[0]

    assert first.returncode == 0 and second.returncode == 0, first_log[-2000:] + second_log[-2000:]
    assert f"(weekly-recs week {WEEK} on {socket.gethostname()}, pid {first.pid}, since " in said
    assert "running   TrainRanker" in first_log and "Did not run any tasks" in second_log  # made once
    down, published = bot_api.texts()  # said once
    assert "luigid does not answer" in down and down in first_log and published.startswith(f"weekly-recs: week {WEEK}")
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(WEEK,)]


def test_a_host_that_dies_making_the_week_leaves_it_to_the_firing_that_waits(settings, reader, conn, tmp_path):
    with tables_held():
        first = another_hosts_firing(settings, tmp_path / "first")
        week_holder_pid(conn)
        second = another_hosts_firing(settings, tmp_path / "second")
        waiting_for_the_week(second)
        first.kill()  # its host goes down: its session ends, and with it its hold on the week
        first.wait()
    second_log = second.communicate(timeout=120)[0]

    assert second.returncode == 0, second_log[-2000:]
    assert "running   WeeklyRecs" in second_log
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(WEEK,)]


def test_a_run_with_the_local_scheduler_where_the_database_is_down_says_so_as_any_run_does(settings, tmp_path):
    settings["postgres"]["host"] = str(tmp_path / "no-server-here")
    firing = another_hosts_firing(settings, tmp_path / "host")

    logged = firing.communicate(timeout=60)[0]

    assert firing.returncode == SCHEDULING_FAILED, logged[-2000:]  # no task could be checked
    assert f"cannot connect to PostgreSQL at unix socket {tmp_path / 'no-server-here'}" in logged


@pytest.fixture
def a_run_going_on():
    """var/cron.lock held, as by a run cron fired before."""
    (ROOT / "var").mkdir(exist_ok=True)
    holder = subprocess.Popen(["flock", str(ROOT / "var" / "cron.lock"), "sleep", "30"], start_new_session=True)
    yield
    os.killpg(holder.pid, signal.SIGKILL)  # flock and its sleep, which holds the lock too
    holder.wait()


def test_a_firing_while_the_last_week_still_runs_does_not_start_and_says_so(a_run_going_on, cron_config, bot_api,
                                                                             tmp_path, conn):
    """A run still going a week after cron fired it is stuck, and its handlers say nothing of it."""
    status, logged = cron_fires({**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV}, timeout=60)

    assert status == 75  # the lock is held, nothing started
    [text] = bot_api.texts()
    assert text.startswith("weekly-recs FAILED: WeeklyRecs for week ")
    assert "not started: the run cron fired before it still holds var/cron.lock" in text
    assert "not started: the run cron fired before it" in logged
    assert query(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


@pytest.mark.parametrize(("kill", "why", "run_again"), [
    (signal.SIGKILL, "(the OOM killer? ", False),
    (signal.SIGTERM, "(a host shutting down? cron's next check, at boot or on Sunday morning, runs it again)", True),
])
def test_a_run_killed_by_a_signal_says_so(kill, why, run_again, cron_config, bot_api, tmp_path, conn):
    """No handler of the run hears its own SIGKILL (the OOM killer's) or SIGTERM (a host shutting down)."""
    logged_before = LOG.stat().st_size if LOG.exists() else 0
    job = cron_job({**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV})
    os.kill(until_found(job, "bin/luigi --module pipeline"), kill)
    job.communicate(timeout=60)

    assert job.returncode == 128 + kill
    [text] = bot_api.texts()
    assert text.startswith("weekly-recs FAILED: WeeklyRecs for week ")
    assert f"killed by {kill.name} before it ended, so no task could say so {why}" in text
    assert text in LOG.read_text()[logged_before:]
    assert RUNNING.exists() == run_again  # by the next check
    assert query(conn, "SELECT to_regclass('candidates_ranked')") == [(None,)]


def until_found(job: subprocess.Popen, command: str) -> int:
    """The pid of the process of `job`'s session running `command`, once it runs."""
    found = eventually(lambda: subprocess.run(["pgrep", "-s", str(job.pid), "-f", command], capture_output=True,
                                              text=True).stdout.split(), f"{command} running", every=0.02)
    return int(found[0])


def test_at_boot_the_week_of_a_firing_the_host_went_down_in_runs_again(cron_config, bot_api, tmp_path, conn):
    (ROOT / "var").mkdir(exist_ok=True)
    RUNNING.write_text("2026-11-25\n")  # what the firing wrote as it started, on a Wednesday

    status, logged = cron_fires({**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV}, schedule="@reboot")

    assert status == 0, logged[-2000:]
    cut_off, published = bot_api.texts()
    assert cut_off.startswith("weekly-recs FAILED: WeeklyRecs for week 2026-11-21\ncut off before it ended (its host")
    assert published.startswith("weekly-recs: week 2026-11-21 published")
    assert query(conn, "SELECT count(*) FROM table_updates WHERE update_id LIKE 'WeeklyRecs_2026_11_21%'") == [(2,)]
    assert not RUNNING.exists()


@pytest.mark.parametrize("schedule", [MORNING_AFTER, "@reboot"])
@pytest.mark.parametrize("fired", [None, "due"], ids=["never fired", "fired"])
def test_a_check_when_every_firing_came_and_ended_does_nothing(schedule, fired, cron_config, bot_api, tmp_path, conn):
    if fired:
        (ROOT / "var").mkdir(exist_ok=True)
        FIRED.write_text(f"{cron.due_week(datetime.now())}\n")

    status, logged = cron_fires({**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV}, schedule=schedule)

    assert (status, logged, bot_api.texts()) == (0, "", [])
    assert query(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_a_saturday_firing_that_never_came_is_said_and_its_week_made(cron_config, bot_api, tmp_path, conn):
    """The host down at 21:05 (a maintenance window) and back later: cron never fires for the minute it missed."""
    (ROOT / "var").mkdir(exist_ok=True)
    FIRED.write_text("2026-11-14\n")
    due = cron.due_week(datetime.now())

    status, logged = cron_fires({**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV}, schedule=MORNING_AFTER)

    assert status == 0, logged[-2000:]
    unfired, published = bot_api.texts()
    assert unfired.startswith(f"weekly-recs FAILED: WeeklyRecs for week {due}\n"
                              "not made: cron's firing for it never came")
    assert published.startswith(f"weekly-recs: week {due} published")
    assert FIRED.read_text().strip() == str(due) and not RUNNING.exists()


def test_the_morning_after_a_run_still_going_is_said(a_run_going_on, cron_config, bot_api, tmp_path):
    """A run stuck on Saturday night (a read that never returns) is said on Sunday morning, not a week later."""
    RUNNING.write_text("2026-11-21\n")

    status, logged = cron_fires({**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV}, timeout=60,
                                schedule=MORNING_AFTER)

    assert status == 75
    [text] = bot_api.texts()
    assert text.startswith("weekly-recs FAILED: WeeklyRecs for week 2026-11-21\nstill running, hours after cron")
    assert text in logged
    assert RUNNING.exists()  # the run's own, still going


def test_a_run_whose_install_is_broken_says_so_with_the_import_error(cron_config, bot_api, tmp_path, conn):
    """A dependency that no longer loads stops Luigi before any task, so no handler of the pipeline runs."""
    broken = tmp_path / "broken" / "pyarrow"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("libarrow.so.2100: cannot open shared object file")\n')
    environment = {**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV, "PYTHONPATH": str(broken.parent)}

    status, logged = cron_fires(environment, timeout=120)

    assert status not in (0, 75)  # Luigi's own status
    [text] = bot_api.texts()
    assert text.startswith("weekly-recs FAILED: the run of ")
    assert "could not start\nImportError: libarrow.so.2100: cannot open shared object file\n" in text
    assert "no task ran, the live week is unchanged" in text
    assert text in logged
    assert TELEGRAM_ENV["TELEGRAM_BOT_TOKEN"] not in logged
    assert query(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def checkout_without_virtualenv(tmp_path: Path) -> Path:
    """The deploy scripts in a checkout of their own, with no `.venv`: a run there cannot start."""
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "deploy", checkout / "deploy")
    return checkout


def test_a_checkout_whose_virtualenv_is_gone_says_so(cron_config, bot_api, tmp_path):
    """An OS upgrade that removes the interpreter the virtualenv points at leaves no `.venv/bin/luigi` to run."""
    checkout = checkout_without_virtualenv(tmp_path)

    status, logged = cron_fires({**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV,
                                 "WEEKLY_RECS": str(checkout)}, log=checkout / "var" / "log" / "weekly-recs.log")

    assert status not in (0, 75)
    [text] = bot_api.texts()
    assert "could not start\n.venv/bin/python: No such file or directory\n" in text
    assert text in logged


def test_a_start_failure_is_sent_as_the_telegram_settings_of_any_file_luigi_reads_say(cron_config, bot_api, tmp_path):
    """A host may keep its settings in /etc/luigi/luigi.cfg or a checkout's client.cfg, as Luigi allows:
    not_started.py reads the same files, in Luigi's order, and here finds the Bot API in client.cfg."""
    not_started = runpy.run_path(str(ROOT / "deploy" / "not_started.py"))
    assert list(not_started["CONFIG_FILES"]) == LuigiConfigParser._config_paths[:4]
    checkout = checkout_without_virtualenv(tmp_path)
    (checkout / "client.cfg").write_text(cron_config.read_text())
    environment = {**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV, "WEEKLY_RECS": str(checkout)}
    del environment["LUIGI_CONFIG_PATH"]

    status, logged = cron_fires(environment, log=checkout / "var" / "log" / "weekly-recs.log")

    assert status not in (0, 75)
    [text] = bot_api.texts()
    assert "could not start\n.venv/bin/python: No such file or directory\n" in text


def test_a_luigi_cfg_that_does_not_parse_is_said_with_its_file_and_line(cron_config, bot_api, tmp_path):
    cron_config.write_text(cron_config.read_text() + "\n[core]\nlocal_scheduler = false\n")

    status, logged = cron_fires({**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV}, timeout=120)

    assert status not in (0, 75)
    [text] = bot_api.texts()
    assert f"DuplicateSectionError: While reading from '{cron_config}'" in text
    assert text in logged


@pytest.mark.parametrize(("section", "key", "value", "said"), [
    ("worker", "keep_alive", "perhaps", "ValueError: worker[args=(), kwargs={}]: Error when parsing the default value "
                                        "of 'keep_alive' (ValueError: cannot interpret 'perhaps' as boolean)"),
    ("resources", "postgres", "two", "ValueError: [resources] postgres = two: a whole number of tasks at once, at "
                                     "least 1 (0, or no setting: no cap)"),
])
def test_a_bad_value_of_luigis_own_settings_is_said_with_its_name(section, key, value, said, cron_config, bot_api,
                                                                    tmp_path, settings):
    """Luigi reads `[worker]` and its scheduler `[resources]` as they start, before any task whose handlers
    could say so."""
    settings.setdefault(section, {})[key] = value
    apply_settings(settings, cron_config)

    status, logged = cron_fires({**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV}, timeout=120)

    assert status not in (0, 75)
    [text] = bot_api.texts()
    assert f"could not start\n{said}\n" in text
    assert text in logged


def test_a_run_that_could_not_start_is_said_with_a_telegram_timeout_that_does_not_parse(
        cron_config, bot_api, tmp_path, settings):
    """As the pipeline's own messages do, the start's goes with the timeout's default."""
    settings["worker"] = {"keep_alive": "perhaps"}
    settings["telegram"]["timeout"] = "soon"
    apply_settings(settings, cron_config)

    status, logged = cron_fires({**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV}, timeout=120)

    assert status not in (0, 75)
    [text] = bot_api.texts()
    assert "could not start\nValueError: worker[" in text
    assert text in logged


def test_a_failure_the_pipeline_reports_itself_is_said_once(cron_config, bot_api, tmp_path, settings):
    settings["pipeline"]["input_dir"] = str(tmp_path / "no-export")
    apply_settings(settings, cron_config)

    status, _ = cron_fires({**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV})

    assert status == TASK_FAILED
    [text] = bot_api.texts()
    assert text.startswith("weekly-recs FAILED: CheckInputs for week ")


def test_a_week_whose_firing_failed_runs_once_more_at_the_next_check(cron_config, bot_api, reader, input_dir,
                                                                     tmp_path):
    """The export came after 21:05: by the morning after it is there, and the week is made without anyone."""
    environment = {**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV}
    input_dir.rename(tmp_path / "still-being-written")
    assert cron_fires(environment)[0] == TASK_FAILED
    week = WeeklyRecs(week=date.fromisoformat(FAILED.read_text().strip())).week
    (tmp_path / "still-being-written").rename(input_dir)

    status, logged = cron_fires(environment, schedule=MORNING_AFTER)

    assert status == 0, logged[-2000:]
    _, second_try, published = bot_api.texts()
    assert second_try.startswith(f"weekly-recs FAILED: WeeklyRecs for week {week}\nnot made: the run cron fired "
                                 "for it failed (its alert said why); it runs once more now")
    assert published.startswith(f"weekly-recs: week {week} published")
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(week,)]
    assert cron_fires(environment, schedule="@reboot") == (0, "")  # made: nothing more to do


def test_a_week_that_fails_its_second_try_too_is_left_to_an_operator(cron_config, bot_api, input_dir, tmp_path):
    """A bad export, or a quality gate's refusal, would only fail again at every check."""
    environment = {**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV}
    shutil.rmtree(input_dir)
    assert cron_fires(environment)[0] == TASK_FAILED

    assert cron_fires(environment, schedule=MORNING_AFTER)[0] == TASK_FAILED

    failed, second_try, failed_again = bot_api.texts()
    assert "runs once more now" in second_try and failed_again == failed
    assert not FAILED.exists()
    assert cron_fires(environment, schedule="@reboot") == (0, "")


@pytest.mark.published_week
def test_a_failed_week_made_by_hand_since_is_not_tried_again(settings):
    assert cron.unmade(WEEK + timedelta(days=3)) is None  # published: its run by hand came before the check
    assert cron.unmade(NEXT_WEEK + timedelta(days=1)) == NEXT_WEEK
    settings["postgres"]["host"] = str(ROOT / "no-server-here")
    apply_settings(settings)
    assert cron.unmade(WEEK) == WEEK  # a database that cannot say: the run will, with its alert


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_give_the_pipeline_what_luigi_cfg_reads():
    services = compose()["services"]
    password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    config = configparser.ConfigParser()
    for service in ("luigid", "worker"):
        path = services[service]["environment"]["LUIGI_CONFIG_PATH"]
        assert path.startswith("/opt/weekly-recs/")
        config.read(ROOT / path.removeprefix("/opt/weekly-recs/"))
        assert services[service]["environment"]["PGPASSWORD"] == password
    database = services["postgres"]["environment"]
    assert config["postgres"]["host"] == "postgres" and config["postgres"]["port"] == "5432"
    assert (config["postgres"]["database"], config["postgres"]["user"]) == (database["POSTGRES_DB"],
                                                                             database["POSTGRES_USER"])
    assert config["core"]["scheduler_host"] == "luigid"
    assert f"{config['core']['scheduler_port']}:8082" in services["luigid"]["ports"]
    assert {"TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID"} <= set(services["worker"]["environment"])
    assert services["worker"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert config["pipeline"]["input_dir"].startswith("/exports/")


def test_every_service_comes_back_with_the_host():
    """A reboot mid-run is resumed by the worker's cron at boot, which needs the database and luigid back too."""
    assert {name: service.get("restart") for name, service in compose()["services"].items()} == \
        {"postgres": "unless-stopped", "luigid": "unless-stopped", "worker": "unless-stopped"}
    # Debian's cron skips @reboot while its marker of this boot is there, which a restarted container keeps
    assert "rm -f /var/run/crond.reboot;" in (ROOT / "Dockerfile").read_text()


def test_the_worker_keeps_what_crons_checks_read_through_a_rebuild():
    """A container made anew (`docker compose up -d --build`, a deploy) starts from the image: what a
    check reads there (a week under way, fired or failed) must be in a volume, as the log is."""
    script = (ROOT / "deploy" / "run-week").read_text()
    state = {line.split("=", 1)[1].split()[0] for line in script.splitlines()
             if line.startswith(("running=", "fired=", "failed="))} | {"var/cron.lock", "var/log/weekly-recs.log"}
    mounted = [next(part for part in volume.split(":") if part.startswith("/"))
               for volume in compose()["services"]["worker"]["volumes"]]
    for path in state:
        assert any(f"/opt/weekly-recs/{path}".startswith(f"{mount}/") for mount in mounted), path
    assert "var/cron.lock" in script


def test_the_worker_image_hands_crons_jobs_every_variable_compose_sets():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in compose()["services"]["worker"]["environment"]:
        assert name in dockerfile, f"{name} is set by compose but not passed on to cron's jobs"


def test_docker_compose_accepts_the_file():
    compose_program = installed_program("docker-compose", "docker-compose")
    result = subprocess.run([compose_program, "--env-file", ".env.example", "config", "--quiet"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
