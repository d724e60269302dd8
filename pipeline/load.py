"""Load tasks: one parquet file of the week into one published table."""

from __future__ import annotations

import logging
from pathlib import Path

import luigi
import psycopg2.errors
import psycopg2.extras
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg2 import sql

from pipeline import catalog, config, contracts, db, publish
from pipeline.base import StagingTask, WeekTask, published_table
from pipeline.events.tasks import CandidatesAtCutoff, TrainFromOutcomes

log = logging.getLogger("luigi-interface")
BATCH_ROWS = 64_000
WEEK_FIELD = pa.field("week", pa.date32())


def week_contracts() -> tuple[contracts.Contract, ...]:
    """The week's four contracts, the candidates carrying the configured (and derived) features."""
    chosen = config.pipeline().ranker_features()
    return contracts.week_contracts(chosen.features, chosen.derived_features)


class CheckInputs(WeekTask):
    """Every file's whole schema, and the train file's positives, before anything of the week is staged;
    and that the week's tables can go live: the readers exist, every live table is the pipeline's role's
    to swap and no other table's foreign key references one, what depends on a live table keeps every
    column it uses, no file the web service's tables are made of holds far fewer rows than the live
    week, no candidates file is the one the live week was loaded from, and a backfill would be kept.

    Values are checked as each file streams into its table: a file is read once. What was checked is
    kept, each file with its footer digest, in the table `week_inputs`: a file replaced since (a
    re-export after a failed run, or one landing while the week runs) is checked again before it loads.
    """

    table = "week_inputs"

    def requires(self) -> list[luigi.Task]:
        """With `[pipeline] source = events`, the stage that makes the week's files from events."""
        if config.pipeline().source == "events":
            return [CandidatesAtCutoff(week=self.week), TrainFromOutcomes(week=self.week)]
        return []

    def run(self) -> None:
        settings = config.pipeline()
        folder = settings.week_input_dir(self.week)
        footers = self.footers()  # before the checks: a file replaced during them is not the one recorded
        contracts.check_week(folder, week_contracts())
        contracts.check_positives(folder / contracts.CANDIDATES_TRAIN.file, contracts.CANDIDATES_TRAIN,
                                  settings.random_seed, settings.holdout_share, settings.holdout)
        self.check_live_tables()
        with self.marking_once() as transaction:
            if transaction is not None:
                self.record(transaction[1], footers)

    def footers(self) -> dict[str, str | None]:
        """Each of the week's files, by path, with its footer digest; None where there is none to read."""
        folder = config.pipeline().week_input_dir(self.week)
        return {str(folder / c.file): contracts.present_footer(folder / c.file) for c in week_contracts()}

    def record(self, cur, footers: dict[str, str | None]) -> None:
        """In the marker's transaction, in place of what an earlier check of the week recorded."""
        table = sql.Identifier(self.table)
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (week date, file text, footer_sha256 text NOT NULL,"
                            " checked timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (week, file))").format(table))
        cur.execute(sql.SQL("DELETE FROM {} WHERE week = %s").format(table), (self.week,))
        psycopg2.extras.execute_values(cur, sql.SQL("INSERT INTO {} (week, file, footer_sha256) VALUES %s").format(
            table).as_string(cur), [(self.week, path, footer) for path, footer in footers.items()])

    def checked(self, cur) -> dict[str, str]:
        """The week's files as they were checked, by path: their footer digests."""
        if not catalog.exists(cur, self.table):
            return {}
        cur.execute(sql.SQL("SELECT file, footer_sha256 FROM {} WHERE week = %s").format(sql.Identifier(self.table)),
                    (self.week,))
        return dict(cur.fetchall())

    def holds_output(self, cur) -> bool:
        """The week's files are still the ones checked: the marker alone would vouch for any file put there since."""
        checked = self.checked(cur)
        replaced = [path for path, footer in self.footers().items() if checked.get(path) != footer]
        for path in replaced:
            log.warning("%s is not the file checked for week %s: the week's files are checked again", path, self.week)
        return not replaced

    def refuse_unchecked(self, path: Path, footer: str) -> None:
        """Refuse to load a file other than the one checked: one replaced between the check and its load."""
        with db.connection() as conn, conn.cursor() as cur:
            if self.checked(cur).get(str(path)) != footer:
                raise contracts.ContractError(path, None, f"replaced since the week's files were checked "
                                              f"(CheckInputs, week {self.week}): rerun the week to check it again")

    def check_live_tables(self) -> None:
        from pipeline.wrapper import WeeklyRecs  # the week's tables; the wrapper's module imports this one

        least_kept = config.pipeline().least_rows_kept()
        with db.connection() as conn, conn.cursor() as cur:
            publish.refuse_unfit_role(cur)
            week = WeeklyRecs(week=self.week)
            week.check_can_go_live(cur)
            for task in week.published():
                task.check_against_live(cur, least_kept)


