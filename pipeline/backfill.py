"""WeeklyRecsRange: every week between two dates, for missed weeks and backfills.

    luigi --module pipeline WeeklyRecsRange --start 2026-10-31 --stop 2026-11-21

Luigi's own range tasks count in days and look back only `days_back` (100) days by default,
silently dropping older weeks; this one takes every Saturday from `start` up to `stop`, inclusive.
Weeks already done are complete and skipped. Each week reads its own `input_dir` (use `{week}`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

import luigi

from pipeline.base import WeekParameter
from pipeline.wrapper import WeeklyRecs


class WeeklyRecsRange(luigi.Task):
    """The weeks go live in turn, oldest first, as the missed Saturdays would have, and a failed week
    stops the ones after it. Required all at once, Luigi runs the newest first: each older week is
    then a backfill, archived behind the newer ones, and past `[pipeline] retention` refused."""

    start = WeekParameter("start", description="first week (any day of it)")
    stop = WeekParameter("stop", description="last week (any day of it), included")

    def weeks(self) -> list[WeeklyRecs]:
        """Refused for a stop before the start (swapped dates): no week between them, and the range
        would be complete, saying all was well with nothing done."""
        if self.stop < self.start:
            raise ValueError(f"WeeklyRecsRange: --stop {self.stop} is before --start {self.start}, so no week is "
                             "between them (swapped?)")
        return [WeeklyRecs(week=week) for week in weeks_between(self.start, self.stop)]

    def complete(self) -> bool:
        return all(week.complete() for week in self.weeks())

    def run(self) -> Iterator[WeeklyRecs]:
        for week in self.weeks():  # noqa: UP028 - Luigi sends back each week's output, which a list refuses
            yield week


def weeks_between(first: date, last: date) -> list[date]:
    return [first + timedelta(weeks=n) for n in range((last - first).days // 7 + 1)]
