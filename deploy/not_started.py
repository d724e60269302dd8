"""Said when cron's run failed before the pipeline could say anything: it could not start.

    python3 -I deploy/not_started.py      (deploy/run-week runs it when Luigi's run failed)

A broken install (a dependency upgraded half way, the interpreter the virtualenv points at removed by
an OS upgrade), a luigi.cfg that does not parse, or a bad value in Luigi's own `[core]`, `[worker]`,
`[retcode]` or `[resources]` stops `luigi --module pipeline` before any task, so no event handler
runs and, before 2026-12-07, no alert went out: the week just stayed unpublished. This makes the same start again,
the package imported and Luigi's own settings read, under the run's interpreter and environment. If
that works, the run's own handlers said what happened and this says nothing; if not, it logs and
sends the error. It uses the standard library only, since what it reports may be the very thing that
is broken, and reads `[telegram]` leniently from the config files the project documents, since one
may be what broke.
"""

from __future__ import annotations

import configparser
import json
import os
import socket
import subprocess
import urllib.request
from datetime import date

VENV_PYTHON = ".venv/bin/python"
CONFIG_FILES = ("/etc/luigi/client.cfg", "/etc/luigi/luigi.cfg", "client.cfg", "luigi.cfg")  # Luigi's, in its order
RUN_START = ("import luigi.interface, luigi.retcodes, luigi.worker, pipeline; luigi.interface.core(); "
             "luigi.worker.worker(); luigi.retcodes.retcode(); pipeline.config.postgres_slots()")


def start_error() -> str:
    """Why the run's start fails under its interpreter and environment, with the cause it was raised from
    where there is one (Luigi names a setting it could not read, its cause the value); '' when it does not."""
    try:
        result = subprocess.run([VENV_PYTHON, "-P", "-c", RUN_START], capture_output=True, text=True, timeout=600)
    except OSError as error:
        return f"{VENV_PYTHON}: {error.strerror}"
    if result.returncode == 0:
        return ""
    *causes, error = result.stderr.split("\nThe above exception was the direct cause of the following exception:\n")
    said = _exception_words(error) or f"exit status {result.returncode}"
    return f"{said} ({_exception_words(causes[-1])})" if causes else said


def _exception_words(traceback: str) -> str:
    """An exception's own words in a printed traceback: its unindented last lines."""
    words: list[str] = []
    for line in reversed(traceback.rstrip().splitlines()):
        if line.startswith((" ", "Traceback")):
            break
        words.insert(0, line.strip())
    return " ".join(words)


def telegram_settings() -> dict[str, str]:
    """`[telegram]` from the files Luigi reads, then LUIGI_CONFIG_PATH, each later one overriding; a file
    that does not parse is left out."""
    settings: dict[str, str] = {}
    for path in filter(None, (*CONFIG_FILES, os.environ.get("LUIGI_CONFIG_PATH"))):
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read(path)
        except configparser.Error:
            continue
        if parser.has_section("telegram"):
            settings.update(parser["telegram"])
    return settings


def redacted(text: str) -> str:
    for secret in filter(None, (os.environ.get("TELEGRAM_BOT_TOKEN"), os.environ.get("PGPASSWORD"))):
        text = text.replace(secret, "***")
    return text


def wanted(settings: dict[str, str]) -> bool:
    """False only where `[telegram] notify` clearly leaves failures out."""
    try:
        return "FAILURE" in json.loads(settings["notify"])
    except (KeyError, ValueError, TypeError):
        return True


def timeout(settings: dict[str, str]) -> float:
    """`[telegram] timeout`, or its default where it does not parse, as the pipeline reads it."""
    try:
        seconds = float(settings.get("timeout", 5))
    except ValueError:
        return 5.0
    return seconds if seconds > 0 else 5.0


def send(text: str, settings: dict[str, str]) -> None:
    token, chat_id = os.environ.get("TELEGRAM_BOT_TOKEN"), os.environ.get("TELEGRAM_CHAT_ID")
    if not token or not chat_id:
        print("Telegram: TELEGRAM_BOT_TOKEN or TELEGRAM_CHAT_ID not set, no message sent")
        return
    url = f"{settings.get('api_url', 'https://api.telegram.org').rstrip('/')}/bot{token}/sendMessage"
    body = json.dumps({"chat_id": chat_id, "text": text[:4096]}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout(settings)):
            pass
    except (OSError, ValueError) as error:
        print(f"Telegram message not sent: {redacted(f'{type(error).__name__}: {error}')}")


if __name__ == "__main__":
    if error := start_error():
        settings = telegram_settings()
        log = settings.get("log_location", "var/log/weekly-recs.log")
        message = (f"weekly-recs FAILED: the run of {date.today()} could not start\n{redacted(error)}\n"
                   "the package or Luigi's own settings fail as the run starts: no task ran, the live week is "
                   f"unchanged\nhost: {socket.gethostname()}\nlog: {log}")
        print(message, flush=True)
        if wanted(settings):
            send(message, settings)
