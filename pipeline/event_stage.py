"""The upstream stage (`[pipeline] source = events`): the week's four files, made from the shop's events.

    CheckInputs(week)
    ├── CandidatesAtCutoff(week)        top_popular, similar, candidates_inference at the week's cutoff
    └── TrainFromOutcomes(week)         candidates_train: what users did after the train_weeks cutoffs before
        └── Outcomes(week - 7k)         a week's candidates labelled by its next label_days, k = 1..train_weeks
            └── CandidatesAtCutoff(week - 7k)

Each week's candidates are fitted once, at its own cutoff, and reused by the weeks after it; only
events before a cutoff are read, so a rerun or a backfill reproduces the week whatever arrived since.
The files are Luigi `LocalTarget`s in the week's input folder, each written atomically.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import luigi
import pyarrow.parquet as pq

from pipeline import config
from pipeline.base import week_parameter
from pipeline.contracts import CANDIDATES_INFERENCE, CANDIDATES_TRAIN, SIMILAR, TOP_POPULAR

AVAILABLE_ROWS = b"weekly_recs.available_rows"  # in the train file's metadata: outcome rows before the cap


class EventTask(luigi.Task):
    week = week_parameter()

    def week_file(self, name: str) -> luigi.LocalTarget:
        settings = config.pipeline()
        if "{week}" not in settings.input_dir:
            raise ValueError("[pipeline] input_dir: with source = events it must contain {week}, "
                             f"so that each week's files have a folder of their own (it is {settings.input_dir!r})")
        return luigi.LocalTarget(str(settings.week_input_dir(self.week) / name))

    def events_until(self, start: datetime | None, stop: datetime) -> Iterator:
        """Batches of the window's events (`events.Interactions`); refused while the window is still open."""
        from pipeline import events

        if stop > datetime.now(UTC):
            raise ValueError(f"week {self.week}: events up to {stop:%Y-%m-%d %H:%M} UTC are needed, and that time "
                             "has not come yet ([events] cutoff, label_days)")
        settings = config.events()
        return events.window_batches(settings.resolved_events_path(), start, stop, settings.weights)


class CandidatesAtCutoff(EventTask):
    """One ALS fit on the events before the cutoff: the week's popularity, neighbours and candidates."""

    def output(self) -> dict[str, luigi.LocalTarget]:
        return {contract.file: self.week_file(contract.file) for contract in (TOP_POPULAR, SIMILAR,
                                                                               CANDIDATES_INFERENCE)}

    def run(self) -> None:
        # pandas, scipy and implicit are imported when the stage runs: the load tasks' processes stay small.
        from pipeline import candidates, events

        settings = config.events()
        cutoff = settings.cutoff_of(self.week)
        since = cutoff - timedelta(days=settings.history_days)
        self.set_status_message(f"reading events from {since:%Y-%m-%d} to {cutoff:%Y-%m-%d %H:%M} UTC")
        history = candidates.History.at(cutoff, self.events_until(since, cutoff),
                                        events.read_items(settings.resolved_items_path()), settings.popular_days)
        history.check(settings.resolved_events_path(), settings.resolved_items_path(),
                      timedelta(hours=settings.max_lag_hours))
        self.set_status_message(f"fitting ALS on {len(history.users):,} users, {history.matrix.nnz:,} user-items")
        model = candidates.fit_als(history, settings.factors, settings.als_iterations, settings.regularization,
                                   settings.alpha, config.pipeline().random_seed)
        outputs = self.output()
        with outputs[TOP_POPULAR.file].temporary_path() as path:
            pq.write_table(candidates.top_popular(history, settings.popular_days, settings.top_popular), path)
        with outputs[SIMILAR.file].temporary_path() as path:
            pq.write_table(candidates.similar(history, model, settings.similar_per_item), path)
        with outputs[CANDIDATES_INFERENCE.file].temporary_path() as path, \
                pq.ParquetWriter(path, candidates.CANDIDATES) as writer:
            active = history.active_rows(settings.active_days)
            users = len(active)
            for number, batch in enumerate(candidates.candidate_batches(
                    history, model, active, settings.candidates_per_user, settings.popular_days), start=1):
                writer.write_batch(batch)
                done = min(number * candidates.USERS_PER_BLOCK, users)
                self.set_status_message(f"candidates of {done:,} of {users:,} users")
                self.set_progress_percentage(round(100 * done / users))


class Outcomes(EventTask):
    """The week's candidates, labelled by what their users did in the label_days after its cutoff."""

    def requires(self) -> CandidatesAtCutoff:
        return CandidatesAtCutoff(week=self.week)

    def output(self) -> luigi.LocalTarget:
        return self.week_file("outcomes.parquet")

    def run(self) -> None:
        from pipeline import candidates, events

        cutoff = config.events().cutoff_of(self.week)
        taken = events.concatenated(self.events_until(cutoff, cutoff + config.events().label_window()))
        inference = pq.ParquetFile(self.input()[CANDIDATES_INFERENCE.file].path)
        with self.output().temporary_path() as path, pq.ParquetWriter(path, candidates.OUTCOMES) as writer:
            for batch in candidates.outcome_batches(inference, taken, self.week):
                writer.write_batch(batch)


class TrainFromOutcomes(EventTask):
    """The outcomes of the train_weeks before this one, one group per user and week, in one file."""

    def requires(self) -> list[Outcomes]:
        return [Outcomes(week=self.week - timedelta(weeks=k)) for k in range(1, config.events().train_weeks + 1)]

    def output(self) -> luigi.LocalTarget:
        return self.week_file(CANDIDATES_TRAIN.file)

    def run(self) -> None:
        """At most `[pipeline] max_train_rows`, whole user-weeks; the file's metadata keeps how many
        rows there were (`model_metrics.available_rows`)."""
        from pipeline import candidates

        settings = config.pipeline()
        weeks = [pq.ParquetFile(target.path) for target in self.input()]
        available = sum(week.metadata.num_rows for week in weeks)
        schema = weeks[0].schema_arrow.with_metadata({AVAILABLE_ROWS: str(available)})
        with self.output().temporary_path() as path, pq.ParquetWriter(path, schema) as writer:
            for batch in candidates.capped_outcomes(weeks, settings.max_train_rows, settings.random_seed):
                writer.write_batch(batch)

