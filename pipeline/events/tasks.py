"""The upstream stage (`[pipeline] source = events`): the week's four files, made from the shop's events.

    CheckInputs(week)
    ├── CandidatesAtCutoff(week)        candidates_inference: the shards' files, one after the other
    │   ├── CutoffModel(week)           the sources' fits at the cutoff: top_popular, similar, fits for the shards
    │   └── CandidateShard(week, k, n)  the candidates of the k-th of n runs of active users, in user id order
    └── TrainFromOutcomes(week)         candidates_train: what users did after the train_weeks cutoffs before
        └── Outcomes(week - 7k)         a week's candidates labelled by its next label_days, k = 1..train_weeks
            └── CandidatesAtCutoff(week - 7k)

Each week's candidates are fitted once, at its own cutoff, and reused by the weeks after it; only
events before a cutoff are read, so a rerun or a backfill reproduces the week whatever arrived since.
The files are Luigi `LocalTarget`s in the week's input folder, each written atomically; a shard
needs only that folder, so a worker on any host that shares it can take one. The fit belongs to the
code that wrote it: a week interrupted before its candidates and resumed after an upgrade fits again.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import math
import pickle
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import luigi
import luigi.format
import pyarrow.parquet as pq

from pipeline import config, db, publish
from pipeline.base import week_parameter
from pipeline.contracts import CANDIDATES_INFERENCE, CANDIDATES_TRAIN, SIMILAR, TOP_POPULAR, open_parquet

if TYPE_CHECKING:  # pandas, scipy and implicit, imported when the stage runs
    from pipeline.events.candidates import Fits
    from pipeline.events.history import History

AVAILABLE_ROWS = b"weekly_recs.available_rows"  # in the train file's metadata: outcome rows before the cap
SHARD_FILES = "candidates_inference.shard-*.parquet"  # each CandidateShard's, removed once joined in one file
# CutoffModel's fits, for the shards; removed after them
HISTORY = "cutoff_history.pickle"  # a header ({"active_users", "code"}) to read alone, then the history
FITS = ("cutoff_als.npz", "cutoff_cooccurrence.npz", "cutoff_expected_takers.npy")  # in `candidates.Fits.save`'s order


class EventTask(luigi.Task):
    week = week_parameter()

    def week_file(self, name: str, format: luigi.format.Format | None = None) -> luigi.LocalTarget:  # noqa: A002
        settings = config.pipeline()
        if "{week}" not in settings.input_dir:
            raise ValueError("[pipeline] input_dir: with source = events it must contain {week}, "
                             f"so that each week's files have a folder of their own (it is {settings.input_dir!r})")
        return luigi.LocalTarget(str(settings.week_input_dir(self.week) / name), format=format)

    def events_until(self, start: datetime | None, stop: datetime) -> Iterator:
        """Batches of the window's events (`inputs.Interactions`); refused while the window is still open."""
        from pipeline.events import inputs

        if stop > (now := datetime.now(UTC)):
            raise ValueError(f"week {self.week}: events up to {stop:%Y-%m-%d %H:%M} UTC are needed, and that time "
                             f"has not come yet: it is {now:%Y-%m-%d %H:%M} UTC ([events] cutoff, label_days; the "
                             "cutoff is in UTC and cron fires in the host's time zone: east of UTC, set the cutoff "
                             "before the firing's UTC time)")
        settings = config.events()
        return inputs.window_batches(settings.resolved_events_path(), start, stop, settings.weights)


