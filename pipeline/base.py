"""What every pipeline task shares: the week parameter, its marker target, staging a table for the week."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import luigi
import pyarrow as pa
from psycopg2 import sql

from pipeline import catalog, config, contracts, db, live_locks, pgcopy, publish
from pipeline.contracts import ContractError

log = logging.getLogger("luigi-interface")

A_SATURDAY = date(2026, 11, 21)


def published_table(name: str) -> luigi.Parameter:
    """The table a task publishes; `[TaskName] table = ...` in luigi.cfg renames it."""
    return luigi.Parameter(default=name, significant=False, description="the table this task publishes")


class WeekParameter(luigi.DateParameter):
    """Any day of the week names the same task: the Saturday on or before it. A value that is no date
    is refused naming the parameter: Luigi's own words (`day is out of range for month`) name none."""

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(interval=7, start=A_SATURDAY, **kwargs)
        self.name = name

    def parse(self, s: str) -> date:
        try:
            return super().parse(s)
        except ValueError as error:
            raise ValueError(f"{self.name} {s!r} is no date (YYYY-MM-DD, any day of the week): {error}") from None


def week_parameter() -> WeekParameter:
    return WeekParameter("week", default=date.today(), description="any day of the week to run; default: this week")


class WeekTask(luigi.Task):
    """A task of one week, marked done in PostgreSQL."""

    week = week_parameter()
    table: str = ""
    checked_name = staticmethod(config.checked_identifier)

    def output(self) -> db.MarkerTarget:
        return db.marker(self.checked_name(self.table, f"[{type(self).__name__}] table"), self.task_id)

    def complete(self) -> bool:
        return self.marked_by(self.output())

    def marked_by(self, marker: db.MarkerTarget) -> bool:
        """`marker` is there, and so is what it stands for (`holds_output`)."""
        with db.connection() as conn:
            if not marker.exists(conn):
                return False
            with conn.cursor() as cur:
                return self.holds_output(cur)

    def holds_output(self, cur) -> bool:
        """Whether what the marker stands for is still there (a marker alone suffices by default)."""
        return True

    def lock_names(self) -> tuple[str, ...]:
        return (self.table,)

    @property
    def resources(self) -> dict[str, int]:
        """A unit of `[resources] postgres` where it caps the tasks at work in the database at once:
        a DBA's bound on what the week takes from the shop's queries, however many workers and hosts.
        No unit where the setting does not parse: Luigi asks here out of its handlers' reach, so the
        week's scheduling refuses it (`WeeklyRecs.requires`), and says so."""
        try:
            return {"postgres": 1} if config.postgres_slots() else {}
        except ValueError:
            return {}

    def fresh_stage(self, cur, table: str, columns: sql.Composable, logged: bool = True) -> str:
        """The week's staging table of `table`, replacing one a forgotten run left once no one holds it."""
        live_locks.dropped_when_unheld(cur, publish.staged_name(table, self.week),
                                       f"{table} for week {self.week} not staged", self.set_status_message)
        return publish.stage(cur, table, self.week, columns, logged=logged)

    def reporting(self, batches: Iterator[pa.RecordBatch], total: int, message: str) -> Iterator[pa.RecordBatch]:
        """Rows done so far, shown in the visualizer every 16 batches and at the end.

        `message` is formatted with `done` and `total`.
        """
        done = 0
        for number, batch in enumerate(batches, start=1):
            yield batch
            done += batch.num_rows
            if number % 16 == 0 or done == total:
                self.set_status_message(message.format(done=done, total=total))
                self.set_progress_percentage(round(100 * done / max(total, 1)))

    @contextmanager
    def marking_once(self) -> Iterator[tuple | None]:
        """A transaction that ends with this task's marker, holding the task's locks throughout.

        Yields `(connection, cursor)`, or None when a concurrent run of the same week has done the
        task meanwhile: two cron firings or two workers never both do it.
        """
        target = self.output()
        target.create_marker_table()
        with db.connection() as conn:
            with conn.cursor() as cur:
                publish.lock(cur, *self.lock_names())
                if target.exists(conn) and self.holds_output(cur):
                    log.info("%s was completed meanwhile by another run", self)
                    yield None
                    return
                yield conn, cur
                cur.execute(sql.SQL("DELETE FROM {} WHERE update_id = %s").format(
                    sql.Identifier(target.marker_table)), (target.update_id,))  # one whose output was dropped
                target.touch(conn)
            conn.commit()


