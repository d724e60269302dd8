"""What cron's firing says where Luigi's handlers cannot: they speak only for a run that started and
ended on its own.

    python -m pipeline.cron overdue                 the run cron fired before still holds var/cron.lock
    python -m pipeline.cron killed WEEK SIGNAL      the run was killed by a signal (the OOM killer's SIGKILL)
    python -m pipeline.cron running WEEK            the morning after: WEEK's run has not ended
    python -m pipeline.cron cut-off WEEK            WEEK's run was cut off by its host going down
    python -m pipeline.cron unfired-since LAST      prints the week of a Saturday firing that never came
                                                    after the one of LAST (the host down at 21:05), if any
    python -m pipeline.cron unfired WEEK            says it
    python -m pipeline.cron unmade WEEK             prints WEEK's week if it is not made (its firing failed)
    python -m pipeline.cron failed WEEK             says that it runs once more
    python -m pipeline.cron scheduler WEEK          prints --local-scheduler where luigid would be used and does
                                                    not answer, with Luigi's words in the log; nothing otherwise
    python -m pipeline.cron local WEEK              makes WEEK with the local scheduler, one such run at a time
                                                    across hosts, the first saying that luigid is down: another
                                                    waits for it, then makes what it left

`deploy/run-week` runs these; a run whose package does not import is said by `deploy/not_started.py`,
which needs nothing of this package. Before 2026-12-07 each of these ended silently: a stuck run was
said by nothing until the next Saturday's firing (and silenced it and every one after it), a run
killed by the OOM killer or cut off by a reboot left the week unpublished without a word, and so did
a host down at the firing's minute. And until the check's second try (also 2026-12-07) a week whose
run failed (its export late, the database down at 21:05) waited for an operator, though its alert
came at night and a second try in the morning would most often make it. A `luigid` down at the
firing's minute (at boot, not started yet) cost the week too, where the local scheduler makes it as
well. And with `luigid` down on a deployment of several worker hosts, until 2026-12-07 every host's
firing made the whole week at once, none knowing of the others: the fits made on each, the events
stage's files written over each other's. Specs in `tests/test_deploy.py`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import date, datetime, time, timedelta

import luigi.interface
import luigi.retcodes
import luigi.rpc

from pipeline import db, notify, publish
from pipeline.wrapper import WeeklyRecs

FIRING = time(21, 5)  # deploy/crontab's Saturday firing (test_deploy holds them together)
PROBLEMS = {
    "overdue": "not started: the run cron fired before it still holds var/cron.lock "
               "(stuck? `lslocks | grep cron.lock` names its process)",
    "killed": "killed by {signal} before it ended, so no task could say so ({why}); nothing half-made went "
              "live, and a rerun resumes where it stopped",
    "running": "still running, hours after cron fired it (stuck? `lslocks | grep cron.lock` names its "
               "process); the web service reads the week before until it ends",
    "cut-off": "cut off before it ended (its host went down, or was going down: a SIGTERM); it runs again now",
    "unfired": f"not made: cron's firing for it never came (the host down at {FIRING:%H:%M} on Saturday, or "
               "cron?); it runs now",
    "failed": "not made: the run cron fired for it failed (its alert said why); it runs once more now, and is "
              "left to an operator if it fails again",
}
MADE_ELSEWHERE = ("weekly-recs: week {week} is being made by another run with the local scheduler ({holder}); "
                  "this one waits for it to end, then makes what it left")
DEAD_HOST_SECONDS = 60  # a host gone silent for this long (then 6 probes 10 s apart) lets go of the week
SCHEDULER_REFUSED = "weekly-recs: luigid does not answer ({refused}); the week runs with the local scheduler"
SCHEDULER_DOWN = ("luigid does not answer at {url} (its error in the cron log of {host}): the week runs with the "
                  "local scheduler on {host} instead, unseen by the visualizer; start luigid (make scheduler, or "
                  "docker compose up -d luigid)")
WHY_KILLED = {signal.SIGTERM: "a host shutting down? cron's next check, at boot or on Sunday morning, runs it again"}
OOM_KILLER = "the OOM killer? `journalctl -k | grep -i 'killed process'`"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def due_week(now: datetime) -> date:
    """The week of cron's latest Saturday firing at or before `now`."""
    saturday = WeeklyRecs(week=now.date()).week
    return saturday - timedelta(weeks=1) if saturday == now.date() and now.time() < FIRING else saturday


def unfired(last_fired: date, now: datetime) -> date | None:
    """The week whose firing never came after the one that made `last_fired`'s week, if there is one."""
    due = due_week(now)
    return due if WeeklyRecs(week=last_fired).week < due else None


def unmade(week: date) -> date | None:
    """`week`'s week, unless it was made since its firing failed (by hand, say). A database that cannot
    say counts as unmade: the run then says what is wrong, as a firing would."""
    task = WeeklyRecs(week=week)
    try:
        return None if task.complete() else task.week
    except Exception:  # whatever stops the check stops the run too, which says it
        return task.week


