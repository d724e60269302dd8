"""What every pipeline task shares: the week parameter, its marker target, atomic publishing."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date

import luigi
import pyarrow as pa
from psycopg2 import sql

from pipeline import config, db

log = logging.getLogger("luigi-interface")

A_SATURDAY = date(2026, 11, 21)


def published_table(name: str) -> luigi.Parameter:
    """The table a task publishes; `[TaskName] table = ...` in luigi.cfg renames it."""
    return luigi.Parameter(default=name, significant=False, description="the table this task publishes")


class WeekTask(luigi.Task):
    """A task of one week: any day of the week names the same task (the Saturday on or before it)."""

    week = luigi.DateParameter(default=date.today(), interval=7, start=A_SATURDAY,
                               description="any day of the week to run; default: this week")
    table: str = ""

    def output(self) -> db.MarkerTarget:
        return db.marker(config.checked_identifier(self.table, f"[{type(self).__name__}] table"),
                         self.task_id)

    @contextmanager
    def marking_once(self) -> Iterator[tuple | None]:
        """A transaction that ends with this task's marker, holding the table's lock throughout.

        Yields `(connection, cursor)`, or None when a concurrent run of the same week has marked
        the task meanwhile: two cron firings or two workers never both publish.
        """
        target = self.output()
        target.create_marker_table()
        with db.connection() as conn:
            with conn.cursor() as cur:
                db.lock_table(cur, self.table)
                if target.exists(conn):
                    log.info("%s was completed meanwhile by another run", self)
                    yield None
                    return
                yield conn, cur
                target.touch(conn)
            conn.commit()


class PublishingTask(WeekTask):
    """Publishes one table for its week: staging load, indexes, swap and marker in one transaction."""

    unique_key: tuple[str, ...] = ()
    lookup_key: tuple[str, ...] = ()

    def publish(self, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> int:
        """Returns the rows published; 0 when a concurrent run of the same week published first."""
        with self.marking_once() as transaction:
            if transaction is None:
                return 0
            _, cur = transaction
            staging = db.create_staging(cur, self.table, schema)
            self.set_status_message(f"loading {self.table}")
            rows = db.copy_in(cur, staging, batches, schema)
            self.set_status_message(f"indexing {rows} rows of {self.table}")
            self._index(cur, staging, schema)
            db.publish_atomically(cur, self.table, staging, self.week, config.pipeline().retention)
            self.publish_alongside(cur)
        log.info("%s published %d rows to %s", self, rows, self.table)
        self.set_status_message(f"published {rows} rows to {self.table}")
        return rows

    def publish_alongside(self, cur) -> None:
        """Write what must appear in the same transaction as the table (nothing by default)."""

    def _index(self, cur, staging: str, schema: pa.Schema) -> None:
        for unique, key in ((True, self.unique_key), (True, ("rec_id",)), (False, self.lookup_key)):
            if key and set(key) <= set(schema.names):
                cur.execute(sql.SQL("CREATE {} INDEX ON {} ({})").format(
                    sql.SQL("UNIQUE" if unique else ""), sql.Identifier(staging),
                    sql.SQL(", ").join(map(sql.Identifier, key))))
