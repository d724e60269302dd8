"""`make bench-scale`: the ranking stage at 1M and 8M inference candidates, and 2 workers against 1.

Each size runs `luigi --module pipeline RankCandidates` as a user runs it: one command, one worker
(every task of the stage in that process, the fits in processes of their own), under
/usr/bin/time -v; its peak RSS is the larger of the command's and the fits' own (`model_metrics`).
The default settings, but for 50 iterations, 4 shards and a train cap of 1M rows (4x the default:
a large fit). Then the scoring shards of the 8M week are run again with 1 and with 2 worker
processes, CatBoost at one thread each: the stand-in for adding a host. Writes benchmarks/scale_results.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench import LUIGI, ROOT, WEEK, Bench, build, fits_peak_mb, week_folder

from pipeline import DefaultRecs, InferenceCandidates, TrainCandidates, db
from pipeline.rank import TrainRanker

SIZES = (1_000_000, 8_000_000)
SHARDS = 4
ONE_THREAD = {"thread_count": "1"}  # for the workers' comparison: one core a worker


def configure(bench: Bench, folder: Path, database: str) -> Path:
    return with_settings(bench.configure(folder, bench.fresh_database(database)),
                         {"shards": str(SHARDS), "max_train_rows": "1000000"})


def with_settings(path: Path, settings: dict[str, str]) -> Path:
    """The settings file with `[pipeline]` settings added, as a file beside it."""
    changed = path.with_name(f"{path.stem}-{len(settings)}-{'-'.join(settings)}.cfg")
    changed.write_text(path.read_text().replace("[pipeline]\n", "[pipeline]\n" + "".join(
        f"{key} = {value}\n" for key, value in settings.items())))
    return changed


def ranking_stage(settings_file: Path, workers: int) -> tuple[float, float]:
    """Seconds and peak RSS (MB, the largest process) of the whole RankCandidates command."""
    command = ["/usr/bin/time", "-v", LUIGI, "--module", "pipeline", "RankCandidates", "--local-scheduler",
               "--week", WEEK.isoformat(), "--workers", str(workers)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "LUIGI_CONFIG_PATH": str(settings_file)})
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1)) / 1024
    return seconds, rss


def forget_scoring() -> None:
    """The shards and the staged ranking of the week are undone, as a new model undoes them; the model stays."""
    model = TrainRanker(week=WEEK)
    model.set_status_message = print  # Luigi's worker sets it; here none runs the task
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM table_updates WHERE update_id LIKE 'RankCandidates%'")
        model.fresh_scoring(cur)
        conn.commit()


def workers_speedup(bench: Bench, settings_file: Path, rows: int) -> None:
    settings_file = with_settings(settings_file, ONE_THREAD)
    forget_scoring()
    one, one_mb = ranking_stage(settings_file, workers=1)
    forget_scoring()
    two, two_mb = ranking_stage(settings_file, workers=2)
    bench.record(f"scoring {rows:,} in {SHARDS} shards: 1 worker vs 2 worker processes (CatBoost 1 thread each)",
                 f"{one:.0f} s vs {two:.0f} s = {one / two:.2f}x faster; peak RSS {one_mb:.0f} / {two_mb:.0f} MB")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="weekly-recs-scale-") as folder:
        base = Path(folder)
        bench = Bench(base)
        bench.configure(base)
        measured = {}
        for rows in SIZES:
            week = week_folder(base, f"rank_{rows}", rows, rows)
            settings_file = configure(bench, week, f"scale_{rows}")
            build(TrainCandidates(week=WEEK), InferenceCandidates(week=WEEK), DefaultRecs(week=WEEK))
            seconds, worker_mb = ranking_stage(settings_file, workers=1)
            measured[rows] = seconds, max(worker_mb, fits_peak_mb())
            bench.record(f"ranking stage, {rows:,} train + {rows:,} inference candidates ({SHARDS} shards)",
                         f"{measured[rows][0]:.0f} s, peak RSS {measured[rows][1]:.0f} MB")
        (small_s, small_mb), (large_s, large_mb) = measured.values()
        bench.record("8M / 1M: time and largest peak RSS", f"{large_s / small_s:.2f}x and {large_mb / small_mb:.2f}x")
        workers_speedup(bench, settings_file, SIZES[-1])
        bench.server.cleanup()
    table = "\n".join(f"| {name} | {value} |" for name, value in bench.results)
    (ROOT / "benchmarks" / "scale_results.md").write_text(f"| measure | result |\n|---|---|\n{table}\n")


if __name__ == "__main__":
    main()
