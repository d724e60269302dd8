"""The pipeline's settings, read the Luigi way from `luigi.cfg` and `--section-key` flags.

Secrets are never read from a committed file: the password falls back to the
libpq environment (`PGPASSWORD`), and the Telegram token lives only in the
environment (see `pipeline.notify`).
"""

from __future__ import annotations

import glob
import math
import operator
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import luigi
import luigi.configuration

ROOT = Path(__file__).resolve().parent.parent
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def number(kind: type[int] | type[float], least: float, most: float = math.inf, exclusive: bool = False,
           **parameter) -> luigi.NumericalParameter:
    """A number setting that Luigi refuses outside `least` to `most` (`exclusive`: the bounds too)
    as it reads the config, naming the section and the key, so before any task: found at first
    use, a value out of range failed a week after its loads, or deep in CatBoost or PostgreSQL in
    words that name no setting."""
    within = operator.lt if exclusive else operator.le
    return luigi.NumericalParameter(var_type=kind, min_value=least, max_value=most, left_op=within, right_op=within,
                                    **parameter)


class postgres(luigi.Config):  # noqa: N801 - the section name in luigi.cfg
    """Where the pipeline publishes. An empty host means the embedded server."""

    host = luigi.Parameter(default="", description="server host or unix-socket dir, or several (db1,db2: the "
                           "primary of them); empty: embedded")
    port = number(int, 1, 65535, default=5432)
    database = luigi.Parameter(default="postgres")
    user = luigi.Parameter(default="postgres")
    password = luigi.Parameter(default="", significant=False, visibility=0)
    embedded_dir = luigi.Parameter(default=".pgdata", description="data folder of the embedded server")
    readers = luigi.ListParameter(default=[], description="roles granted SELECT on the served tables at every publish")
    standbys = luigi.ListParameter(default=[], description="hot standbys read from, as host or host:port (the "
                                   "primary's database, user and password): going live waits for their readers too")
    statement_timeout = number(float, 0, default=0.0, description="seconds any statement of the pipeline's may "
                               "run; 0: no limit, whatever the database or the role sets (as pg_dump)")
    read_streams = number(int, 1, default=4, description="connections a whole-table read of the ranking uses "
                          "at once, at most one a core: a worker holds up to 1 + read_streams")

    def resolved_host(self) -> str:
        return self.host or os.environ.get("PGHOST", "")

    def resolved_password(self) -> str:
        return self.password or os.environ.get("PGPASSWORD", "")

    def resolved_embedded_dir(self) -> Path:
        return _under_root(self.embedded_dir)

    def streams_at_once(self) -> int:
        """A whole-table read's connections: parallel ranges read faster only while each has a core to
        decode on, and each is one more connection of the pipeline's role, which a DBA may limit."""
        return min(self.read_streams, os.cpu_count() or 1)


@dataclass(frozen=True)
class RankerFeatures:
    """The columns the ranker reads from the candidates, which of them are categorical, and the
    features it derives (`pipeline.features`)."""

    features: tuple[str, ...]
    cat_features: tuple[str, ...]
    derived_features: tuple[str, ...]


# What each source provides, for a [pipeline] that lists no features of its own. The files' are the
# seed's four columns (derived features: the winners on MovieLens, README "Ranking quality"); the
# events stage's are the eighteen it computes at a cutoff, and the derived features that repeat none
# of them (als_rank is rank_als; item_popularity is the item's events over `default_days`, as item_events_7d
# and item_events_28d are over theirs).
SOURCE_FEATURES = {
    "files": RankerFeatures(
        ("als_score", "category_id", "parent_id", "available"), ("category_id", "parent_id"),
        ("item_popularity", "popularity_rank", "als_rank", "als_gap", "item_frequency", "item_mean_als",
         "category_share")),
    "events": RankerFeatures(
        ("als_score", "rank_als", "rank_cooccurrence", "cooccurrence_score", "sources", "rank_popular",
         "user_item_weight", "item_events_7d", "item_events_28d", "item_events", "item_age_days", "user_events",
         "user_items", "user_recency_days", "user_category_share", "category_id", "parent_id", "available"),
        ("sources", "category_id", "parent_id"),
        ("popularity_rank", "als_gap", "item_frequency", "item_mean_als", "category_share")),
}