class CutoffModel(EventTask):
    """The sources' fits (ALS, co-occurrence, next week's popularity) on the window's events before the
    cutoff, once for every shard: the week's popularity and neighbours, and what the candidate shards
    need (the history and the fits, as files beside the week's)."""

    def output(self) -> dict[str, luigi.LocalTarget]:
        return {TOP_POPULAR.file: self.week_file(TOP_POPULAR.file), SIMILAR.file: self.week_file(SIMILAR.file),
                **{name: self.week_file(name, luigi.format.Nop) for name in (HISTORY, *FITS)}}

    def complete(self) -> bool:
        """A fit that other code wrote is not this code's: its pickled history may not even load."""
        return super().complete() and fit_header(self.output()).get("code") == code_fingerprint()

    def run(self) -> None:
        # pandas, scipy and implicit are imported when the stage runs: the load tasks' processes stay small.
        from pipeline.events import candidates, popularity

        with db.connection() as conn, conn.cursor() as cur:  # before fits a role unfit to publish would waste
            publish.refuse_unfit_role(cur)
        self.remove_stale()
        settings = config.events()
        history = self.history_at_cutoff(settings)
        self.set_status_message(f"fitting ALS on {len(history.users):,} users, {history.matrix.nnz:,} user-items")
        model = candidates.fit_als(history, settings.factors, settings.als_iterations, settings.regularization,
                                   settings.alpha, config.pipeline().random_seed)
        fits = candidates.Fits(model, candidates.fit_cooccurrence(history, settings.cooccurrence_neighbours),
                               popularity.expected_takers(history, settings.new_days, settings.popular_days))
        self.write_outputs(history, fits, settings)

    def history_at_cutoff(self, settings: config.events) -> History:
        """The window's events before the week's cutoff, read once, and refused if they stop short of it."""
        from pipeline.events import inputs
        from pipeline.events.history import History

        cutoff = settings.cutoff_of(self.week)
        since = cutoff - timedelta(days=settings.history_days)
        self.set_status_message(f"reading events from {since:%Y-%m-%d} to {cutoff:%Y-%m-%d %H:%M} UTC")
        history = History.at(cutoff, self.events_until(since, cutoff),
                             inputs.read_items(settings.resolved_items_path()),
                             (settings.popular_days, settings.default_days), settings.recent_days)
        history.check(settings.resolved_events_path(), settings.resolved_items_path(),
                      timedelta(hours=settings.max_lag_hours))
        return history

    def write_outputs(self, history: History, fits: Fits, settings: config.events) -> None:
        """The week's popularity and neighbours as the modelling stage's files, and the history and fits
        for the candidate shards, each moved into place whole."""
        from pipeline.events import candidates

        outputs = self.output()
        with outputs[TOP_POPULAR.file].temporary_path() as path:
            pq.write_table(candidates.top_popular(history, settings.default_days, settings.top_popular), path)
        with outputs[SIMILAR.file].temporary_path() as path:
            pq.write_table(candidates.similar(history, fits.als, settings.similar_per_item), path)
        with outputs[HISTORY].open("w") as file:
            pickle.dump({"active_users": len(history.active_rows(settings.active_days)), "code": code_fingerprint()},
                        file)
            pickle.dump(history, file, protocol=pickle.HIGHEST_PROTOCOL)
        with ExitStack() as files:  # each closed before its temporary path moves into place
            fits.save(*(files.enter_context(open(files.enter_context(outputs[name].temporary_path()), "wb"))
                        for name in FITS))

    def remove_stale(self) -> None:
        """What a fit by other code left (see `complete`), and the shards made from it: made again now."""
        made = [Path(target.path) for target in self.output().values()]
        for path in (*made, *config.pipeline().week_input_dir(self.week).glob(SHARD_FILES)):
            path.unlink(missing_ok=True)

    def remove_fit(self) -> None:
        """The history and the fits are needed only until the week's candidates are made."""
        for name in (HISTORY, *FITS):
            self.output()[name].remove()


class CandidateShard(EventTask):
    """The candidates of one shard of the week's active users: a run of them in user id order, so
    that the shards' files, one after the other, are the week's candidates whatever their count."""

    shard = luigi.IntParameter(description="which shard, 0 to shards - 1")
    shards = luigi.IntParameter(description="how many shards the week's active users are split into")

    def requires(self) -> CutoffModel:
        return CutoffModel(week=self.week)

    def output(self) -> luigi.LocalTarget:
        return self.week_file(SHARD_FILES.replace("*", f"{self.shard + 1}-of-{self.shards}"))

    def run(self) -> None:
        from pipeline.events import candidates

        settings = config.events()
        history, fits = read_fit(self.input())
        users = candidates.shard_rows(history.active_rows(settings.active_days), self.shard, self.shards)
        with self.output().temporary_path() as path, pq.ParquetWriter(path, candidates.CANDIDATES) as writer:
            for number, batch in enumerate(candidates.candidate_batches(
                    history, fits, users, settings.candidates_per_user, settings.new_days), start=1):
                writer.write_batch(batch)
                done = min(number * candidates.USERS_PER_BLOCK, len(users))
                self.set_status_message(f"candidates of {done:,} of {len(users):,} users")
                self.set_progress_percentage(round(100 * done / max(len(users), 1)))


class CandidatesAtCutoff(EventTask):
    """The week's three files at its cutoff: the fit's popularity and neighbours, and the candidates
    its shards made, in one file."""

    def requires(self) -> CutoffModel:
        return CutoffModel(week=self.week)

    def output(self) -> dict[str, luigi.LocalTarget]:
        fit = CutoffModel(week=self.week).output()
        return {TOP_POPULAR.file: fit[TOP_POPULAR.file], SIMILAR.file: fit[SIMILAR.file],
                CANDIDATES_INFERENCE.file: self.week_file(CANDIDATES_INFERENCE.file)}

    def run(self) -> Iterator[list[CandidateShard]]:
        from pipeline.events import candidates

        active = fit_header(self.input())["active_users"]
        count = max(1, math.ceil(active / config.events().users_per_shard))
        shards = yield [CandidateShard(week=self.week, shard=k, shards=count) for k in range(count)]
        with self.output()[CANDIDATES_INFERENCE.file].temporary_path() as path, \
                pq.ParquetWriter(path, candidates.CANDIDATES) as writer:
            for shard in shards:
                for batch in _streamed(shard).iter_batches():
                    writer.write_batch(batch)
        for shard in shards:
            shard.remove()
        self.requires().remove_fit()


