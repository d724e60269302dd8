"""Telegram messages from Luigi's event handlers: one on a finished week, one on every failure; and
a finished week's heartbeat, for a monitor outside the host.

Handlers are registered on `WeekTask`, `EventTask` and `WeeklyRecsRange`, so every pipeline task
reports its failures, those that stop a run before any task (a `complete()` or `requires()` that
raised) included. With `--workers N` they run in the forked task process, so each message is built
only from the task, the database and this process's start time, all of which that process has.
Sending never raises: an outage, a 429 or a bad token is logged (without the token) and the run
goes on.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from datetime import date

import luigi
import psycopg2
import requests

from pipeline import config, db
from pipeline.backfill import WeeklyRecsRange
from pipeline.base import WeekTask
from pipeline.events.tasks import EventTask
from pipeline.wrapper import WeeklyRecs

log = logging.getLogger("luigi-interface")

TELEGRAM_LIMIT = 4096
HEARTBEAT_TIMEOUT = 10.0  # seconds: a monitor's ping endpoint answers at once, or is down
RUN_STARTED = time.monotonic()


def send(text: str) -> bool:
    """POST one message to the Bot API; True when Telegram accepted it. A `[telegram]` value that does
    not parse is named in the log and at the end of the message, which goes with its default."""
    settings, problems = config.telegram_leniently()
    for problem in problems:
        log.warning("Telegram: %s", problem)
    token, chat_id = settings.token(), settings.chat_id()
    if not token or not chat_id:
        log.info("Telegram: TELEGRAM_BOT_TOKEN or TELEGRAM_CHAT_ID not set, no message sent")
        return False
    url = f"{settings.api_url.rstrip('/')}/bot{token}/sendMessage"
    footer = "".join(f"\n{problem}" for problem in problems)
    payload = {"chat_id": chat_id, "text": text[:TELEGRAM_LIMIT - len(footer)] + footer}
    for attempt in (1, 2):
        try:
            response = requests.post(url, json=payload, timeout=settings.timeout)
            answer = response.json()
        except (requests.RequestException, ValueError) as error:
            log.warning("Telegram message not sent: %s", db.redact(f"{type(error).__name__}: {error}", token))
            return False
        if answer.get("ok") is True:
            return True
        retry_after = (answer.get("parameters") or {}).get("retry_after")
        if response.status_code == 429 and attempt == 1 and retry_after is not None:
            time.sleep(min(float(retry_after), settings.max_retry_after))
            continue
        log.warning("Telegram message not sent: HTTP %s %s", response.status_code,
                    db.redact(str(answer.get("description", "")), token))
        return False
    return False


def success_message(task: WeeklyRecs) -> str:
    """Sent once the week is live, whatever failed after: then without the figures it could not read."""
    lines = [f"weekly-recs: week {task.week} published in {time.monotonic() - RUN_STARTED:.0f} s"]
    try:
        with db.connection() as conn:
            lines += [f"{table}: {rows:,} rows" for table, rows in task.row_counts(conn).items()]
            lines += validation_lines(conn, task.week)
    except (psycopg2.Error, OSError) as error:
        lines.append(f"row counts not read: {db.redact(db.first_line(error), config.postgres().resolved_password())}")
    lines += task.notes
    lines.append(f"host: {socket.gethostname()}")
    return "\n".join(lines)


def say_rolled_back(restored: date, replaced: date) -> None:
    """A rollback changes what the web service serves, as a publish does: the chat hears of both."""
    if enabled("ROLLBACK"):
        send(f"weekly-recs: week {restored} is live again, in place of week {replaced} (python -m pipeline.rollback)"
             f"\nhost: {socket.gethostname()}")


def validation_lines(conn, week: date) -> list[str]:
    """The ranker's validation NDCG@10 for the week, where the ranker has recorded one."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('model_metrics') IS NOT NULL")
        if not cur.fetchone()[0]:
            return []
        cur.execute("SELECT ndcg_at_10 FROM model_metrics WHERE week = %s ORDER BY trained_at DESC LIMIT 1", (week,))
        row = cur.fetchone()
    return [f"validation NDCG@10: {row[0]:.4f}"] if row else []


