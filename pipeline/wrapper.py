"""WeeklyRecs: the one task cron fires; its requirements order the week, and it puts the week live."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

import psycopg2

from pipeline import catalog, config, db, housekeeping, live_locks, publish
from pipeline.base import StagingTask, WeekTask
from pipeline.load import DefaultRecs, OnlineRecs
from pipeline.rank import RankCandidates, TrainRanker

log = logging.getLogger("luigi-interface")


class WeeklyRecs(WeekTask):
    """Puts the week's five staged tables live in one transaction, with its marker: the week is whole.

    Until then the web service reads last week, all of it; after any failure it still does. The
    swap never keeps the web service waiting: it takes the live names only when no one holds them
    (`pipeline.live_locks`), and shows in the visualizer whom it waits for. Then it settles the week
    (`settle`), and only a settled week is complete.
    """

    table = "weekly_recs"
    notes: tuple[str, ...] = ()  # for the success message: what logical replicas miss, what repeats, what failed

    def requires(self) -> list[WeekTask]:
        config.postgres_slots()  # a cap that does not parse stops the week as it is scheduled (`WeekTask.resources`)
        return [DefaultRecs(week=self.week), OnlineRecs(week=self.week), RankCandidates(week=self.week)]

    def published(self) -> list[StagingTask]:
        """Every task that stages a table this week, the ranker's inputs included."""
        default_recs, online_recs, ranker = self.requires()
        return [default_recs, online_recs, *ranker.inputs().values(), ranker]

    def live_names(self) -> list[str]:
        """The published tables' names, which the web service and the analysts read."""
        return [task.table for task in self.published()]

    def lock_names(self) -> tuple[str, ...]:
        return (self.table, *self.live_names())

    def row_counts(self, conn) -> dict[str, int]:
        with conn.cursor() as cur:
            return {task.table: publish.row_count(cur, publish.week_table(cur, task.table, self.week))
                    for task in self.published()}

    def complete(self) -> bool:
        """Put live, and settled: a run stopped after the swap (killed while a refresh waits for a
        `VACUUM`, or a step failed) leaves what follows the swap to its next run. A week no longer
        live needs none of it: the publish or rollback that replaced it did those steps since (and
        so every week put live before settling was marked is complete)."""
        with db.connection() as conn, conn.cursor() as cur:
            return self.output().exists(conn) and (
                self.settled().exists(conn) or self.live_week(cur) != self.week)

    def is_live(self) -> bool:
        """The swap committed: the week's marker is written in its transaction."""
        return self.marked_by(self.output())

    def live_week(self, cur) -> date | None:
        """The week the web service reads: the one its tables hold, which go live together."""
        return publish.live_week(cur, self.live_names()[0])

    def settled(self) -> db.MarkerTarget:
        """The marker of the steps after the swap, written once each of them has run."""
        return db.marker(self.table, f"{self.task_id}_settled")

    def run(self) -> None:
        said = [] if self.is_live() else self.go_live()
        self.notes = (*said, *self.settle())

    def settle(self) -> list[str]:
        """What follows the swap, and the week marked settled once none of it failed; returns the
        notes for the success message: the views left stale and the steps that failed."""
        tables, stale = self.live_names(), []
        failed = live_locks.after_the_swap(self.week, {
            "sampling the live names": lambda: live_locks.analyze_live_names(tables, self.week),
            "refreshing the materialized views over them": lambda: stale.extend(
                live_locks.refresh_materialized_views(tables, self.week)),
            "dropping what the week left behind": lambda: live_locks.drop_obsolete(
                self.lock_names(), tables, self.week, config.pipeline().retention),
            "housekeeping": lambda: housekeeping.after_going_live(self.week),
            "counting the rows for the summary": self.print_summary,
        }, self.set_status_message)
        if not failed:
            self.settled().touch_once()
        return [*stale, *(f"live, but failed, for a rerun or the next publish to do: {step}"
                          for step in failed)]

    def go_live(self) -> list[str]:
        """Checks the week once more and swaps it live; returns what its readers should know of it."""
        tables, what = self.live_names(), f"week {self.week} not published"
        with db.connection() as conn, conn.cursor() as cur:
            self.check_can_go_live(cur)
            for task in self.published():
                task.check_file_unchanged(cur)
            said = self.said([*self.missed(cur), *self.not_replicated(cur), *self.reshaped(cur), *self.repeated(cur)])
        live_locks.prepare_to_attach({table: publish.staged_name(table, self.week) for table in tables}, self.week,
                                     what, self.set_status_message)
        try:
            live_locks.when_unblocked(self.put_live, publish.swapped(tables, self.week), what, self.set_status_message)
        except psycopg2.OperationalError as lost:
            if not self.is_live():  # the connection was lost before the swap committed: nothing changed
                raise
            log.warning("week %s is live: the connection was lost as the swap committed (%s)", self.week,
                        db.first_line(lost))
        return said

    def check_can_go_live(self, cur) -> None:
        """Refuse a week that could never go live, or never stay, or is not due: before anything of the
        week is staged (`CheckInputs`), and again before the swap."""
        self.check_begun()
        for table in self.live_names():
            live = publish.live_week(cur, table)
            if live is None:
                continue
            if self.week >= live:
                publish.refuse_swaps(cur, [table])
            else:
                self.check_kept(cur, table, live)

    def check_begun(self) -> None:
        """A week whose Saturday has begun nowhere on Earth (UTC+14) is a mistyped `--week`: once live,
        it would make every week run before it a backfill, archived behind it, while the web service
        served it. Nowhere, so that a worker west of the host cron fires on never refuses cron's week."""
        now = datetime.now(UTC)
        if self.week > (now + timedelta(hours=14)).date() and not config.pipeline().allow_future_weeks:
            raise ValueError(f"week {self.week} has not begun anywhere yet (it is {now:%Y-%m-%d %H:%M} UTC): live, "
                             "it would make every week run until then a backfill, archived behind it. A mistyped "
                             "--week? [pipeline] allow_future_weeks (--pipeline-allow-future-weeks) publishes it")

    def check_kept(self, cur, table: str, live: date) -> None:
        """A backfill goes to the archives, of which a publish keeps the newest `retention`: one older
        than those would be dropped the moment it went live, its work lost and its markers saying done."""
        retention = config.pipeline().retention
        kept = publish.kept_archives([*publish.archived_weeks(cur, table), self.week], retention)
        if self.week not in kept:
            archives = f" and the archived weeks {', '.join(map(str, kept))}" if kept else ""
            raise ValueError(f"week {self.week} is older than what [pipeline] retention = {retention} keeps of "
                             f"{table} (the live week {live}{archives}): backfilled, it would be archived and "
                             "dropped at once; raise [pipeline] retention to keep it")

    def said(self, notes: list[str]) -> list[str]:
        """What the week's going live does that its readers should know of, in the log (and in the
        success message)."""
        for note in notes:
            log.warning("week %s: %s", self.week, note)
        return notes

    def missed(self, cur) -> list[str]:
        """The weeks between the live week and this one that never went live: the last word on a
        week that cron's second try did not make, or that was killed or run by hand, which no check
        of cron's runs again, while the web service served the week before it for a week more."""
        live = self.live_week(cur)
        if live is None or self.week - live <= timedelta(weeks=1):
            return []
        first, last = live + timedelta(weeks=1), self.week - timedelta(weeks=1)
        count = (last - first).days // 7 + 1
        weeks = (", ".join(str(first + timedelta(weeks=n)) for n in range(count)) if count <= 4
                 else f"{count} weeks, {first} to {last}")
        return [f"never published, between the live week {live} and this one: {weeks} (their runs failed twice, "
                f"were killed, or ran by hand; `WeeklyRecsRange --start {first} --stop {last}` archives them)"]

    def not_replicated(self, cur) -> list[str]:
        """A week goes live by attaching its table, which logical decoding never sees: a subscriber of
        a publication that carries a live name keeps the rows it had. Said, not refused: the week
        still goes live for every reader of this server and its physical standbys."""
        carried = {table: catalog.publications(cur, table) for table in self.live_names()}
        return [f"not carried by logical replication: {table} (publication {', '.join(names)}); its subscribers "
                f"keep the rows they had" for table, names in carried.items() if names]

    def reshaped(self, cur) -> list[str]:
        """The live names whose columns the week changes (`publish.columns_changed`); a backfill,
        which goes to the archives, changes none."""
        return [note for table in self.live_names() if (publish.live_week(cur, table) or self.week) <= self.week
                and (note := publish.columns_changed(cur, table, publish.staged_name(table, self.week)))]

    def repeated(self, cur) -> list[str]:
        """The tables loaded from the very file their live week was (`publish.source_digest`): the
        popular and the similar items may stay the same for a week, and the candidates do only when
        asked (`[pipeline] allow_same_files`), but a week of last week's rows is not to pass for a
        new one unsaid."""
        repeated = {table: publish.live_week_repeated(cur, table, self.week, publish.source_digest(
            cur, publish.staged_name(table, self.week))) for table in self.live_names()}
        return [f"{table}: loaded from the very file the live week {live} was, so its rows are that week's again"
                for table, live in repeated.items() if live is not None]

    def print_summary(self) -> None:
        with db.connection() as conn:
            counts = self.row_counts(conn)
        print(week_summary(self.week, counts, str(db.server())))

    def put_live(self) -> None:
        with self.marking_once() as transaction:
            if transaction is None:
                return
            _, cur = transaction
            live_locks.bounded(cur)
            publish.go_live(cur, self.live_names(), self.week)
            for task in self.published():
                task.go_live_alongside(cur)
            publish.grant_readers(cur, self.served_tables(), config.postgres().readers)

    def served_tables(self) -> list[str]:
        """What the web service reads: the served tables' live names and the model's metrics."""
        return [task.table for task in self.published() if task.served] + [TrainRanker(week=self.week).metrics_table]


def week_summary(week, counts: dict[str, int], where: str) -> str:
    lines = [f"weekly-recs: week {week} published to {where}"]
    lines += [f"  {table:<22}{rows:>12,} rows" for table, rows in counts.items()]
    return "\n".join(lines)
