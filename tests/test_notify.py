"""Telegram messages: one on a finished week, one naming the task on a failure, never in the way.

A real HTTP server on loopback plays the Bot API's `sendMessage`; the pipeline runs as cron runs it.
"""

from __future__ import annotations

import time
import uuid

import pytest

from pipeline import config, notify
from tests.conftest import (
    CHAT,
    HANG,
    PUBLISHED_TABLES,
    SCHEDULING_FAILED,
    SERVER_ERROR,
    TASK_FAILED,
    TELEGRAM_ENV,
    TOKEN,
    TOO_MANY,
    UNHANDLED,
    apply_settings,
    free_port,
    query,
    run_luigi,
)


def run_week(config_file, env=TELEGRAM_ENV):
    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-21", env=env)
    assert TOKEN not in result.stdout + result.stderr
    return result


def test_a_good_week_sends_one_success_message_with_row_counts(bot_api, config_file, conn):
    result = run_week(config_file)

    assert result.returncode == 0, result.stderr[-2000:]
    assert len(bot_api.requests) == 1
    request = bot_api.requests[0]
    assert request["path"] == f"/bot{TOKEN}/sendMessage"
    assert request["body"]["chat_id"] == CHAT
    text = request["body"]["text"]
    assert "week 2026-11-21 published" in text and "validation NDCG@10: 0." in text
    for table in PUBLISHED_TABLES:
        (rows,) = query(conn, f'SELECT count(*) FROM "{table}"')[0]
        assert f"{table}: {rows:,} rows" in text


def test_a_broken_input_file_sends_a_failure_naming_the_task_and_file(bot_api, config_file, input_dir):
    broken = input_dir / "candidates_train.parquet"
    broken.write_bytes(broken.read_bytes()[:5000])

    result = run_week(config_file)

    assert result.returncode != 0
    [text] = bot_api.texts()
    assert "FAILED: CheckInputs for week 2026-11-21" in text
    assert "candidates_train.parquet" in text and "ContractError" in text


def test_a_setting_out_of_range_sends_a_failure_naming_the_key_the_value_and_the_range(bot_api, config_file):
    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-21",
                       "--pipeline-max-row-drop", "1.5", env=TELEGRAM_ENV)

    assert result.returncode == SCHEDULING_FAILED
    assert result.stderr.count("Error when parsing the default value of 'max_row_drop'") > 1  # each task's
    [text] = bot_api.texts()  # one problem, one message
    assert ("ValueError: pipeline[args=(), kwargs={}]: Error when parsing the default value of 'max_row_drop' "
            "(ValueError: 1.5 is not in the set of float in [0, 1])") in text


def test_a_database_down_as_the_run_starts_sends_a_failure_naming_the_server(bot_api, config_file, settings):
    """Luigi tells its handlers nothing but the task's name when `complete()` raises: before
    2026-12-07 the most likely failure of a Saturday night, the database down, sent no message."""
    port = free_port()
    settings["postgres"].update(host="127.0.0.1", port=str(port))
    apply_settings(settings, config_file)

    result = run_week(config_file)

    assert result.returncode == SCHEDULING_FAILED
    [text] = bot_api.texts()
    assert text.startswith("weekly-recs FAILED: WeeklyRecs for week 2026-11-21\n")
    assert f"ConnectionError: cannot connect to PostgreSQL at 127.0.0.1:{port}" in text


@pytest.mark.parametrize("reply", [SERVER_ERROR, HANG], ids=["500", "hang"])
def test_the_week_completes_when_telegram_errs_or_hangs(bot_api, config_file, reply):
    bot_api.replies = [reply]

    result = run_week(config_file)

    assert result.returncode == 0
    assert "Telegram message not sent" in result.stderr
    assert "ran successfully" in result.stderr


def test_the_week_completes_when_telegram_is_unreachable(bot_api, config_file):
    bot_api.shutdown()
    bot_api.server_close()

    result = run_week(config_file)

    assert result.returncode == 0
    assert "Telegram message not sent: ConnectionError" in result.stderr


def test_a_429_is_retried_once_after_the_time_it_asks_for(bot_api, monkeypatch):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", CHAT)
    bot_api.replies = [TOO_MANY]

    started = time.monotonic()
    assert notify.send("hello") is True

    assert time.monotonic() - started >= 1
    assert bot_api.texts() == ["hello", "hello"]


def test_without_a_token_nothing_is_sent_and_nothing_fails(bot_api, config_file):
    result = run_week(config_file, env={"TELEGRAM_BOT_TOKEN": "", "TELEGRAM_CHAT_ID": ""})

    assert result.returncode == 0
    assert bot_api.requests == []
    assert "TELEGRAM_BOT_TOKEN or TELEGRAM_CHAT_ID not set" in result.stderr


def test_events_not_listed_in_notify_send_nothing(bot_api, config_file, settings):
    settings["telegram"]["notify"] = '["FAILURE"]'
    apply_settings(settings, config_file)

    assert run_week(config_file).returncode == 0
    assert bot_api.requests == []


