"""Deterministic synthetic inputs for a week: `python -m pipeline.sample_data data/`.

Users prefer a few categories; whether a candidate is taken depends on that
preference, on the item's popularity and on availability, while `als_score` sees
the preference only through noise. So the ranker has something real to learn
beyond the candidates' own order.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

USERS, ITEMS, CATEGORIES, PARENTS, CANDIDATES_PER_USER = 2_000, 400, 24, 6, 20


def write_sample_week(out_dir: Path, seed: int = 7, users: int = USERS, truth: Path | None = None) -> None:
    """`truth`, where given, gets what the inference users go on to do (`target`), to measure a ranking by."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = _items(rng)
    preference = rng.dirichlet(np.full(CATEGORIES, 0.3), size=users)
    pq.write_table(_candidates(rng, items, preference, user_offset=0), out_dir / "candidates_train.parquet")
    inference = _candidates(rng, items, preference, user_offset=users)
    pq.write_table(inference.drop_columns(["target"]), out_dir / "candidates_inference.parquet")
    if truth is not None:
        pq.write_table(inference.select(["user_id", "item_id", "target"]), truth)
    pq.write_table(_top_popular(items), out_dir / "top_popular.parquet")
    pq.write_table(_similar(rng, items), out_dir / "similar.parquet")


def _items(rng: np.random.Generator) -> dict[str, np.ndarray]:
    category = rng.integers(0, CATEGORIES, ITEMS)
    return {
        "item_id": np.arange(1, ITEMS + 1, dtype=np.int64) * 10,
        "category_id": category.astype(np.int64) + 100,
        "parent_id": (category % PARENTS).astype(np.int64) + 1,
        "popularity": rng.pareto(1.5, ITEMS) + 0.1,
        "available": (rng.random(ITEMS) < 0.85).astype(np.int64),
    }


def _candidates(rng, items, preference, user_offset: int) -> pa.Table:
    users = len(preference)
    user_idx = np.repeat(np.arange(users), CANDIDATES_PER_USER)
    item_idx = np.concatenate([rng.choice(ITEMS, CANDIDATES_PER_USER, replace=False) for _ in range(users)])
    affinity = preference[user_idx, items["category_id"][item_idx] - 100]
    popularity = np.log1p(items["popularity"][item_idx])
    available = items["available"][item_idx]
    als_score = (0.6 * affinity + 0.1 * popularity + rng.normal(0, 0.15, len(user_idx))).astype(np.float32)
    columns = {
        "user_id": (user_idx + user_offset + 1).astype(np.int64),
        "item_id": items["item_id"][item_idx],
        "als_score": als_score,
        "category_id": items["category_id"][item_idx],
        "parent_id": items["parent_id"][item_idx],
        "available": available,
    }
    logit = 6 * affinity + 0.8 * popularity + 1.5 * available - 3.5
    columns["target"] = (rng.random(len(user_idx)) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return pa.table(columns)


def _top_popular(items) -> pa.Table:
    order = np.argsort(-items["popularity"])[:100]
    return pa.table({"item_id": items["item_id"][order],
                     "items_cnt": np.round(items["popularity"][order] * 1000).astype(np.int64)})


def _similar(rng, items) -> pa.Table:
    same_category = [np.flatnonzero(items["category_id"] == c) for c in items["category_id"]]
    pairs = [(i, j) for i, peers in enumerate(same_category)
             for j in rng.choice(peers, min(10, len(peers)), replace=False) if i != j]
    first, second = np.array(pairs).T
    return pa.table({"itemid_1": items["item_id"][first], "itemid_2": items["item_id"][second],
                     "score": rng.random(len(first)).astype(np.float32)})


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "data")
    write_sample_week(target)
    print(f"sample week written to {target}/")