class StagingTask(WeekTask):
    """Stages one table for its week (loaded, indexed, marked in one transaction); `WeeklyRecs` puts it live."""

    unique_key: tuple[str, ...] = ()
    lookup_key: tuple[str, ...] = ()
    checked_name = staticmethod(publish.checked_live_name)
    served = False  # read by the web service: its readers are granted SELECT on the live name
    made_at_cutoff = False  # its file is made anew for each week's cutoff: never the same two weeks running

    def planned_columns(self) -> tuple[Path, pa.Schema]:
        """The file that shapes this table, and the table's columns for the week (before anything is staged)."""
        raise NotImplementedError

    def check_against_live(self, cur, least_kept: float) -> None:
        """Refuse, before anything is staged, a week that this table's live week shows to be wrong
        (`least_kept`: `[pipeline] max_row_drop`'s share of rows a week must keep). The file and the
        columns are planned once for the three checks."""
        path, schema = self.planned_columns()
        self._check_dependents(cur, path, schema)
        self._check_not_cut_short(cur, path, least_kept)
        self._check_not_repeated(cur, path)

    def _check_dependents(self, cur, path: Path, schema: pa.Schema) -> None:
        """Refuse a week whose columns an object depending on the live table would not survive."""
        columns = {field.name: pgcopy.pg_type(field.type) for field in schema}
        for column, problem in publish.refused_changes(cur, self.table, columns):
            raise ContractError(path, column, problem)

    def _check_not_cut_short(self, cur, path: Path, least_kept: float) -> None:
        """Refuse a week whose file holds far fewer rows than the live week of this table: a file cut
        short upstream (an export that stopped, a job that saw a part of the users) passes every
        contract, and going live it would take most users' recommendations from the web service for
        a week. Only what the web service reads is compared: the train rows of a week may well halve.
        A backfill goes to the archives and takes nothing from it."""
        live = publish.live_week(cur, self.table) if self.served else None
        if live is None or self.week < live:
            return
        rows = contracts.open_parquet(path).metadata.num_rows
        live_table = publish.week_table(cur, self.table, live)
        before = catalog.estimated_rows(cur, live_table)
        if before is None:
            before = publish.row_count(cur, live_table)
        if rows < least_kept * before:
            raise ContractError(path, None, f"{rows:,} rows, where the live week {live} of {self.table} has about "
                                f"{before:,}: more than [pipeline] max_row_drop = "
                                f"{config.pipeline().max_row_drop:g} of them would go (a file cut short?); if the "
                                "week is meant to be smaller, rerun with --pipeline-max-row-drop 1")

    def _check_not_repeated(self, cur, path: Path) -> None:
        """Refuse a file made at each week's cutoff that is, byte for byte in its footer, the one the
        live week of this table was loaded from: a modelling stage that did not run for this week
        left last week's file where this week's should be, and it would go live as this week's, the
        success message saying all was well. A redo or a backfill loads what it is given."""
        if not self.made_at_cutoff or config.pipeline().allow_same_files:
            return
        live = publish.live_week_repeated(cur, self.table, self.week, contracts.footer_digest(path))
        if live is not None:
            raise ContractError(path, None, f"the very file the live week {live} of {self.table} was loaded from "
                                "(the same parquet footer): candidates are made at each week's cutoff, so this "
                                "week's were not made? If the week is meant to repeat them, rerun with "
                                "--pipeline-allow-same-files")

    def holds_output(self, cur) -> bool:
        """Staged, live or archived: a stage dropped because a later week went live must be redone."""
        return publish.holds_week(cur, self.table, self.week)

    def stage(self, batches: Iterable[pa.RecordBatch], schema: pa.Schema,
              source: tuple[Path, str] | None = None) -> int:
        """Returns the rows staged; 0 when a concurrent run of the same week staged first. The `source`
        file and its footer digest, where one is loaded, are noted on the week's table (`publish.note_source`)."""
        with self.marking_once() as transaction:
            if transaction is None:
                return 0
            _, cur = transaction
            staged = self.fresh_stage(cur, self.table, db.column_definitions(schema))
            self.set_status_message(f"loading {self.table}")
            rows = db.copy_in(cur, staged, batches, schema, frozen=True)  # created just above
            self.set_status_message(f"indexing {rows:,} rows of {self.table}")
            self.index(cur, staged, schema.names)
            if source is not None:
                publish.note_source(cur, staged, *source)
        log.info("%s staged %d rows for %s", self, rows, self.table)
        self.set_status_message(f"staged {rows:,} rows for {self.table}")
        return rows

    def check_file_unchanged(self, cur) -> None:
        """Refuse a stage made of a file that has been replaced since (nothing by default: made of no file)."""

    def go_live_alongside(self, cur) -> None:
        """Write what goes live in the same transaction as the week's tables (nothing by default)."""

    def unique_columns(self, columns: list[str]) -> tuple[str, ...]:
        return self.unique_key

    def index(self, cur, staged: str, columns: list[str]) -> None:
        publish.build_beside(cur, staged)
        for unique, key in ((True, self.unique_columns(columns)), (True, ("rec_id",)), (False, self.lookup_key)):
            if key and set(key) <= set(columns):
                cur.execute(sql.SQL("CREATE {} INDEX ON {} ({})").format(
                    sql.SQL("UNIQUE" if unique else ""), sql.Identifier(staged),
                    sql.SQL(", ").join(map(sql.Identifier, key))))
