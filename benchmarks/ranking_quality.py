"""Both rankers, with and without the derived features, on MovieLens 100k: which beats the als_score order.

    python benchmarks/ranking_quality.py ../shared/datasets/ml-100k

Uses the task's own `Ranker`, with the settings of `source = files` (the seed's four features, 300
iterations), on the files `pipeline.evaluation.movielens` makes; writes benchmarks/ranking_quality.md.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline import config
from pipeline.evaluation.movielens import evaluate, make_week
from pipeline.features import DERIVED
from pipeline.ranker import Ranker, candidates_ranked


def ranking_quality(week: Path, kind: str, derived: tuple[str, ...]) -> dict[str, float]:
    defaults = Ranker.from_settings(config.pipeline(), pd.read_parquet(week / "top_popular.parquet"))
    ranker = replace(defaults, kind=kind, derived=derived)
    train = ranker.prepared(pd.read_parquet(week / "candidates_train.parquet"))
    inference = ranker.prepared(pd.read_parquet(week / "candidates_inference.parquet"))
    model = ranker.fit(ranker.pool(train))
    learn, test = ranker.held_out_split(train)
    columns = ["user_id", "item_id", "als_score"]
    ranked = candidates_ranked(pa.Table.from_pandas(inference[columns], preserve_index=False),
                               ranker.scores(model, inference)).to_pandas()
    return {"validation_ndcg": ranker.validation(ranker.fit(ranker.pool(learn)), test)["ndcg_at_10"],
            **evaluate(ranked, pd.read_parquet(week / "test_interactions.parquet"))}


def main(dataset: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        week = Path(folder)
        make_week(dataset, week)
        rows = []
        for kind in ("CatBoostClassifier", "CatBoostRanker"):
            for derived in ((), tuple(DERIVED)):
                result = ranking_quality(week, kind, derived)
                rows.append(f"| {kind} | {'yes' if derived else 'no'} | {result['ndcg_at_10']:.4f} | "
                            f"{result['precision_at_10']:.4f} | {result['recall_at_10']:.4f} | "
                            f"{result['als_ndcg_at_10']:.4f} | {result['ndcg_gain']:+.1%} "
                            f"[{result['ndcg_gain_low']:+.1%}, {result['ndcg_gain_high']:+.1%}] |")
                print(rows[-1], flush=True)
    header = ("| ranker | derived features | NDCG@10 | P@10 | R@10 | als_score order NDCG@10 | "
              "NDCG gain [95% user bootstrap] |\n|---|---|---|---|---|---|---|\n")
    Path(__file__).with_name("ranking_quality.md").write_text(header + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