def failure_message(task: luigi.Task, problem: BaseException | str) -> str:
    settings, _ = config.telegram_leniently()
    if isinstance(problem, BaseException):
        problem = db.described(problem)
    what = f"{task.get_task_family()} for week {task.week}" if hasattr(task, "week") else str(task)
    text = (f"weekly-recs FAILED: {what}\n"
            f"{db.redact(problem, settings.token(), config.postgres().resolved_password())}\n"
            f"host: {socket.gethostname()}\nlog: {settings.log_location}")
    return text[:TELEGRAM_LIMIT]


def enabled(event: str) -> bool:
    settings, _ = config.telegram_leniently()
    return event in settings.notify


def _on_every_task(event: str) -> Callable:
    """Registers a handler of `event` on every task of the week's graph: the loads, the ranking and
    the wrapper (`WeekTask`), and the events stage (`EventTask`), whose failures were said by no
    message before 2026-12-07; and on the range of weeks a backfill runs (`WeeklyRecsRange`)."""
    def register(handler: Callable) -> Callable:
        for task_class in (WeekTask, EventTask, WeeklyRecsRange):
            task_class.event_handler(event)(handler)
        return handler
    return register


def _report_failure(event: str) -> Callable:
    def handler(task: luigi.Task, problem: BaseException | str) -> None:
        if enabled(event) and _not_yet_said(problem):
            send(failure_message(task, problem))
    return handler


_SAID: set[str] = set()


def _not_yet_said(problem: BaseException | str) -> bool:
    """One problem, one message: a bad setting, or a role that may not publish, breaks every task
    that reads it, as the run is scheduled or as each one runs. Within a process: with `--workers N`
    each task's process says its own."""
    described = db.described(problem) if isinstance(problem, BaseException) else problem
    new = described not in _SAID
    _SAID.add(described)
    return new


for _event in ("FAILURE", "BROKEN_TASK", "PROCESS_FAILURE", "TIMEOUT"):
    _on_every_task(getattr(luigi.Event, _event))(_report_failure(_event))


@_on_every_task(luigi.Event.DEPENDENCY_MISSING)
def _report_unchecked(task: luigi.Task) -> None:
    """A task whose `complete()` raised as the run was scheduled (the database down at 21:05): Luigi
    runs nothing and tells its handlers only `DEPENDENCY_MISSING`, without the error (no
    `BROKEN_TASK`: only Luigi's own e-mail, where one is set up, carries it), so the check is made
    once more here to name it. Luigi fires the event for this and for an external task's missing
    data, of which the pipeline has none."""
    try:
        task.complete()
    except Exception as error:  # what Luigi caught: it says why the week did not run
        problem: BaseException | str = error
    else:
        problem = "its complete() raised as the run was scheduled, and not when checked again: see the log"
    _report_failure("BROKEN_TASK")(task, problem)


def beat_heart() -> bool:
    """GET `HEARTBEAT_URL` once a week has gone live. A monitor outside the host that hears nothing
    for a week and its grace says what nothing here can: cron, or the host, gone for good. Like a
    message, it never fails the week; and its URL is a secret, so no line names it."""
    url = config.heartbeat_url()
    if not url:
        return False
    try:
        requests.get(url, timeout=HEARTBEAT_TIMEOUT).raise_for_status()
    except requests.RequestException as error:
        answer = f" {error.response.status_code}" if error.response is not None else ""
        log.warning("Heartbeat not sent: %s%s", type(error).__name__, answer)
        return False
    return True


@WeekTask.event_handler(luigi.Event.SUCCESS)
def _report_week(task: luigi.Task) -> None:
    """A week gone live: its heartbeat, whatever `notify` says, and its message."""
    if not isinstance(task, WeeklyRecs):
        return
    beat_heart()
    if enabled("SUCCESS"):
        try:
            send(success_message(task))
        except Exception as error:  # a report must never fail the week it reports
            log.warning("Telegram success message not built: %s", db.redact(str(error)))
