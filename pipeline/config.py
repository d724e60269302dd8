"""The pipeline's settings, read the Luigi way from `luigi.cfg` and `--section-key` flags.

Secrets are never read from a committed file: the password falls back to the
libpq environment (`PGPASSWORD`), and the Telegram token lives only in the
environment (see `pipeline.notify`).
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

import luigi

ROOT = Path(__file__).resolve().parent.parent
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class postgres(luigi.Config):  # noqa: N801 - the section name in luigi.cfg
    """Where the pipeline publishes. An empty host means the embedded server."""

    host = luigi.Parameter(default="", description="server host or unix-socket dir; empty: embedded")
    port = luigi.IntParameter(default=5432)
    database = luigi.Parameter(default="postgres")
    user = luigi.Parameter(default="postgres")
    password = luigi.Parameter(default="", significant=False, visibility=0)
    embedded_dir = luigi.Parameter(default=".pgdata", description="data folder of the embedded server")

    def resolved_host(self) -> str:
        return self.host or os.environ.get("PGHOST", "")

    def resolved_password(self) -> str:
        return self.password or os.environ.get("PGPASSWORD", "")

    def resolved_embedded_dir(self) -> Path:
        return _under_root(self.embedded_dir)


class pipeline(luigi.Config):  # noqa: N801
    input_dir = luigi.Parameter(default="data", description="folder of the week's parquet files; {week} is replaced")
    model_dir = luigi.Parameter(default="models")
    retention = luigi.IntParameter(default=4, description="how many earlier weeks stay for rollback")
    features = luigi.ListParameter(default=["als_score", "category_id", "parent_id", "available"])
    cat_features = luigi.ListParameter(default=["category_id", "parent_id"])
    derived_features = luigi.ListParameter(default=[], description="features computed by pipeline.features")
    ranker = luigi.ChoiceParameter(default="CatBoostRanker", choices=["CatBoostRanker", "CatBoostClassifier"])
    ranker_loss = luigi.Parameter(default="YetiRank", description="loss of CatBoostRanker")
    holdout_share = luigi.FloatParameter(default=0.2, description="share of train users held out for validation")
    max_ndcg_drop = luigi.FloatParameter(default=0.02, description="largest NDCG@10 drop the quality gate accepts")
    iterations = luigi.IntParameter(default=300)
    thread_count = luigi.IntParameter(default=-1)
    random_seed = luigi.IntParameter(default=42)
    max_train_rows = luigi.IntParameter(default=5_000_000, description="fit on a sample of whole users up to this")
    shards = luigi.IntParameter(default=0, description="scoring shards by user; 0: one per rows_per_shard rows")
    rows_per_shard = luigi.IntParameter(default=5_000_000, description="inference rows per shard when shards = 0")

    def week_input_dir(self, week: date) -> Path:
        return _under_root(self.input_dir.replace("{week}", week.isoformat()))

    def week_model_dir(self, week: date) -> Path:
        return _under_root(self.model_dir) / week.isoformat()


class telegram(luigi.Config):  # noqa: N801
    """Where messages go. The token and chat id are read from the environment only."""

    api_url = luigi.Parameter(default="https://api.telegram.org", description="Bot API base URL")
    notify = luigi.ListParameter(default=["SUCCESS", "FAILURE", "BROKEN_TASK", "PROCESS_FAILURE", "TIMEOUT"],
                                 description="Luigi events that send a message")
    timeout = luigi.FloatParameter(default=5.0, description="seconds to wait for the Bot API")
    max_retry_after = luigi.FloatParameter(default=30.0, description="longest wait a 429 may ask for")
    log_location = luigi.Parameter(default="var/log/weekly-recs.log",
                                   description="where failure messages tell you to look")

    @staticmethod
    def token() -> str:
        return os.environ.get("TELEGRAM_BOT_TOKEN", "")

    @staticmethod
    def chat_id() -> str:
        return os.environ.get("TELEGRAM_CHAT_ID", "")


def _under_root(path: str) -> Path:
    """Relative paths are taken from the checkout, so cron and tests may start anywhere."""
    resolved = Path(path).expanduser()
    return resolved if resolved.is_absolute() else ROOT / resolved


def checked_identifier(name: str, setting: str) -> str:
    """Table names reach SQL only as identifiers; a name that is not a plain one is refused."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{setting}: {name!r} is not a valid table name (lowercase letters, digits, _)")
    return name