class LoadTask(StagingTask):
    """Streams the week's file in record batches into its staged table, checking values as they pass."""

    contract: contracts.Contract

    def requires(self) -> CheckInputs:
        return CheckInputs(week=self.week)

    def run(self) -> None:
        contract = self.full_contract()
        path, parquet, footer = self.input_file()
        CheckInputs(week=self.week).refuse_unchecked(path, footer)
        schema = contracts.output_schema(contract, path, parquet.schema_arrow)
        checker = contracts.BatchChecker(contract, path, schema)
        batches = (batch.append_column("week", contracts.date_column(self.week, batch.num_rows))
                   for batch in checker.checked(parquet.iter_batches(batch_size=BATCH_ROWS)))
        try:
            self.stage(self.reporting(batches, parquet.metadata.num_rows,
                                      "loaded {done:,} of {total:,} rows into " + self.table),
                       schema.append(WEEK_FIELD), source=(path, footer))
        except psycopg2.errors.UniqueViolation as error:
            raise contracts.duplicate_key_error(path, contract.unique_key(schema.names),
                                                error.diag.message_detail) from None
        except psycopg2.errors.UntranslatableCharacter as error:
            raise contracts.untranslatable_error(path, error.diag.message_primary, error.diag.context) from None

    def input_file(self) -> tuple[Path, pq.ParquetFile, str]:
        """The week's file, open, and its footer digest."""
        path = self.path()
        return path, *contracts.opened_with_footer(path)

    def path(self) -> Path:
        """Where the week's file is: `[pipeline] input_dir` for the week, and the contract's file name."""
        return config.pipeline().week_input_dir(self.week) / self.contract.file

    def check_file_unchanged(self, cur) -> None:
        """Refuse a file replaced after this week's table was staged from it (the re-export that fixes a
        week the quality gate refused): what was staged, and what was made of it, would go live, and the
        rerun's fit would learn from the rows of before. A stage is done, as Luigi's targets are; a redo
        loads the file there now."""
        path = self.path()
        noted = publish.source_digest(cur, publish.staged_name(self.table, self.week))  # None once live
        there = contracts.present_footer(path)
        if noted is not None and there is not None and there != noted:
            raise contracts.ContractError(path, None, f"replaced after {self.table} was staged from it for "
                                          f"week {self.week}: python -m pipeline.redo {self.week} and a rerun load "
                                          "the file there now")

    def planned_columns(self) -> tuple[Path, pa.Schema]:
        path = self.path()
        schema = contracts.open_parquet(path).schema_arrow  # the schema alone: no footer digest to take
        return path, contracts.output_schema(self.full_contract(), path, schema).append(WEEK_FIELD)

    def full_contract(self) -> contracts.Contract:
        """This file's contract as the week's check sees it."""
        return next(c for c in week_contracts() if c.file == self.contract.file)

    def unique_columns(self, columns: list[str]) -> tuple[str, ...]:
        """The unique index refuses a duplicate the week's check could not see."""
        return self.contract.unique_key(columns)


class DefaultRecs(LoadTask):
    contract = contracts.TOP_POPULAR
    table = published_table("default_recs")
    served = True


class OnlineRecs(LoadTask):
    contract = contracts.SIMILAR
    table = published_table("online_recs")
    served = True
    lookup_key = ("itemid_1",)


class TrainCandidates(LoadTask):
    contract = contracts.CANDIDATES_TRAIN
    table = published_table("candidates_train")
    made_at_cutoff = True


class InferenceCandidates(LoadTask):
    contract = contracts.CANDIDATES_INFERENCE
    table = published_table("candidates_inference")
    made_at_cutoff = True