def test_a_telegram_setting_that_does_not_parse_is_named_and_the_messages_go_with_its_default(
        bot_api, config_file, settings, input_dir):
    """A typo in the messages' own settings must not stop the week, nor silence it: Luigi's refusal
    came in the handlers, and took every message of the run with it."""
    settings["telegram"].update({"notify": "SUCCESS, FAILURE", "timeout": "soon"})  # not a JSON list; no number
    apply_settings(settings, config_file)
    (input_dir / "top_popular.parquet").unlink()

    result = run_week(config_file)

    assert result.returncode == TASK_FAILED
    [text] = bot_api.texts()
    assert text.startswith("weekly-recs FAILED: CheckInputs for week 2026-11-21\n")
    said = ("[telegram] notify = SUCCESS, FAILURE does not parse (Expecting value: line 1 column 1 (char 0)): "
            "its default is used",
            "[telegram] timeout = soon does not parse (could not convert string to float: 'soon'): "
            "its default is used")
    assert text.endswith("\n".join(said))
    assert all(f"Telegram: {line}" in result.stderr for line in said)


def test_notify_naming_an_event_there_is_not_sends_every_event(bot_api, settings, monkeypatch):
    """`SUCESS` would have silenced the success message without a word."""
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", CHAT)
    settings["telegram"]["notify"] = '["SUCESS", "FAILURE"]'
    apply_settings(settings)

    assert notify.enabled("SUCCESS") and notify.enabled("ROLLBACK")
    assert notify.send("weekly-recs: week 2026-11-21 published")
    assert bot_api.texts() == ['weekly-recs: week 2026-11-21 published\n[telegram] notify = ["SUCESS", "FAILURE"] '
                               "does not parse (no event SUCESS; a JSON list of SUCCESS, FAILURE, BROKEN_TASK, "
                               "PROCESS_FAILURE, TIMEOUT, ROLLBACK is expected): its default is used"]


@pytest.mark.parametrize(("written", "why"), [("5", "'int' object is not iterable"),
                                            ('"FAILURE"', "no event F, A, I, L, U, R, E; a JSON list of SUCCESS, ")])
def test_notify_that_is_no_json_list_sends_every_event(written, why, settings):
    settings["telegram"] = {"notify": written}
    apply_settings(settings)

    [said] = config.telegram_leniently()[1]
    assert said.startswith(f"[telegram] notify = {written} does not parse ({why}")
    assert notify.enabled("SUCCESS")


NO_TELEGRAM = {"TELEGRAM_BOT_TOKEN": "", "TELEGRAM_CHAT_ID": ""}


def test_a_week_gone_live_pings_the_heartbeat_and_a_rerun_or_a_failed_week_does_not(monitor, config_file,
                                                                                    input_dir):
    """A monitor outside the host that hears nothing for a week and its grace says what nothing here
    can: cron, or the host, gone for good."""
    environment = {**NO_TELEGRAM, "HEARTBEAT_URL": monitor.url}

    assert run_week(config_file, env=environment).returncode == 0
    assert monitor.pings == [monitor.check]

    assert run_week(config_file, env=environment).returncode == 0  # done already: nothing went live
    (input_dir / "top_popular.parquet").unlink()
    failed = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-28", env=environment)
    assert failed.returncode == TASK_FAILED
    assert monitor.pings == [monitor.check]


def test_a_monitor_that_does_not_answer_never_fails_the_week_nor_shows_its_url(config_file):
    check = f"/ping/{uuid.uuid4()}"

    result = run_week(config_file, env={**NO_TELEGRAM, "HEARTBEAT_URL": f"http://127.0.0.1:{free_port()}{check}"})

    assert result.returncode == 0
    assert "Heartbeat not sent: ConnectionError" in result.stderr
    assert check not in result.stdout + result.stderr


def test_failure_messages_stay_under_telegrams_limit_and_hide_secrets(settings, monkeypatch):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    problem = RuntimeError(f"dsn postgresql://u:hunter2@db/x token {TOKEN} " + "x" * 10_000)

    from pipeline import TrainCandidates

    text = notify.failure_message(TrainCandidates(), problem)

    assert len(text) <= notify.TELEGRAM_LIMIT
    assert TOKEN not in text and "hunter2" not in text


def test_a_run_by_hand_through_a_luigid_that_is_down_sends_a_failure_naming_it(bot_api, config_file, settings,
                                                                                  conn):
    """Without `--local-scheduler` the week runs through `luigid`; one that is not there runs nothing,
    and says so (cron's firing runs the week with the local scheduler instead: `test_deploy.py`)."""
    settings.setdefault("core", {}).update({"rpc-retry-attempts": "2", "rpc-retry-wait": "1"})  # of 3, 30 s
    apply_settings(settings, config_file)
    port = free_port()

    result = run_luigi(config_file, "WeeklyRecs", "--week", "2026-11-21", "--scheduler-port", str(port),
                       env=TELEGRAM_ENV)

    assert result.returncode == UNHANDLED
    [text] = bot_api.texts()
    assert text.startswith("weekly-recs FAILED: WeeklyRecs for week 2026-11-21\n")
    assert f"RPCError: Errors (2 attempts) when connecting to remote scheduler 'http://localhost:{port}'" in text
    assert query(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
