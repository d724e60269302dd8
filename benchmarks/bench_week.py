"""`make bench-week`: a real shop's steady-state week, from events to live, at two ages of the shop.

A shop that ages (`write_sample_events(..., lifetime_weeks=8)`): users arrive evenly, 1M over two
years, each active for a geometric number of weeks (mean 8: about 100,000 active in any four
weeks), then gone; 50,000 items. Default settings, with `retention = 4`.

For each age (two years, then one year of the same weekly activity; both older than the history
and activity windows, so that only the age differs): the weeks before are done first, as earlier
Saturdays left them (their candidates and outcomes), then the week runs task by task, each as its
own `luigi --module pipeline` command under /usr/bin/time -v (seconds, and the peak RSS of the
largest process: the fits' own included, from `model_metrics`). Then PostgreSQL's disk, and the
events stage's week folders (the week's and the train_weeks' before it, which housekeeping keeps).

    BENCH_WEEK_SCALE=0.1 make bench-week      a tenth of the shop, to try the script

Writes benchmarks/week_results.md (at a fraction: week_results_scale<fraction>.md).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench import LUIGI, ROOT, WEEK, Bench, fits_peak_mb, record
from bench_events import timed_command

from pipeline import db
from pipeline.sample_events import week_end, write_sample_events

SCALE = float(os.environ.get("BENCH_WEEK_SCALE", "1"))
USERS_A_WEEK, ITEMS, LIFETIME_WEEKS = round(1_000_000 * SCALE / 104), 50_000, 8
AGES = {"two years": 104, "one year": 52}
TRAIN_WEEKS = 12  # [events] train_weeks' default: the outcomes a week learns from
STEPS = ("CutoffModel", "CandidatesAtCutoff", "Outcomes (the week before)", "TrainFromOutcomes", "CheckInputs",
         "DefaultRecs", "OnlineRecs", "TrainCandidates", "InferenceCandidates", "TrainRanker", "RankCandidates",
         "WeeklyRecs (publish)")
DISK = """SELECT CASE WHEN c.relname LIKE '%%\\_\\_staged\\_%%' THEN 'staged'
                   WHEN i.inhrelid IS NOT NULL THEN 'live' WHEN c.relname ~ '__[0-9]{8}$' THEN 'archived'
                   ELSE 'other' END, sum(pg_total_relation_size(c.oid))
            FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
            WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace GROUP BY 1"""


def settings_file(work: Path, bench: Bench, database: str) -> Path:
    path = work / "week.cfg"
    path.write_text(f"[postgres]\nhost = {bench.socket}\ndatabase = {database}\n"
                    f"[pipeline]\nsource = events\ninput_dir = {work / 'weeks' / '{week}'}\n"
                    f"model_dir = {work / 'models'}\nretention = 4\n"
                    f"[events]\nevents_path = {work / 'shop' / 'events'}\n"
                    f"items_path = {work / 'shop' / 'items.parquet'}\n")
    return path


def weeks_before(settings: Path) -> float:
    """What earlier Saturdays left: the last train_weeks weeks' candidates, and all but the last one's outcomes."""
    earlier = [(WEEK - timedelta(weeks=k)).isoformat() for k in range(1, TRAIN_WEEKS + 1)]
    script = ("import luigi, pipeline; from datetime import date; from pipeline.events.tasks import"
              " CandidatesAtCutoff, Outcomes; weeks = [date.fromisoformat(w) for w in sys.argv[1:]];"
              " assert luigi.build([CandidatesAtCutoff(week=weeks[0])] + [Outcomes(week=w) for w in weeks[1:]],"
              " local_scheduler=True, workers=1)")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; " + script, *earlier], cwd=ROOT, check=True,
                   env={**os.environ, "LUIGI_CONFIG_PATH": str(settings)}, capture_output=True)
    return time.perf_counter() - started


def the_week(settings: Path) -> dict[str, tuple[float, float]]:
    luigi = [LUIGI, "--module", "pipeline", "--local-scheduler"]
    week, before = WEEK.isoformat(), (WEEK - timedelta(weeks=1)).isoformat()
    tasks = [name.split()[0] for name in STEPS]
    steps = {name: timed_command([*luigi, task, "--week", before if name.startswith("Outcomes") else week], settings)
             for name, task in zip(STEPS, tasks, strict=True)}
    seconds, worker_mb = steps["TrainRanker"]
    steps["TrainRanker"] = seconds, max(worker_mb, fits_peak_mb())
    return steps


def disk_mb() -> dict[str, float]:
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(DISK)
        return {kind: size / 2**20 for kind, size in cur.fetchall()}


def folders_mb(weeks: Path) -> dict[str, float]:
    """The events stage's week folders on disk: the week's own, and all of them."""
    sizes = {folder.name: sum(path.stat().st_size for path in folder.rglob("*")) / 2**20 for folder in weeks.iterdir()}
    return {"folders": len(sizes), "week": sizes[WEEK.isoformat()], "all": sum(sizes.values())}


def shop_week(base: Path, bench: Bench, age: str, weeks: int) -> dict:
    work = base / age.replace(" ", "-")
    started = time.perf_counter()
    events = write_sample_events(work / "shop", week_end(WEEK), users=USERS_A_WEEK * weeks, items=ITEMS,
                                 weeks=weeks, lifetime_weeks=LIFETIME_WEEKS)
    print(f"{age}: {events:,} events written in {time.perf_counter() - started:.0f} s", flush=True)
    settings = settings_file(work, bench, bench.fresh_database(f"week_{weeks}"))
    bench.configure(work / "weeks" / "{week}", f"week_{weeks}")  # this process reads the same database
    before = weeks_before(settings)
    print(f"{age}: the weeks before made in {before:.0f} s", flush=True)
    steps = the_week(settings)
    for name, (seconds, rss) in steps.items():
        print(f"{age}: {name:<30} {seconds:7.1f} s {rss:7.0f} MB", flush=True)
    return {"events": events, "steps": steps, "disk": disk_mb(), "files": folders_mb(work / "weeks")}


def report(results: dict[str, dict]) -> str:
    old, young = results["two years"], results["one year"]
    whole = {age: sum(seconds for seconds, _ in r["steps"].values()) for age, r in results.items()}
    largest = {age: max(rss for _, rss in r["steps"].values()) for age, r in results.items()}
    lines = [f"# A steady-state week, from events to live (scale {SCALE:g})", "",
             f"{USERS_A_WEEK:,} new users a week, each active a mean {LIFETIME_WEEKS} weeks; {ITEMS:,} items; "
             f"{platform.machine()}, {os.cpu_count()} cores. Events: two years {old['events']:,}, one year "
             f"{young['events']:,}. Each step is one `luigi` command, timed with its processes.", "",
             "| step | two years: s | MB | one year: s | MB |", "|---|---|---|---|---|"]
    for name in STEPS:
        (s_old, mb_old), (s_young, mb_young) = old["steps"][name], young["steps"][name]
        lines.append(f"| {name} | {s_old:.1f} | {mb_old:.0f} | {s_young:.1f} | {mb_young:.0f} |")
    lines += [f"| **the whole week** | **{whole['two years']:.0f}** | **{largest['two years']:.0f}** | "
              f"**{whole['one year']:.0f}** | **{largest['one year']:.0f}** |", "",
              f"Two years over one year: the week's time {whole['two years'] / whole['one year']:.2f}x, "
              f"its largest process {largest['two years'] / largest['one year']:.2f}x.", "",
              "PostgreSQL's disk after the week (MB): " + "; ".join(
                  f"{age}: " + ", ".join(f"{kind} {size:,.0f}" for kind, size in sorted(r["disk"].items()))
                  for age, r in results.items()), "",
              "The events stage's week folders after the week (MB): " + "; ".join(
                  f"{age}: {r['files']['folders']:.0f} folders, {r['files']['all']:,.0f} (the week's "
                  f"{r['files']['week']:,.0f})" for age, r in results.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-week-") as folder:
        base = Path(folder)
        bench = Bench(base)
        bench.configure(base)  # this process talks to the bench's server from the start
        results = {age: shop_week(base, bench, age, weeks) for age, weeks in AGES.items()}
        bench.server.cleanup()
    # a fraction of the shop never hides the whole one's results
    record(report(results), "week_results.md" if SCALE == 1 else f"week_results_scale{SCALE:g}.md")


if __name__ == "__main__":
    main()
