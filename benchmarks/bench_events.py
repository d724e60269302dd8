"""`make bench` (second part): the events stage on 10M synthetic events, time and peak RSS.

A synthetic shop of 200,000 users and 50,000 items writes 16 weeks of events (about 10.6M). Each
step of a week runs as its own `luigi --module pipeline ...` command under /usr/bin/time -v, as a
worker would run it: the week's candidates at its cutoff (one ALS fit, 100 candidates a user), the
previous week's outcomes (labelling its candidates by the 7 days after its cutoff), and the train
file. The baseline, run in the same script: reading the same events with pyarrow alone. Writes
benchmarks/events_results.md.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench import LUIGI, ROOT, WEEK, record

from pipeline.sample_events import week_end, write_sample_events

USERS, ITEMS, WEEKS = 200_000, 50_000, 16
BASELINE = "import pyarrow.parquet as pq; pq.read_table('{}', columns=['user_id', 'item_id', 'timestamp', 'event'])"


def timed_command(command: list[str], settings: Path | None = None) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one command in its own process."""
    env = {**os.environ, **({"LUIGI_CONFIG_PATH": str(settings)} if settings else {})}
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v", *command], cwd=ROOT, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    return seconds, int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1)) / 1024


def settings_file(work: Path) -> Path:
    path = work / "events.cfg"
    path.write_text(f"[pipeline]\nsource = events\ninput_dir = {work / 'weeks' / '{week}'}\n"
                    f"[events]\nevents_path = {work / 'shop' / 'events'}\n"
                    f"items_path = {work / 'shop' / 'items.parquet'}\n"
                    'weights = {"view": 1, "addtocart": 3, "transaction": 5}\ntrain_weeks = 1\n'
                    "candidates_per_user = 100\n")
    return path


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-events-") as folder:
        work = Path(folder)
        events = write_sample_events(work / "shop", week_end(WEEK), users=USERS, items=ITEMS, weeks=WEEKS)
        settings = settings_file(work)
        luigi = [LUIGI, "--module", "pipeline", "--local-scheduler"]
        previous = (WEEK - timedelta(weeks=1)).isoformat()
        rows = {
            "read the events with pyarrow (baseline)": timed_command(
                [sys.executable, "-c", BASELINE.format(work / "shop" / "events")]),
            "CandidatesAtCutoff (ALS fit, 100 candidates a user)": timed_command(
                [*luigi, "CandidatesAtCutoff", "--week", WEEK.isoformat()], settings),
            "CandidatesAtCutoff of the week before": timed_command(
                [*luigi, "CandidatesAtCutoff", "--week", previous], settings),
            "Outcomes of the week before (its next 7 days)": timed_command(
                [*luigi, "Outcomes", "--week", previous], settings),
            "TrainFromOutcomes (train_weeks = 1)": timed_command(
                [*luigi, "TrainFromOutcomes", "--week", WEEK.isoformat()], settings),
        }
    baseline_seconds, baseline_rss = rows["read the events with pyarrow (baseline)"]
    lines = [f"# The events stage on {events:,} synthetic events", "",
             f"{USERS:,} users, {ITEMS:,} items, {WEEKS} weeks; {platform.machine()}, {os.cpu_count()} cores. "
             "Each step is one `luigi` command in its own process.", "",
             "| step | seconds | x baseline | peak RSS (MB) | x baseline |", "|---|---|---|---|---|"]
    for name, (seconds, rss) in rows.items():
        lines.append(f"| {name} | {seconds:.1f} | {seconds / baseline_seconds:.1f} | {rss:.0f} | "
                     f"{rss / baseline_rss:.2f} |")
    steady = [name for name in rows if name.startswith(("CandidatesAtCutoff (", "Outcomes", "TrainFromOutcomes"))]
    lines += ["", f"A week once the weeks before it are done (its candidates, the previous week's outcomes, the "
              f"train file): {sum(rows[name][0] for name in steady):.0f} s; the largest process: "
              f"{max(rows[name][1] for name in steady):.0f} MB."]
    text = "\n".join(lines) + "\n"
    record(text, "events_results.md")


if __name__ == "__main__":
    main()
