"""What operations install: the crontab runs the week under cron's own environment, cannot overlap
itself, and docker-compose's services agree with what the pipeline reads."""

from __future__ import annotations

import configparser
import subprocess
from datetime import datetime

import pytest
import yaml
from croniter import croniter

from tests.conftest import ROOT, TELEGRAM_ENV, apply_settings, installed_program, query

CRONTAB = ROOT / "deploy" / "crontab"


def crontab_entries() -> tuple[dict[str, str], str, str]:
    """(its variables, the schedule, the command) of deploy/crontab."""
    lines = [line for line in CRONTAB.read_text().splitlines() if line.strip() and not line.startswith("#")]
    variables = dict(line.split("=", 1) for line in lines if "=" in line.split()[0])
    [job] = [line for line in lines if "=" not in line.split()[0]]
    fields = job.split(maxsplit=5)
    return variables, " ".join(fields[:5]), fields[5]


def test_the_week_fires_every_saturday_at_21_05():
    _, schedule, command = crontab_entries()

    firings = croniter(schedule, datetime(2026, 11, 24, 12, 0))
    assert [firings.get_next(datetime) for _ in range(2)] == [datetime(2026, 11, 28, 21, 5),
                                                             datetime(2026, 12, 5, 21, 5)]
    assert ".venv/bin/luigi --module pipeline WeeklyRecs" in command


def cron_environment(config_file, tmp_path) -> dict[str, str]:
    """What cron gives a job: its own PATH and SHELL, HOME, the crontab's variables; here also the
    test's config, which a server takes from luigi.cfg in the checkout."""
    variables, _, _ = crontab_entries()
    return {**variables, "HOME": str(tmp_path), "WEEKLY_RECS": str(ROOT), "LUIGI_CONFIG_PATH": str(config_file)}


@pytest.fixture
def cron_config(settings, config_file):
    settings["core"]["local_scheduler"] = "true"
    apply_settings(settings, config_file)
    return config_file


def test_the_crontab_command_runs_the_week_under_crons_environment(cron_config, tmp_path, conn):
    _, _, command = crontab_entries()

    result = subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in cron_environment(cron_config, tmp_path).items()),
                             "/bin/sh", "-c", command], capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, (ROOT / "var" / "log" / "weekly-recs.log").read_text()[-2000:]
    # the week live and settled
    assert query(conn, "SELECT count(*) FROM table_updates WHERE update_id LIKE 'WeeklyRecs_2026%'") == [(2,)]
    assert "weekly-recs: week" in (ROOT / "var" / "log" / "weekly-recs.log").read_text()


def test_a_firing_while_the_last_week_still_runs_does_not_start_and_says_so(cron_config, bot_api, tmp_path, conn):
    """A run still going a week after cron fired it is stuck, and its handlers say nothing of it."""
    _, _, command = crontab_entries()
    (ROOT / "var").mkdir(exist_ok=True)
    log = ROOT / "var" / "log" / "weekly-recs.log"
    logged_before = log.stat().st_size if log.exists() else 0
    environment = {**cron_environment(cron_config, tmp_path), **TELEGRAM_ENV}
    holder = subprocess.Popen(["flock", str(ROOT / "var" / "cron.lock"), "sleep", "30"])
    try:
        result = subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in environment.items()), "/bin/sh", "-c", command],
                                capture_output=True, text=True, timeout=60)
    finally:
        holder.kill()

    assert result.returncode == 75  # flock -E 75: the lock is held, nothing started
    [text] = bot_api.texts()
    assert text.startswith("weekly-recs FAILED: WeeklyRecs for week ")
    assert "not started: the run cron fired before it still holds var/cron.lock" in text
    assert "not started: the run cron fired before it" in log.read_text()[logged_before:]
    assert query(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


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


def test_the_worker_image_hands_crons_jobs_every_variable_compose_sets():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in compose()["services"]["worker"]["environment"]:
        assert name in dockerfile, f"{name} is set by compose but not passed on to cron's jobs"


def test_docker_compose_accepts_the_file():
    compose_program = installed_program("docker-compose", "docker-compose")
    result = subprocess.run([compose_program, "--env-file", ".env.example", "config", "--quiet"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
