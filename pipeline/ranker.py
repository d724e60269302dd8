"""The ranking model: which CatBoost model on which features, validated the same way every week."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from catboost import CatBoostClassifier, CatBoostRanker

from pipeline import config, metrics
from pipeline.features import with_derived_features


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
    popularity: pd.DataFrame = field(compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: config.pipeline, popularity: pd.DataFrame) -> Ranker:
        return cls(settings.ranker, settings.ranker_loss, tuple(settings.features), tuple(settings.derived_features),
                   tuple(settings.cat_features), settings.iterations, settings.thread_count, settings.random_seed,
                   settings.holdout_share, popularity)

    def parameters(self) -> dict:
        return {"loss": self.loss if self.kind == "CatBoostRanker" else "Logloss", "iterations": self.iterations,
                "features": [*self.features, *self.derived], "cat_features": list(self.cat_features)}

    def prepared(self, candidates: pd.DataFrame) -> pd.DataFrame:
        """Sorted by user (the ranker's groups must be contiguous), with the derived features."""
        ordered = candidates.sort_values(["user_id", "item_id"], kind="stable", ignore_index=True)
        return with_derived_features(ordered, self.derived, self.popularity)

    def fit(self, train: pd.DataFrame) -> CatBoostClassifier | CatBoostRanker:
        common = dict(iterations=self.iterations, random_seed=self.seed, thread_count=self.thread_count,
                      cat_features=list(self.cat_features), allow_writing_files=False, verbose=False)
        columns = train[[*self.features, *self.derived]]
        if self.kind == "CatBoostRanker":
            return CatBoostRanker(loss_function=self.loss, **common).fit(columns, train["target"],
                                                                         group_id=train["user_id"])
        return CatBoostClassifier(**common).fit(columns, train["target"])

    def scores(self, model: CatBoostClassifier | CatBoostRanker, candidates: pd.DataFrame) -> np.ndarray:
        columns = candidates[[*self.features, *self.derived]]
        if isinstance(model, CatBoostClassifier):
            return model.predict_proba(columns)[:, 1]
        return model.predict(columns)

    def validation(self, train: pd.DataFrame) -> dict[str, float]:
        """Metrics on held-out users: this model's order, then the als_score order, on the same users."""
        users = train["user_id"].unique()
        held_out = users[np.random.default_rng(self.seed).random(len(users)) < self.holdout_share]
        is_held_out = train["user_id"].isin(held_out)
        model = self.fit(train[~is_held_out])
        test = train[is_held_out]
        users, targets = test["user_id"].to_numpy(), test["target"].to_numpy()
        ranked = metrics.per_user_metrics(users, self.scores(model, test), targets)
        als = metrics.per_user_metrics(users, test["als_score"].to_numpy(), targets)
        return {**metrics.summary(ranked), **{f"als_{k}": v for k, v in metrics.summary(als).items()}}


def candidates_ranked(candidates: pa.Table, scores: np.ndarray) -> pa.Table:
    """Candidates with `cb_score` and `rank` (1 = best per user; ties go to the lower item_id)."""
    scored = candidates.append_column("cb_score", pa.array(scores, pa.float64()))
    order = pc.sort_indices(scored, sort_keys=[
        ("user_id", "ascending"), ("cb_score", "descending"), ("item_id", "ascending")])
    scored = scored.take(order)
    users = scored.column("user_id").to_numpy()
    position = np.arange(len(users))
    first_of_user = np.r_[True, users[1:] != users[:-1]] if len(users) else np.array([], bool)
    user_start = np.maximum.accumulate(np.where(first_of_user, position, 0))
    return scored.append_column("rank", pa.array(position - user_start + 1, pa.int32()))