class pipeline(luigi.Config):  # noqa: N801
    source = luigi.ChoiceParameter(default="files", choices=["files", "events"],
                                   description="files: the modelling stage's four files; events: made from [events]")
    input_dir = luigi.Parameter(default="data", description="folder of the week's parquet files; {week} is replaced")
    model_dir = luigi.Parameter(default="models")
    retention = number(int, 0, default=4, description="how many earlier weeks stay for rollback")
    features = luigi.OptionalListParameter(default=None, description="the ranker's features; default: the source's")
    cat_features = luigi.OptionalListParameter(default=None, description="which features are categorical")
    derived_features = luigi.OptionalListParameter(default=None, description="features computed by "
                                                   "pipeline.features; default: the source's")
    ranker = luigi.ChoiceParameter(default="CatBoostRanker", choices=["CatBoostRanker", "CatBoostClassifier"])
    ranker_loss = luigi.Parameter(default="YetiRank", description="loss of CatBoostRanker")
    holdout = luigi.ChoiceParameter(default="users", choices=["users", "latest_week"], description="what the "
                                    "validation holds out: a share of the train users, or, where train rows carry "
                                    "their outcome week, the latest week (learning on the weeks before it)")
    holdout_share = number(float, 0, 1, exclusive=True, default=0.2, description="share of train users held out for "
                           "validation")
    max_row_drop = number(float, 0, 1, default=0.5, description="largest share of a live table's rows a week "
                          "may go live without (a file cut short upstream); 1: any week goes live")
    allow_same_files = luigi.BoolParameter(default=False, description="let a week's candidates files be the very "
                                           "files the live week was loaded from (refused by default: a stage that "
                                           "did not run)")
    allow_future_weeks = luigi.BoolParameter(default=False, description="let a week go live before its Saturday "
                                             "has begun anywhere (refused by default: a mistyped --week)")
    max_ndcg_drop = luigi.FloatParameter(default=0.02, description="largest NDCG@10 drop the quality gate accepts")
    gate_sigmas = luigi.FloatParameter(default=2.0, description="nor does it refuse a drop within this many "
                                       "standard errors of the validation's NDCG@10")
    iterations = number(int, 1, default=300)
    thread_count = luigi.IntParameter(default=-1)
    random_seed = luigi.IntParameter(default=42)
    max_train_rows = number(int, 1, default=250_000, description="the model learns from a sample of whole users"
                            " up to this (a fit's memory and time grow with it, see the README)")
    shards = number(int, 0, default=0, description="scoring shards by user; 0: one per rows_per_shard rows")
    rows_per_shard = number(int, 1, default=5_000_000, description="inference rows per shard when shards = 0")
    publish_wait = number(float, 0, default=1800.0, description="seconds a publish or rollback waits for "
                          "readers holding the live tables before it fails")
    lock_timeout = number(float, 0, default=0.1, description="seconds each attempt waits for a lock: the "
                          "longest a reader queues behind a publish")
    terminate_idle_blockers = luigi.BoolParameter(default=False, description="end sessions that hold a live table "
                                                  "while idle in a transaction, instead of waiting for them")
    idle_blocker_seconds = number(float, 0, default=60.0, description="how long a session must have been idle "
                                  "in its transaction before terminate_idle_blockers ends it: a web "
                                  "request is idle between its statements for a moment")

    def ranker_features(self) -> RankerFeatures:
        """The features set here, each list falling back to what the source provides."""
        provided = SOURCE_FEATURES[self.source]
        return RankerFeatures(*(tuple(given) if given is not None else default for given, default in (
            (self.features, provided.features), (self.cat_features, provided.cat_features),
            (self.derived_features, provided.derived_features))))

    def least_rows_kept(self) -> float:
        """The share of a live table's rows a week must hold to go live (`max_row_drop`)."""
        return 1 - self.max_row_drop

    def week_input_dir(self, week: date) -> Path:
        return _under_root(self.input_dir.replace("{week}", week.isoformat()))

    def week_model_dir(self, week: date) -> Path:
        return _under_root(self.model_dir) / week.isoformat()

    def week_input_dirs(self) -> dict[date, Path]:
        """Every week that has a folder `input_dir` names, and the folder."""
        return _existing_weeks(self.input_dir)

    def week_model_dirs(self) -> dict[date, Path]:
        return _existing_weeks(f"{self.model_dir}/{{week}}")