def stage_files(week) -> list[luigi.LocalTarget]:
    """Every file the stage writes in a week's folder, an interrupted run's fit and shards included."""
    folder = config.pipeline().week_input_dir(week)
    targets = [*CutoffModel(week=week).output().values(), *CandidatesAtCutoff(week=week).output().values(),
               Outcomes(week=week).output(), TrainFromOutcomes(week=week).output(),
               *(luigi.LocalTarget(str(path)) for path in folder.glob(SHARD_FILES))]
    return list({target.path: target for target in targets}.values())


def files_a_redo_remakes(week) -> list[luigi.LocalTarget]:
    """The week's own files and the outcomes its train file learns from: what events that arrived late, with
    times before the week's cutoff, may change. Otherwise a rerun reproduces the week from the files it made."""
    return [*stage_files(week), *(outcomes.output() for outcomes in TrainFromOutcomes(week=week).requires())]


def read_fit(fit: dict[str, luigi.LocalTarget]) -> tuple:
    """The history and the fits `CutoffModel` left for the shards."""
    from pipeline.events import candidates

    with fit[HISTORY].open("r") as file:
        pickle.load(file)  # the header
        history = pickle.load(file)
    with ExitStack() as files:
        return history, candidates.Fits.load(*(files.enter_context(open(fit[name].path, "rb")) for name in FITS))


class Outcomes(EventTask):
    """The week's candidates, labelled by what their users did in the label_days after its cutoff."""

    def requires(self) -> CandidatesAtCutoff:
        return CandidatesAtCutoff(week=self.week)

    def output(self) -> luigi.LocalTarget:
        return self.week_file("outcomes.parquet")

    def run(self) -> None:
        from pipeline.events import inputs, outcomes

        cutoff = config.events().cutoff_of(self.week)
        taken = inputs.concatenated(self.events_until(cutoff, cutoff + config.events().label_window()))
        inference = _streamed(self.input()[CANDIDATES_INFERENCE.file])
        with self.output().temporary_path() as path, pq.ParquetWriter(path, outcomes.OUTCOMES) as writer:
            for batch in outcomes.outcome_batches(inference, taken, self.week):
                writer.write_batch(batch)


class TrainFromOutcomes(EventTask):
    """The outcomes of the train_weeks before this one, one group per user and week, in one file."""

    def requires(self) -> list[Outcomes]:
        return [Outcomes(week=self.week - timedelta(weeks=k)) for k in range(1, config.events().train_weeks + 1)]

    def output(self) -> luigi.LocalTarget:
        return self.week_file(CANDIDATES_TRAIN.file)

    def run(self) -> None:
        """At most `[pipeline] max_train_rows` (and the held-out users' share beside them, where the
        ranker will fit once), whole user-weeks; the file's metadata keeps how many rows there were
        (`model_metrics.available_rows`)."""
        from pipeline.events import outcomes

        weeks = [_streamed(target) for target in self.input()]
        available = sum(week.metadata.num_rows for week in weeks)
        schema = weeks[0].schema_arrow.with_metadata({AVAILABLE_ROWS: str(available)})
        with self.output().temporary_path() as path, pq.ParquetWriter(path, schema) as writer:
            for batch in outcomes.capped_outcomes(weeks, config.pipeline()):
                writer.write_batch(batch)


def fit_header(fit: dict[str, luigi.LocalTarget]) -> dict:
    """What `CutoffModel` wrote before the history: the week's active users and the code that fitted it."""
    with fit[HISTORY].open("r") as file:
        header = pickle.load(file)
    return header if isinstance(header, dict) else {}  # before the header, the active users' count alone


@functools.cache
def code_fingerprint() -> str:
    """The pipeline's modules and the libraries whose objects the fit holds: what, besides the
    events, decides the candidates a fit makes. Read once a process, as the week is scheduled: a deploy while a
    week runs is the next run's code, and does not disown the running week's fit halfway through it."""
    digest = hashlib.sha256()
    for module in sorted(Path(__file__).parents[1].rglob("*.py")):  # the whole package
        digest.update(module.read_bytes())
    for library in ("numpy", "scipy", "pandas", "implicit", "scikit-learn"):
        digest.update(importlib.metadata.version(library).encode())
    return digest.hexdigest()


def _streamed(target: luigi.LocalTarget) -> pq.ParquetFile:
    """One of the stage's own files, opened to be read batch by batch."""
    return open_parquet(Path(target.path), empty_ok=True)
