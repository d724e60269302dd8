"""Load tasks: one parquet file of the week into one published table."""

from __future__ import annotations

import luigi
import psycopg2.errors
import pyarrow as pa

from pipeline import config, contracts
from pipeline.base import StagingTask, WeekTask, published_table
from pipeline.event_stage import CandidatesAtCutoff, TrainFromOutcomes

BATCH_ROWS = 64_000


def week_contracts() -> tuple[contracts.Contract, ...]:
    """The week's four contracts, the candidates carrying the configured (and derived) features."""
    settings = config.pipeline()
    return contracts.week_contracts(tuple(settings.features), tuple(settings.derived_features))


class CheckInputs(WeekTask):
    """Every file's whole schema, and the train file's positives, before anything of the week is staged.

    Values are checked as each file streams into its table: a file is read once.
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
        contracts.check_week(folder, week_contracts())
        contracts.check_positives(folder / contracts.CANDIDATES_TRAIN.file, contracts.CANDIDATES_TRAIN.label,
                                  settings.random_seed, settings.holdout_share)
        with self.marking_once():
            pass


class LoadTask(StagingTask):
    """Streams the week's file in record batches into its staged table, checking values as they pass."""

    contract: contracts.Contract

    def requires(self) -> CheckInputs:
        return CheckInputs(week=self.week)

    def run(self) -> None:
        contract = self.full_contract()
        path = config.pipeline().week_input_dir(self.week) / contract.file
        parquet = contracts.open_parquet(path)
        schema = contracts.output_schema(contract, path, parquet.schema_arrow)
        checker = contracts.BatchChecker(contract, path, schema)
        week = pa.scalar(self.week, pa.date32())
        batches = (batch.append_column("week", pa.repeat(week, batch.num_rows))
                   for batch in checker.checked(parquet.iter_batches(batch_size=BATCH_ROWS)))
        try:
            self.stage(self.reporting(batches, parquet.metadata.num_rows,
                                      "loaded {done:,} of {total:,} rows into " + self.table),
                       schema.append(pa.field("week", pa.date32())))
        except psycopg2.errors.UniqueViolation as error:
            raise contracts.duplicate_key_error(path, contract.unique_key(schema.names),
                                                error.diag.message_detail) from None

    def full_contract(self) -> contracts.Contract:
        """This file's contract as the week's check sees it."""
        return next(c for c in week_contracts() if c.file == self.contract.file)

    def unique_columns(self, columns: list[str]) -> tuple[str, ...]:
        """The unique index refuses a duplicate the week's check could not see."""
        return self.contract.unique_key(columns)


class DefaultRecs(LoadTask):
    contract = contracts.TOP_POPULAR
    table = published_table("default_recs")


class OnlineRecs(LoadTask):
    contract = contracts.SIMILAR
    table = published_table("online_recs")
    lookup_key = ("itemid_1",)


class TrainCandidates(LoadTask):
    contract = contracts.CANDIDATES_TRAIN
    table = published_table("candidates_train")


class InferenceCandidates(LoadTask):
    contract = contracts.CANDIDATES_INFERENCE
    table = published_table("candidates_inference")
