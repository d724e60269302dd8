"""`make bench` (fourth part): the train file made from twelve weeks of outcomes, pre-buffered or not.

`TrainFromOutcomes` opens the twelve weeks' outcome files at once and reads them batch by batch,
keeping `max_train_rows` of whole user-weeks. pyarrow's `ParquetFile` pre-buffers by default and
keeps what it read while the file is open; `contracts.open_parquet` turns that off. Each way runs
`outcomes.capped_outcomes` over the same files in a process of its own: seconds and peak RSS.
The weeks are the size of `make bench-week`'s full-scale shop (60,000 users a week took one of
their 100 candidates). Writes benchmarks/train_file_results.md.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench import ROOT, WEEK, record

from pipeline.events.outcomes import OUTCOMES

WEEKS, USERS_A_WEEK, PER_USER, MAX_ROWS = 12, 60_000, 100, 250_000
BLOCK_USERS = 125  # the stage writes outcomes a candidates batch at a time: row groups of about 12,500 rows
OPENINGS = {"pyarrow's default (pre-buffered)": "pq.ParquetFile(path)",
            "contracts.open_parquet": "open_parquet(path, empty_ok=True)"}
READ = """import resource, sys, time
from pathlib import Path
import pyarrow.parquet as pq
from pipeline.config import pipeline
from pipeline.events.outcomes import capped_outcomes
from pipeline.contracts import open_parquet
started = time.perf_counter()
weeks = [{opening} for path in map(Path, sys.argv[1:])]
rows = sum(batch.num_rows for batch in capped_outcomes(weeks, pipeline(max_train_rows={max_rows}, random_seed=42)))
print(rows, time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def write_week(path: Path, week: date, rng: np.random.Generator) -> None:
    with pq.ParquetWriter(path, OUTCOMES) as writer:
        for first in range(0, USERS_A_WEEK, BLOCK_USERS):
            rows = BLOCK_USERS * PER_USER
            columns = {"user_id": np.repeat(np.arange(first, first + BLOCK_USERS), PER_USER),
                       "outcome_week": pa.repeat(pa.scalar(week, pa.date32()), rows)}
            writer.write_batch(pa.RecordBatch.from_arrays([
                columns[field.name] if field.name in columns else pa.array(
                    rng.integers(0, 1_000, rows), field.type)  # few distinct values: they compress as features do
                for field in OUTCOMES], schema=OUTCOMES))


def read(opening: str, paths: list[Path]) -> tuple[int, float, float]:
    result = subprocess.run([sys.executable, "-c", READ.format(opening=opening, max_rows=MAX_ROWS), *map(str, paths)],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    rows, seconds, peak_mb = result.stdout.split()
    return int(rows), float(seconds), float(peak_mb)


def main() -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-train-file-") as folder:
        paths = [Path(folder) / f"outcomes_{k}.parquet" for k in range(WEEKS)]
        for k, path in enumerate(paths):
            write_week(path, WEEK - timedelta(weeks=k + 1), rng)
        on_disk = sum(path.stat().st_size for path in paths) / 2**20
        results = {name: read(opening, paths) for name, opening in OPENINGS.items()}
    (_, default_s, default_mb), (_, ours_s, ours_mb) = results.values()
    lines = ["# The train file from twelve weeks of outcomes", "",
             f"{WEEKS} weeks of {USERS_A_WEEK * PER_USER:,} outcome rows ({on_disk:,.0f} MB on disk), "
             f"capped at max_train_rows = {MAX_ROWS:,} (the held-out users' share beside it); "
             f"{platform.machine()}, {os.cpu_count()} cores.", "",
             "| files opened with | rows kept | s | peak RSS, MB |", "|---|---|---|---|",
             *(f"| {name} | {rows:,} | {seconds:.1f} | {peak:,.0f} |"
               for name, (rows, seconds, peak) in results.items()),
             "", f"open_parquet against the default: peak RSS {ours_mb / default_mb:.2f}x, "
             f"time {ours_s / default_s:.2f}x."]
    text = "\n".join(lines) + "\n"
    record(text, "train_file_results.md")


if __name__ == "__main__":
    main()