class events(luigi.Config):  # noqa: N801
    """The upstream stage that makes the week's four files from the shop's events (`[pipeline] source = events`)."""

    events_path = luigi.Parameter(default="data/events/events", description="a parquet file or a folder of them")
    items_path = luigi.Parameter(default="data/events/items.parquet")
    weights = luigi.DictParameter(default={}, description="weight of each event name; 1 for names not listed")
    cutoff = luigi.Parameter(default="21:00", description="HH:MM UTC on the week's Saturday; later events wait")
    label_days = number(int, 1, 7, default=7, description="days after a cutoff whose events label its candidates: "
                        "at most 7, so that a week's outcomes are known by the next week's cutoff")
    train_weeks = number(int, 1, default=12, description="earlier weeks whose outcomes the ranker learns from")
    candidates_per_user = number(int, 1, default=100)
    users_per_shard = number(int, 1, default=50_000, description="active users whose candidates one "
                             "CandidateShard makes (a task any worker on any host may take)")
    history_days = number(int, 1, default=365, description="days of events before the cutoff that the ALS "
                          "fit and the features read: a week's cost does not grow with the shop's age")
    active_days = number(int, 1, default=182, description="users with an event in these days before the cutoff "
                         "get candidates; the web service serves the others default_recs")
    popular_days = number(int, 1, default=7, description="window of recent popularity")
    default_days = number(int, 1, default=28, description="window of top_popular.parquet: the default_recs "
                          "the web service serves users without candidates, new ones first of all")
    new_days = number(int, 0, default=450, description="items released (the items file's `released`) in "
                      "these days before the cutoff are the new source's, most popular first")
    recent_days = number(int, 1, default=28, description="window of the recent histories whose co-occurring "
                         "items are candidates")
    cooccurrence_neighbours = number(int, 1, default=20, description="neighbours kept per item by the "
                                     "co-occurrence source")
    top_popular = number(int, 1, default=100, description="rows of top_popular.parquet")
    similar_per_item = number(int, 1, default=10, description="neighbours per item in similar.parquet")
    factors = number(int, 1, default=32, description="ALS factors")
    als_iterations = number(int, 1, default=15)
    regularization = number(float, 0, default=0.05)
    alpha = number(float, 0, exclusive=True, default=2.0, description="ALS confidence per unit of event weight")
    max_lag_hours = number(float, 0, default=48.0, description="the newest event before a cutoff may be at "
                           "most this old, or the week is refused (a stalled export)")

    def cutoff_of(self, week: date) -> datetime:
        try:
            at = time.fromisoformat(self.cutoff)
        except ValueError:
            raise ValueError(f"[events] cutoff: {self.cutoff!r} is not a time of day (HH:MM)") from None
        return datetime.combine(week, at, tzinfo=UTC)

    def label_window(self) -> timedelta:
        return timedelta(days=self.label_days)

    def resolved_events_path(self) -> Path:
        return _under_root(self.events_path)

    def resolved_items_path(self) -> Path:
        return _under_root(self.items_path)


def override(section: str, values: dict[str, str]) -> None:
    """Settings changed in this process, as if a later config file set them (commands that run weeks
    on settings of their own: the backtest, luigid's task history)."""
    from luigi.task_register import Register

    settings = luigi.configuration.get_config()
    if not settings.has_section(section):
        settings.add_section(section)
    for key, value in values.items():
        settings.set(section, key, value)
    Register.clear_instance_cache()


