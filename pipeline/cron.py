"""What cron's firing says where Luigi's handlers cannot: they speak only for a run that started and
ended on its own.

    python -m pipeline.cron overdue                 the run cron fired before still holds var/cron.lock
    python -m pipeline.cron killed WEEK SIGNAL      the run was killed by a signal (the OOM killer's SIGKILL)
    python -m pipeline.cron running WEEK            the morning after: WEEK's run has not ended
    python -m pipeline.cron cut-off WEEK            WEEK's run was cut off by its host going down
    python -m pipeline.cron unfired-since LAST      prints the week of a Saturday firing that never came
                                                    after the one of LAST (the host down at 21:05), if any
    python -m pipeline.cron unfired WEEK            says it

`deploy/run-week` runs these; a run whose package does not import is said by `deploy/not_started.py`,
which needs nothing of this package. Before 2026-12-07 each of these ended silently: a stuck run was
said by nothing until the next Saturday's firing (and silenced it and every one after it), a run
killed by the OOM killer or cut off by a reboot left the week unpublished without a word, and so did
a host down at the firing's minute. Specs in `tests/test_deploy.py`.
"""

from __future__ import annotations

import argparse
import signal
from datetime import date, datetime, time, timedelta

from pipeline import notify
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
}
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cron", description=__doc__.splitlines()[0])
    parser.add_argument("problem", choices=[*PROBLEMS, "unfired-since"])
    parser.add_argument("week", nargs="?", type=date.fromisoformat, default=date.today(),
                        help="any day of the week the firing ran (default: today)")
    parser.add_argument("signal", nargs="?", type=int, default=0, help="the signal that killed the run")
    args = parser.parse_args(argv)
    if args.problem == "unfired-since":
        print(unfired(args.week, datetime.now()) or "")
        return
    why = WHY_KILLED.get(args.signal, OOM_KILLER)
    problem = PROBLEMS[args.problem].format(signal=signal_name(args.signal), why=why)
    message = notify.failure_message(WeeklyRecs(week=args.week), problem)
    print(message, flush=True)
    if notify.enabled("FAILURE"):
        notify.send(message)


if __name__ == "__main__":
    main()
