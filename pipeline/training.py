"""The week's fit, each large step in a Python process of its own.

A CatBoost fit takes about 600 MB a million train rows on top of its data, and a process's heap
keeps what it frees. Run in the Luigi worker, that memory would stay under the shards that score
after it, and the worker would grow with the week. So `TrainRanker` streams its sample of train
candidates to a file in a folder of its own, and fresh processes take it from there:

    train_files   the sample, prepared, as the rows CatBoost reads itself (learn and whole, tab
                  separated, with their column description) and the held-out rows: the only step
                  that holds the sample as a DataFrame
    validated     fits on the learn rows, scores the held-out ones: the gate's metrics; for a week
                  fitted once (`validation.fitted_once`) it saves this model as the week's
    fitted        fits on the whole sample and saves the week's model (not for a week fitted once)

Each exits when done, and with it everything it held. The fits read their rows with CatBoost's
own file reader, so their process never holds a DataFrame: the model is the one a fit on the
DataFrame gives (tested). A quantized pool would be smaller still, but CatBoost computes its
categorical features' statistics differently from one, and the model would change.
"""

from __future__ import annotations

import multiprocessing
import resource
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from catboost import Pool

from pipeline.ranker import GROUP, Ranker

SAMPLE, LEARN, WHOLE, HELD_OUT, COLUMNS = "sample.arrow", "learn.tsv", "whole.tsv", "held_out.feather", "columns.cd"


def train_files(ranker: Ranker, folder: Path, items: pa.Table, once: bool = False) -> dict[str, int]:
    """The rows and positives the week's model learns from, with the files for the fits written
    beside the sample: for a week fitted `once`, no whole file, as its model learns the learn rows alone."""
    with pa.OSFile(str(folder / SAMPLE)) as source:
        table = pa.ipc.open_file(source).read_all()
    train = ranker.prepared(table.to_pandas(split_blocks=True, self_destruct=True),
                            items.to_pandas().set_index("item_id"))
    del table
    learn, test = ranker.held_out_split(train)
    columns = pool_columns(ranker)
    (folder / COLUMNS).write_text("".join(f"{i}\t{role}\t{name}\n" for i, (name, role) in enumerate(columns)))
    for name, rows in ({LEARN: learn} if once else {LEARN: learn, WHOLE: train}).items():
        pacsv.write_csv(pa.Table.from_pandas(rows[[name for name, _ in columns]], preserve_index=False),
                        folder / name, pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"))
    test[[GROUP, "target", *dict.fromkeys(["als_score", *ranker.features, *ranker.derived])]].reset_index(
        drop=True).to_feather(folder / HELD_OUT)
    learned = learn if once else train
    return {"train_rows": len(learned), "positives": int(learned["target"].sum()), "fits": 1 if once else 2}


def validated(ranker: Ranker, folder: Path, model_path: Path | None = None) -> dict[str, float]:
    """The gate's metrics of a fit on the learn rows; that model saved to `model_path`, if given."""
    model = ranker.fit(_pool(folder, LEARN))
    if model_path is not None:
        model.save_model(str(model_path))
    return ranker.validation(model, pd.read_feather(folder / HELD_OUT))


def fitted(ranker: Ranker, folder: Path, model_path: Path) -> None:
    ranker.fit(_pool(folder, WHOLE)).save_model(str(model_path))


def pool_columns(ranker: Ranker) -> list[tuple[str, str]]:
    """The columns of the files the fits read, with their role in CatBoost's column description."""
    return [("target", "Label"), *([(GROUP, "GroupId")] if ranker.kind == "CatBoostRanker" else []),
            *((name, "Categ" if name in ranker.cat_features else "Num")
              for name in (*ranker.features, *ranker.derived))]


class FreshProcesses:
    """Runs each step in a process of its own, forked from a server process that has imported this
    module and holds nothing of the worker's: it starts in milliseconds (a spawn would import CatBoost
    and pandas again, about a second a step) and frees all it held as it exits.

    A forkserver's children are not the worker's, so no rusage of the worker (`/usr/bin/time`) sees
    them: each step reports its own peak RSS, and `peak_mb` keeps the largest (`model_metrics`
    records it as `fit_peak_rss_mb`).
    """

    def __init__(self) -> None:
        self.peak_mb = 0.0

    def run(self, function: Callable, *args):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                result, peak_mb = pool.submit(_measured, function, *args).result()
        except BrokenProcessPool:
            raise MemoryError(f"the process running {function.__name__} died (out of memory?); "
                              "lower [pipeline] max_train_rows") from None
        self.peak_mb = max(self.peak_mb, peak_mb)
        return result


def _measured(function: Callable, *args) -> tuple:
    result = function(*args)
    return result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pool(folder: Path, name: str) -> Pool:
    return Pool(str(folder / name), column_description=str(folder / COLUMNS), delimiter="\t")
