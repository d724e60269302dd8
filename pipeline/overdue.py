"""Said when cron's firing finds the week before still running: the week is not started.

    python -m pipeline.overdue

`deploy/crontab` runs this when `flock` finds `var/cron.lock` held. A run that has not ended a week
after it started is stuck (a read that never returns, a host paused), and Luigi's handlers never
hear of it: without this the firing would end silently, and so would every firing after it, for as
long as the stuck run holds the lock. Cron's command then exits 75 (`flock -E 75`). Its spec runs the
crontab's command (`tests/test_deploy.py`).
"""

from __future__ import annotations

from datetime import date

from pipeline import notify
from pipeline.wrapper import WeeklyRecs

if __name__ == "__main__":
    message = notify.failure_message(WeeklyRecs(week=date.today()), "not started: the run cron fired before it "
                                     "still holds var/cron.lock (stuck? `lslocks | grep cron.lock` names its process)")
    print(message, flush=True)
    if notify.enabled("FAILURE"):
        notify.send(message)