def unreachable_scheduler() -> str:
    """Luigi's own words for the `luigid` a run would use where it does not answer after Luigi's own
    retries (`[core] rpc-retry-attempts`, `rpc-retry-wait`); '' where it answers or is not used."""
    if luigi.interface.core().local_scheduler:
        return ""
    try:
        luigi.rpc.RemoteScheduler(scheduler_url()).worker_list()
    except luigi.rpc.RPCError as error:
        return f"{type(error).__name__}: {error}"
    return ""


def scheduler_url() -> str:
    core = luigi.interface.core()
    return core.scheduler_url or f"http://{core.scheduler_host}:{core.scheduler_port}/"  # as Luigi makes it


def scheduler_flag(week: date) -> str:
    """`--local-scheduler` for a run whose `luigid` does not answer, Luigi's words in the host's log:
    the visualizer is for people, and its outage must not cost the web service its week.
    `deploy/run-week` then makes the week with `made_alone`, which says it once for every host: a
    deployment that uses `luigid` may have workers on several."""
    if refused := unreachable_scheduler():
        print(db.redact(SCHEDULER_REFUSED.format(refused=refused)), file=sys.stderr, flush=True)  # a URL's password
        return "--local-scheduler"
    return ""


def made_alone(week: date) -> None:
    """`luigi --module pipeline WeeklyRecs --week WEEK --local-scheduler` while holding the week
    (`week_held`); the process exits with Luigi's status. The run that holds the week first says
    that `luigid` is down, and the others only wait: one alert, however many hosts fired."""
    week = WeeklyRecs(week=week).week
    with week_held(week) as first:
        if first:
            say(week, SCHEDULER_DOWN.format(url=scheduler_url(), host=socket.gethostname()))
        luigi.retcodes.run_with_retcodes(["--module", "pipeline", "WeeklyRecs", "--week", week.isoformat(),
                                          "--local-scheduler"])


@contextmanager
def week_held(week: date) -> Iterator[bool]:
    """The week's lock in PostgreSQL, held in a session of its own (one connection more than the run's),
    and whether it was free: false for a run that waited for another to end.
    With no `luigid` to hand each task to one worker, the firings of several worker hosts would each
    make the whole week at once; holding the week, the first makes it, and another waits, then finds
    it made (or makes what a failed one left: a second try). A host that dies lets go as its session
    ends: at once where the server sees its process go, over TCP once its silence outlasts the
    keepalives set here. Where the database does not answer, the run goes on without the lock, and
    fails saying so as any run does."""
    try:
        session = db.server().connect()
    except Exception:  # whatever keeps the lock from being taken stops the run too, which says it
        yield True
        return
    with closing(session), session.cursor() as cur:
        session.autocommit = True
        cur.execute("SELECT set_config('application_name', %s, false), set_config('statement_timeout', '0', false),"
                    " set_config('tcp_keepalives_idle', %s, false), set_config('tcp_keepalives_interval', '10', false),"
                    " set_config('tcp_keepalives_count', '6', false)",
                    (f"weekly-recs week {week} on {socket.gethostname()}, pid {os.getpid()}", str(DEAD_HOST_SECONDS)))
        key = publish.lock_key(f"week {week} with the local scheduler")
        cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
        free = cur.fetchone()[0]
        if not free:
            print(MADE_ELSEWHERE.format(week=week, holder=week_holder(cur, key)), file=sys.stderr, flush=True)
            cur.execute("SELECT pg_advisory_lock(%s)", (key,))
        yield free


def week_holder(cur, key: int) -> str:
    """The session that holds the week's lock, by its application_name (host and pid) and start."""
    cur.execute("SELECT a.application_name || ', since ' || to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ')"
                " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND l.classid = 0 AND l.objid = %s AND l.objsubid = 1", (key,))
    held = cur.fetchone()
    return held[0] if held else "it has just ended"


QUESTIONS = {"unfired-since": lambda week: unfired(week, datetime.now()), "unmade": unmade,
             "scheduler": scheduler_flag}
COMMANDS = {"local": made_alone}


def say(week: date, problem: str) -> None:
    """In the log (cron's output) and on Telegram, as a failure of the week's run."""
    message = notify.failure_message(WeeklyRecs(week=week), problem)
    print(message, file=sys.stderr, flush=True)
    if notify.enabled("FAILURE"):
        notify.send(message)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cron", description=__doc__.splitlines()[0])
    parser.add_argument("problem", choices=[*PROBLEMS, *QUESTIONS, *COMMANDS])
    parser.add_argument("week", nargs="?", type=date.fromisoformat, default=date.today(),
                        help="any day of the week the firing ran (default: today)")
    parser.add_argument("signal", nargs="?", type=int, default=0, help="the signal that killed the run")
    args = parser.parse_args(argv)
    if args.problem in QUESTIONS:
        print(QUESTIONS[args.problem](args.week) or "")
        return
    if args.problem in COMMANDS:
        COMMANDS[args.problem](args.week)  # exits with the run's status
    why = WHY_KILLED.get(args.signal, OOM_KILLER)
    say(args.week, PROBLEMS[args.problem].format(signal=signal_name(args.signal), why=why))


if __name__ == "__main__":
    main()
