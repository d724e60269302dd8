"""The ranking model: which CatBoost model on which features, validated the same way every week."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from catboost import CatBoostClassifier, CatBoostRanker, Pool

from pipeline import config, contracts, metrics
from pipeline.features import with_derived_features
from pipeline.validation import held_out_rows, held_out_week

GROUP = "_group"  # the ranker's own column: which ranked list a row belongs to
GROUP_WEEK = contracts.CANDIDATES_TRAIN.group  # in train files made of several weeks' outcomes


@dataclass(frozen=True)
class Ranker:
    """Which CatBoost model, on which features; the same preparation for train and inference."""

    kind: str
    loss: str
    features: tuple[str, ...]
    derived: tuple[str, ...]
    cat_features: tuple[str, ...]
    iterations: int
    thread_count: int
    seed: int
    holdout_share: float
    holdout: str
    popularity: pd.DataFrame = field(compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: config.pipeline, popularity: pd.DataFrame) -> Ranker:
        chosen = settings.ranker_features()
        return cls(settings.ranker, settings.ranker_loss, chosen.features, chosen.derived_features, chosen.cat_features,
                   settings.iterations, settings.thread_count, settings.random_seed, settings.holdout_share,
                   settings.holdout, popularity)

    def parameters(self) -> dict:
        return {"loss": self.loss if self.kind == "CatBoostRanker" else "Logloss", "iterations": self.iterations,
                "features": [*self.features, *self.derived], "cat_features": list(self.cat_features)}

    @property
    def columns(self) -> list[str]:
        """What the model reads from a candidates table (besides the derived features)."""
        return list(dict.fromkeys(["user_id", "item_id", "als_score", "category_id", *self.features]))

    def prepared(self, candidates: pd.DataFrame, items: pd.DataFrame | None = None) -> pd.DataFrame:
        """Sorted by group, with the derived features. A group is what one ranked list answers: a user's
        candidates, or, where train rows carry the week of their outcome, a user's candidates of one week."""
        by = ["user_id", *([GROUP_WEEK] if GROUP_WEEK in candidates else [])]
        ordered = candidates.sort_values([*by, "item_id"], kind="stable", ignore_index=True)
        ordered[GROUP] = ordered.groupby(by, sort=False).ngroup()
        return with_derived_features(ordered, self.derived, self.popularity, items, by=GROUP)

    def pool(self, train: pd.DataFrame) -> Pool:
        """The model's view of prepared train rows: its features, target and (for a ranker) groups."""
        return Pool(train[[*self.features, *self.derived]], train["target"], cat_features=list(self.cat_features),
                    group_id=train[GROUP] if self.kind == "CatBoostRanker" else None)

    def fit(self, pool: Pool) -> CatBoostClassifier | CatBoostRanker:
        common = dict(iterations=self.iterations, random_seed=self.seed, thread_count=self.thread_count,
                      allow_writing_files=False, verbose=False)
        if self.kind == "CatBoostRanker":
            return CatBoostRanker(loss_function=self.loss, **common).fit(pool)
        return CatBoostClassifier(**common).fit(pool)

    def held_out_split(self, train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Prepared train rows as (learn, held out): held-out users with all their groups, or the latest
        outcome week (`[pipeline] holdout`), the way the model meets the next week."""
        weeks = train[GROUP_WEEK].to_numpy() if GROUP_WEEK in train and len(train) else None
        week = held_out_week(self.holdout, weeks.min(), weeks.max()) if weeks is not None else None
        is_held_out = held_out_rows(train["user_id"].to_numpy(), weeks, week, self.seed, self.holdout_share)
        return train[~is_held_out], train[is_held_out]

    def loaded(self, blob: bytes) -> CatBoostClassifier | CatBoostRanker:
        """A model this ranker fitted, from the bytes of its saved file."""
        model = CatBoostRanker() if self.kind == "CatBoostRanker" else CatBoostClassifier()
        model.load_model(blob=blob)
        return model

    def scores(self, model: CatBoostClassifier | CatBoostRanker, candidates: pd.DataFrame) -> np.ndarray:
        columns = candidates[[*self.features, *self.derived]]
        if isinstance(model, CatBoostClassifier):
            return model.predict_proba(columns)[:, 1]
        return model.predict(columns)

    def validation(self, model: CatBoostClassifier | CatBoostRanker, test: pd.DataFrame) -> dict[str, float]:
        """Metrics on held-out rows: this model's order, then the als_score order, and the standard
        errors of the model's NDCG@10 and of its difference to the als order's."""
        groups, targets = test[GROUP].to_numpy(), test["target"].to_numpy()
        ranked = metrics.per_user_metrics(groups, self.scores(model, test), targets)
        als = metrics.per_user_metrics(groups, test["als_score"].to_numpy(), targets)
        return {**metrics.summary(ranked), **{f"als_{k}": v for k, v in metrics.summary(als).items()},
                "ndcg_se": metrics.standard_error(ranked["ndcg"]),
                "ndcg_vs_als_se": metrics.standard_error(ranked["ndcg"] - als["ndcg"]), "groups": len(ranked)}


def ranked_batches(ranker: Ranker, model, items: pd.DataFrame, tables: Iterator[pa.Table]) -> Iterator[pa.RecordBatch]:
    """Each table of whole users, scored and ranked: memory holds one table at a time."""
    for table in tables:
        ordered = table.sort_by([("user_id", "ascending"), ("item_id", "ascending")])
        candidates = ranker.prepared(ordered.select(ranker.columns).to_pandas(), items)
        yield from candidates_ranked(ordered, ranker.scores(model, candidates)).to_batches()


def whole_users(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Batches sorted by user, regrouped into tables of about `rows` rows that never split a user."""
    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        pending.append(batch)
        size += batch.num_rows
        if size < rows:
            continue
        table = pa.Table.from_batches(pending)
        users = table.column("user_id")
        cut = pc.index(users, users[-1]).as_py()
        if cut:
            yield table.slice(0, cut)
            pending, size = table.slice(cut).to_batches(), table.num_rows - cut
    if size:
        yield pa.Table.from_batches(pending)


def candidates_ranked(candidates: pa.Table, scores: np.ndarray) -> pa.Table:
    """Candidates with `cb_score` and `rank` (1 = best per user; ties go to the lower item_id)."""
    scored = candidates.append_column("cb_score", pa.array(scores, pa.float64()))
    order = pc.sort_indices(scored, sort_keys=[
        ("user_id", "ascending"), ("cb_score", "descending"), ("item_id", "ascending")])
    scored = scored.take(order)
    return scored.append_column("rank", pa.array(metrics.places(scored.column("user_id").to_numpy()) + 1, pa.int32()))