def postgres_slots() -> int:
    """`[resources] postgres`: how many of the pipeline's tasks may work in PostgreSQL at once, 0 (or
    unset) for no cap. Luigi's own section: the scheduler (`luigid` for every host's workers, or a
    run's local one) reads it from the config file and holds each task that needs a unit until one
    is free, so it is read here the same way, never from a flag. A negative value is refused: Luigi
    would take it for a cap that no task ever fits under, and the week would wait for ever."""
    written = luigi.configuration.get_config().get("resources", "postgres", "0")
    if not written.isdigit():
        raise ValueError(f"[resources] postgres = {written}: a whole number of tasks at once, at least 1 "
                         "(0, or no setting: no cap)")
    return int(written)


NOTIFIABLE = ("SUCCESS", "FAILURE", "BROKEN_TASK", "PROCESS_FAILURE", "TIMEOUT", "ROLLBACK")


class telegram(luigi.Config):  # noqa: N801
    """Where messages go. The token and chat id are read from the environment only."""

    api_url = luigi.Parameter(default="https://api.telegram.org", description="Bot API base URL")
    notify = luigi.ListParameter(default=list(NOTIFIABLE),
                                 description="Luigi events that send a message, and ROLLBACK for a rollback")
    timeout = number(float, 0, exclusive=True, default=5.0, description="seconds to wait for the Bot API")
    max_retry_after = number(float, 0, default=30.0, description="longest wait a 429 may ask for")
    log_location = luigi.Parameter(default="var/log/weekly-recs.log",
                                   description="where failure messages tell you to look")

    @staticmethod
    def token() -> str:
        return os.environ.get("TELEGRAM_BOT_TOKEN", "")

    @staticmethod
    def chat_id() -> str:
        return os.environ.get("TELEGRAM_CHAT_ID", "")


def heartbeat_url() -> str:
    """A dead man's switch's ping URL (healthchecks.io's, Cronitor's): from the environment only,
    since whoever holds it can say the pipeline is well."""
    return os.environ.get("HEARTBEAT_URL", "")


def telegram_leniently() -> tuple[telegram, list[str]]:
    """`[telegram]` with each value that does not parse, and a `notify` naming an event there is not,
    replaced by its default and named: a typo in the messages' own settings must neither stop the week
    (DESIGN #5) nor silence it. Before 2026-12-07 Luigi refused such a value inside the handlers, and
    every message of the run, its failures' too, was lost to a traceback in the log."""
    fallback, problems = {}, []
    for name, parameter in telegram.get_params():
        try:
            value = parameter.task_value("telegram", name)
            if name == "notify":
                _refuse_unknown_events(value)
        except (ValueError, TypeError) as error:  # TypeError: a notify of JSON that is no list (5, null)
            fallback[name] = parameter._default  # Luigi has no public accessor of the declared default
            written = luigi.configuration.get_config().get("telegram", name, "")
            problems.append(f"[telegram] {name} = {written} does not parse ({error}): its default is used")
    return telegram(**fallback), problems


def _refuse_unknown_events(events: tuple) -> None:
    if unknown := [str(event) for event in events if event not in NOTIFIABLE]:
        raise ValueError(f"no event {', '.join(unknown)}; a JSON list of {', '.join(NOTIFIABLE)} is expected")


def _under_root(path: str) -> Path:
    """Relative paths are taken from the checkout, so cron and tests may start anywhere."""
    resolved = Path(path).expanduser()
    return resolved if resolved.is_absolute() else ROOT / resolved


def _existing_weeks(template: str) -> dict[date, Path]:
    """The paths that exist where `template` puts a date in place of `{week}` (none without one)."""
    if "{week}" not in template:
        return {}
    path = str(_under_root(template))
    named = re.compile(re.escape(path).replace(re.escape("{week}"), r"(\d{4}-\d{2}-\d{2})"))
    return {date.fromisoformat(match.group(1)): Path(found)
            for found in glob.glob(glob.escape(path).replace("{week}", "*")) if (match := named.fullmatch(found))}


def checked_identifier(name: str, setting: str) -> str:
    """Table names reach SQL only as identifiers; a name that is not a plain one is refused."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{setting}: {name!r} is not a valid table name (lowercase letters, digits, _)")
    return name
