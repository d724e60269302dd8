"""RankCandidates: re-train CatBoost on the week's train candidates and rank its inference candidates."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from catboost import CatBoostClassifier

from pipeline import config, db
from pipeline.base import PublishingTask, published_table
from pipeline.load import InferenceCandidates, TrainCandidates


class RankCandidates(PublishingTask):
    table = published_table("candidates_ranked")
    unique_key = ("user_id", "item_id")

    def requires(self) -> dict[str, TrainCandidates | InferenceCandidates]:
        return {"train": TrainCandidates(week=self.week),
                "inference": InferenceCandidates(week=self.week)}

    def run(self) -> None:
        settings = config.pipeline()
        model_dir = writable_model_dir(settings.week_model_dir(self.week))
        self.set_status_message("reading candidates back")
        inputs = self.requires()
        with db.connection() as conn:
            train = db.read_week(conn, inputs["train"].table, self.week)
            inference = db.read_week(conn, inputs["inference"].table, self.week)
        self.set_status_message(f"training on {train.num_rows} candidates")
        self.set_progress_percentage(20)
        model = fit_classifier(train, settings)
        model.save_model(str(model_dir / "model.cbm"))
        self.set_progress_percentage(70)
        self.set_status_message(f"ranking {inference.num_rows} candidates")
        ranked = candidates_ranked(inference, model.predict_proba(
            inference.select(list(settings.features)).to_pandas())[:, 1])
        self.publish(ranked.to_batches(), ranked.schema)
        self.set_progress_percentage(100)


def writable_model_dir(path: os.PathLike) -> os.PathLike:
    """Fail before training, not after, when the model cannot be saved."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"[pipeline] model_dir: cannot create {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK):
        raise PermissionError(f"[pipeline] model_dir: {path} is not writable")
    return path


def fit_classifier(train: pa.Table, settings: config.pipeline) -> CatBoostClassifier:
    model = CatBoostClassifier(
        iterations=settings.iterations, random_seed=settings.random_seed,
        thread_count=settings.thread_count, cat_features=list(settings.cat_features),
        allow_writing_files=False, verbose=False,
    )
    model.fit(train.select(list(settings.features)).to_pandas(), train.column("target").to_numpy())
    return model


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
