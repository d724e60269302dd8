"""WeeklyRecs: the one task cron fires; its requirements order the week."""

from __future__ import annotations

import logging

from pipeline import db
from pipeline.base import PublishingTask, WeekTask
from pipeline.load import DefaultRecs, OnlineRecs
from pipeline.rank import RankCandidates

log = logging.getLogger("luigi-interface")

class WeeklyRecs(WeekTask):
    """Complete when every table of the week is published; its own marker records the week as whole."""

    table = "weekly_recs"

    def requires(self) -> list[WeekTask]:
        return [DefaultRecs(week=self.week), OnlineRecs(week=self.week),
                RankCandidates(week=self.week)]

    def published(self) -> list[PublishingTask]:
        """Every task that publishes a table this week, the ranker's inputs included."""
        default_recs, online_recs, ranker = self.requires()
        return [default_recs, online_recs, *ranker.requires().values(), ranker]

    def row_counts(self, conn) -> dict[str, int]:
        with conn.cursor() as cur:
            return {task.table: db.row_count(cur, db.week_table(conn, task.table, self.week))
                    for task in self.published()}

    def run(self) -> None:
        with self.marking_once() as transaction:
            if transaction is None:
                return
            counts = self.row_counts(transaction[0])
        print(week_summary(self.week, counts, str(db.server())))


def week_summary(week, counts: dict[str, int], where: str) -> str:
    lines = [f"weekly-recs: week {week} published to {where}"]
    lines += [f"  {table:<22}{rows:>12,} rows" for table, rows in counts.items()]
    return "\n".join(lines)
