"""The week's fit, each large step in a Python process of its own.

A CatBoost fit takes about 600 MB a million train rows on top of its data, and a process's heap
keeps what it frees. Run in the Luigi worker, that memory would stay under the shards that score
after it, and the worker would grow with the week. So `TrainRanker` streams its sample of train
candidates to a file in a folder of its own, and three fresh processes take it from there:

    quantized_pools   the sample, prepared, as two quantized CatBoost pools (learn, whole) and the
                      held-out rows: the only step that holds the sample as a DataFrame
    validated         fits on the learn pool, scores the held-out rows: the gate's metrics
    fitted            fits on the whole pool and saves the week's model

Each exits when done, and with it everything it held.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pandas as pd
import pyarrow as pa
from catboost import Pool

from pipeline.ranker import GROUP, Ranker

SAMPLE, LEARN, WHOLE, HELD_OUT = "sample.arrow", "learn.pool", "whole.pool", "held_out.feather"


def quantized_pools(ranker: Ranker, folder: Path, items: pa.Table) -> dict[str, int]:
    """The sample's rows and positives, with its pools and held-out rows written beside it."""
    with pa.OSFile(str(folder / SAMPLE)) as source:
        table = pa.ipc.open_file(source).read_all()
    train = ranker.prepared(table.to_pandas(split_blocks=True, self_destruct=True),
                            items.to_pandas().set_index("item_id"))
    del table
    learn, test = ranker.held_out_split(train)
    _save_quantized(ranker.pool(learn), folder / LEARN)
    _save_quantized(ranker.pool(train), folder / WHOLE)
    test[[GROUP, "target", *dict.fromkeys(["als_score", *ranker.features, *ranker.derived])]].reset_index(
        drop=True).to_feather(folder / HELD_OUT)
    return {"train_rows": len(train), "positives": int(train["target"].sum())}


def validated(ranker: Ranker, folder: Path) -> dict[str, float]:
    model = ranker.fit(Pool(f"quantized://{folder / LEARN}"))
    return ranker.validation(model, pd.read_feather(folder / HELD_OUT))


def fitted(ranker: Ranker, folder: Path, model_path: Path) -> None:
    ranker.fit(Pool(f"quantized://{folder / WHOLE}")).save_model(str(model_path))


def in_fresh_process(function: Callable, *args):
    """`function(*args)` in a new Python process, started by spawn: a fork would copy the worker's heap."""
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(function, *args).result()
    except BrokenProcessPool:
        raise MemoryError(f"the process running {function.__name__} died (out of memory?); "
                          "lower [pipeline] max_train_rows") from None


def _save_quantized(pool: Pool, path: Path) -> None:
    pool.quantize()
    pool.save(str(path))
