"""`make bench`: the pipeline's loads and ranking against the ways it could have been done, in one run.

Everything runs against one fresh embedded PostgreSQL, on generated candidates files that meet the
input contract; results are ratios within this run (the machine is shared and noisy), printed and
written to benchmarks/results.md.
"""

from __future__ import annotations

import io
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import luigi
import luigi.configuration
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from luigi.contrib.postgres import CopyToTable
from luigi.task_register import Register
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import DefaultRecs, InferenceCandidates, RankCandidates, TrainCandidates, db, publish  # noqa: E402
from pipeline.load import CheckInputs  # noqa: E402
from pipeline.rank import TrainRanker, read_week  # noqa: E402
from pipeline.sample_data import write_sample_week  # noqa: E402

WEEK = date(2026, 11, 21)
LUIGI = str(Path(sys.executable).with_name("luigi"))
SIZES = (1_000_000, 5_000_000)
WHOLE_COMMAND_ROWS = 3_000_000
RANK_ROWS = 1_000_000
REPLACED_ROWS = 100_000


def record(text: str, file: str) -> None:
    """A bench's results, printed and kept as benchmarks/<file> for the README to quote."""
    print(text)
    (ROOT / "benchmarks" / file).write_text(text)


def candidates(rows: int, seed: int, with_target: bool) -> pa.Table:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(rows // 20, dtype=np.int64), 20)
    items = (np.tile(np.arange(20, dtype=np.int64), rows // 20) * 37 + users * 11) % 20_000
    columns = {"user_id": users, "item_id": items, "als_score": rng.random(rows, dtype=np.float32),
               "category_id": items % 50, "parent_id": items % 7, "available": (items % 5 > 0).astype(np.int64)}
    if with_target:
        columns["target"] = (rng.random(rows) < 0.05 + 0.3 * columns["als_score"]).astype(np.int64)
    return pa.table(columns)


def week_folder(base: Path, name: str, train_rows: int, inference_rows: int) -> Path:
    folder = base / name
    write_sample_week(folder, users=50)  # small top_popular and similar files
    pq.write_table(candidates(train_rows, 1, True), folder / "candidates_train.parquet")
    pq.write_table(candidates(inference_rows, 2, False), folder / "candidates_inference.parquet")
    return folder


class Bench:
    def __init__(self, work: Path):
        self.work = work
        self.server = db.embedded_package().get_server(work / "pgdata", cleanup_mode="stop")
        self.socket = str(self.server.get_postmaster_info().socket_dir)
        self.results: list[tuple[str, str]] = []

    def configure(self, input_dir: Path, database: str = "postgres", iterations: int = 50) -> Path:
        settings = {"postgres": {"host": self.socket, "database": database},
                    "pipeline": {"input_dir": str(input_dir), "model_dir": str(self.work / "models"),
                                 "iterations": str(iterations)}}
        current = luigi.configuration.get_config()
        for section, values in settings.items():
            for key, value in values.items():
                current.set(section, key, value)
        Register.clear_instance_cache()
        path = self.work / "bench.cfg"
        path.write_text("".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items())
                                for s, kv in settings.items()))
        return path

    def fresh_database(self, name: str) -> str:
        with db.connection() as conn:
            conn.autocommit = True
            conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.cursor().execute(f'CREATE DATABASE "{name}"')
        return name

    def record(self, name: str, value: str) -> None:
        self.results.append((name, value))
        print(f"{name:<72} {value}", flush=True)


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def build(*tasks: luigi.Task) -> None:
    """Run tasks in this process with Luigi's worker (which gives them their status callbacks)."""
    result = luigi.build(list(tasks), local_scheduler=True, log_level="WARNING", detailed_summary=True)
    assert result.status.name == "SUCCESS", result.summary_text


def load_task(rows_dir: Path, bench: Bench, rows: int) -> float:
    """The project's InferenceCandidates: parquet decode, checks, COPY, index, atomic publish.

    The week's CheckInputs runs first, untimed: it is a task of its own.
    """
    bench.configure(rows_dir, bench.fresh_database(f"load_{rows}"))
    build(CheckInputs(week=WEEK))
    return timed(lambda: build(InferenceCandidates(week=WEEK)))


def statistics_before_going_live() -> float:
    """What `live_locks.prepare_to_attach` adds to a publish per table: sampling the staged table,
    so that the planner knows the week the moment it goes live (the load task's database)."""
    with db.connection() as conn, conn.cursor() as cur:
        return timed(lambda: publish.analyze(cur, publish.staged_name(InferenceCandidates(week=WEEK).table, WEEK)))


def server_side_copy(rows_dir: Path, bench: Bench, rows: int) -> float:
    """PostgreSQL reading a CSV file itself, into the same table design, unique index after."""
    csv = bench.work / f"inference_{rows}.csv"
    table = pq.read_table(rows_dir / "candidates_inference.parquet")
    table = table.append_column("week", pa.repeat(pa.scalar(WEEK, pa.date32()), table.num_rows))
    pacsv.write_csv(table, csv, pacsv.WriteOptions(include_header=False))
    os.chmod(bench.work, 0o755)
    os.chmod(csv, 0o644)
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS server_copy; CREATE TABLE server_copy ({})").format(
            db.column_definitions(table.schema)))
        conn.commit()

        def copy_and_index() -> None:
            cur.execute(f"COPY server_copy FROM '{csv}' WITH (FORMAT csv)")
            cur.execute("CREATE UNIQUE INDEX ON server_copy (user_id, item_id)")
            conn.commit()
        return timed(copy_and_index)


def first_reads(rows_dir: Path, bench: Bench, rows: int) -> None:
    """What the first full read of a week writes once a checkpoint has passed (its pages then logged
    whole, as data checksums require), loaded as the load task loads (`COPY ... FREEZE`) against the
    same COPY without FREEZE; and what the ranking's rows cost from its shards' COPY to frozen rows
    before they go live: written `UNLOGGED` and copied into a table of the transaction's own
    (`db.copied_frozen`, since 2026-12-06) against written logged and frozen in place by `VACUUM
    (FREEZE)`, the way before, whose rows no snapshot older than them saw."""
    table = pq.read_table(rows_dir / "candidates_inference.parquet")
    bench.configure(rows_dir, bench.fresh_database("first_reads"))
    with db.connection() as conn, conn.cursor() as cur:
        def wal_mb() -> float:
            cur.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
            return int(cur.fetchone()[0]) / 1e6

        def loaded(name: str, frozen: bool) -> float:
            def load() -> None:
                conn.autocommit = False
                cur.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(name),
                                                                   db.column_definitions(table.schema)))
                db.copy_in(cur, name, table.to_batches(64_000), table.schema, frozen=frozen)
                cur.execute(sql.SQL("CREATE UNIQUE INDEX ON {} (user_id, item_id)").format(sql.Identifier(name)))
                conn.commit()
            seconds = timed(load)
            conn.autocommit = True
            cur.execute("CHECKPOINT")
            return seconds

        def first_read(name: str) -> tuple[float, int, float]:
            before = wal_mb()
            seconds = timed(lambda: cur.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT sum(als_score)"
                                                        " FROM {}").format(sql.Identifier(name))))
            dirtied = cur.fetchone()[0][0]["Plan"]["Shared Dirtied Blocks"]
            return wal_mb() - before, dirtied, seconds

        frozen_load, plain_load = loaded("frozen", True), loaded("plain", False)
        (frozen_wal, frozen_dirtied, frozen_read), (plain_wal, plain_dirtied, plain_read) = (
            first_read("frozen"), first_read("plain"))

        def ranking_made_frozen(unlogged: bool, made_frozen) -> tuple[float, float]:
            """Seconds and MB of WAL from the shards' COPY of the rows (into a table `unlogged` or not)
            to the rows frozen, with a checkpoint between, as minutes of scoring would bring."""
            before, started = wal_mb(), time.perf_counter()
            conn.autocommit = False
            cur.execute(sql.SQL("CREATE {}TABLE scored ({})").format(sql.SQL("UNLOGGED " if unlogged else ""),
                                                                      db.column_definitions(table.schema)))
            db.copy_in(cur, "scored", table.to_batches(64_000), table.schema)
            conn.commit()
            conn.autocommit = True
            writing = time.perf_counter() - started
            cur.execute("CHECKPOINT")
            return writing + timed(made_frozen), wal_mb() - before

        def copied() -> None:
            conn.autocommit = False
            cur.execute("CREATE TABLE copied (LIKE scored)")
            db.copied_frozen(cur, "scored", "copied")
            cur.execute("DROP TABLE scored")
            conn.commit()
            conn.autocommit = True

        def vacuumed() -> None:
            cur.execute("VACUUM (FREEZE) scored")
            cur.execute("DROP TABLE scored")

        (copying, copying_wal), (freezing, freezing_wal) = (ranking_made_frozen(True, copied),
                                                            ranking_made_frozen(False, vacuumed))
    bench.record(f"first full read of {rows:,} rows loaded with FREEZE vs without, after a checkpoint: WAL, "
                 "pages dirtied, time", f"{frozen_wal:.0f} vs {plain_wal:.0f} MB; {frozen_dirtied:,} vs "
                 f"{plain_dirtied:,}; {frozen_read:.2f} vs {plain_read:.2f} s = {plain_read / frozen_read:.2f}x")
    bench.record(f"COPY + index of {rows:,} rows with FREEZE vs without", f"{frozen_load:.2f} vs {plain_load:.2f} s"
                 f" = {frozen_load / plain_load:.2f}x")
    bench.record(f"the ranking's {rows:,} rows from the shards' COPY to frozen (a checkpoint between): written "
                 "UNLOGGED and copied by COPY FREEZE vs written logged, frozen by VACUUM (FREEZE) (before 2026-12-06)",
                 f"{copying:.2f} vs {freezing:.2f} s = {copying / freezing:.2f}x; {copying_wal:.0f} vs "
                 f"{freezing_wal:.0f} MB of WAL = {copying_wal / freezing_wal:.2f}x")


def replaced_system(rows_dir: Path, bench: Bench) -> float:
    """The Airflow DAGs' way: values.tolist(), one INSERT ... ON CONFLICT per row, a commit every 1,000."""
    frame = pq.read_table(rows_dir / "candidates_inference.parquet").slice(0, REPLACED_ROWS).to_pandas()
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS replaced; CREATE TABLE replaced (user_id bigint, item_id bigint,"
                    " als_score real, category_id bigint, parent_id bigint, available bigint,"
                    " UNIQUE (user_id, item_id))")
        conn.commit()
        statement = ("INSERT INTO replaced VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (user_id, item_id) DO UPDATE"
                     " SET als_score = EXCLUDED.als_score")

        def insert_rows() -> None:
            for number, row in enumerate(frame.values.tolist(), start=1):
                cur.execute(statement, row)
                if number % 1000 == 0:
                    conn.commit()
            conn.commit()
        return timed(insert_rows)


class InferenceCopyToTable(CopyToTable):
    """Luigi's own CopyToTable over the same file: Python rows, tab-separated, `copy_from`."""

    source = luigi.Parameter()
    host, database, user, password, table = "", "postgres", "postgres", "", "copy_to_table"
    columns = [("user_id", "bigint"), ("item_id", "bigint"), ("als_score", "real"), ("category_id", "bigint"),
               ("parent_id", "bigint"), ("available", "bigint")]

    def rows(self):
        for batch in pq.ParquetFile(self.source).iter_batches(batch_size=64_000):
            yield from zip(*(column.to_pylist() for column in batch.columns), strict=True)


def copy_to_table(rows_dir: Path, bench: Bench) -> float:
    InferenceCopyToTable.host = bench.socket
    task = InferenceCopyToTable(source=str(rows_dir / "candidates_inference.parquet"))
    return timed(task.run)


def whole_command(rows_dir: Path, bench: Bench, rows: int) -> float:
    """`luigi --module pipeline InferenceCandidates` as cron runs it: interpreter start, CheckInputs, the load."""
    settings_file = bench.configure(rows_dir, bench.fresh_database(f"whole_{rows}"))
    command = [LUIGI, "--module", "pipeline", "InferenceCandidates", "--local-scheduler", "--week", WEEK.isoformat()]
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(settings_file)}
    return timed(lambda: subprocess.run(command, cwd=ROOT, env=env, capture_output=True, check=True))


def peak_rss_mb(config: Path, *args: str) -> float:
    """Peak RSS of a whole `luigi` command in its own process, as /usr/bin/time -v reports it."""
    result = subprocess.run(["/usr/bin/time", "-v", LUIGI, "--module", "pipeline", *args, "--local-scheduler",
                             "--week", WEEK.isoformat()], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "LUIGI_CONFIG_PATH": str(config)})
    assert result.returncode == 0, result.stderr[-3000:]
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1)) / 1024


def fits_peak_mb() -> float:
    """The largest of the week's fit processes, as each reported it (`training.FreshProcesses`): they
    are the forkserver's children, not the command's, so /usr/bin/time does not see them."""
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT max((metrics->>'fit_peak_rss_mb')::float8) FROM ranker_models")
        return cur.fetchone()[0]


def load_memory(rows_dir: Path, bench: Bench, rows: int) -> float:
    settings_file = bench.configure(rows_dir, bench.fresh_database(f"rss_{rows}"))
    build(CheckInputs(week=WEEK))  # its own, separate step
    return peak_rss_mb(settings_file, "InferenceCandidates")


def ranking(base: Path, bench: Bench) -> None:
    folder = week_folder(base, "rank", RANK_ROWS, RANK_ROWS)
    settings_file = bench.configure(folder, bench.fresh_database("rank"))
    build(TrainCandidates(week=WEEK), InferenceCandidates(week=WEEK), DefaultRecs(week=WEEK))
    read_back(bench)
    whole = timed(lambda: build(RankCandidates(week=WEEK)))
    bench.record(f"RankCandidates on {RANK_ROWS:,} + {RANK_ROWS:,} (train, shards, staging)", f"{whole:.1f} s")
    bench.configure(folder, bench.fresh_database("rank_rss"))
    build(TrainCandidates(week=WEEK), InferenceCandidates(week=WEEK), DefaultRecs(week=WEEK))
    command_mb = peak_rss_mb(settings_file, "RankCandidates")
    bench.record("RankCandidates peak RSS (own process; its fit processes' own peak)",
                 f"{command_mb:.0f} MB; {fits_peak_mb():.0f} MB")


def fitted_once(base: Path, bench: Bench) -> None:
    """`TrainRanker` on RANK_ROWS train rows, four times the cap: fitted once (the default) against
    validated on 80% of the cap and fitted again on all of it, the path of before, which `holdout =
    latest_week` takes on a file without outcome weeks (it holds out the same users). Each the best
    of two, interleaved, each from a fresh database with the week's candidates loaded, untimed."""
    folder = base / "rank"
    best = {"latest_week": float("inf"), "users": float("inf")}
    for _ in range(2):
        for holdout in best:
            bench.configure(folder, bench.fresh_database(f"fit_{holdout}"))
            luigi.configuration.get_config().set("pipeline", "holdout", holdout)
            build(TrainCandidates(week=WEEK), InferenceCandidates(week=WEEK), DefaultRecs(week=WEEK))
            best[holdout] = min(best[holdout], timed(lambda: build(TrainRanker(week=WEEK))))
    luigi.configuration.get_config().remove_option("pipeline", "holdout")
    bench.record(f"TrainRanker on {RANK_ROWS:,} train rows: validated then fitted again vs fitted once",
                 f"{best['latest_week']:.1f} vs {best['users']:.1f} s = {best['latest_week'] / best['users']:.2f}x")


def read_back(bench: Bench) -> None:
    """The project's reader against the ADBC driver's own Arrow fetch, the CSV `COPY` reader it
    replaced and pandas.read_sql, on the same staged table; each the best of five, interleaved."""
    import adbc_driver_postgresql.dbapi

    columns = ["user_id", "item_id", "als_score", "category_id", "parent_id", "available", "target", "week"]
    table = "candidates_train__staged_20261121"
    with db.connection() as conn, adbc_driver_postgresql.dbapi.connect(db.server().conninfo()) as arrow:
        def adbc_fetch() -> None:
            with arrow.cursor() as cur:
                cur.execute(f"SELECT {', '.join(columns)} FROM {table}")
                cur.fetch_arrow_table()

        def csv_copy() -> None:
            buffer = io.BytesIO()
            conn.cursor().copy_expert(f"COPY (SELECT {', '.join(columns)} FROM {table}) TO STDOUT WITH (FORMAT csv,"
                                      " HEADER)", buffer)
            buffer.seek(0)
            pacsv.read_csv(buffer)

        readers = {"ours": lambda: read_week(conn, "candidates_train", WEEK, columns), "adbc": adbc_fetch,
                   "csv": csv_copy, "read_sql": lambda: pd.read_sql(f"SELECT * FROM {table}", conn)}
        best = {name: min(timed(reader) for _ in range(5)) for name, reader in readers.items()}
    rate = {name: RANK_ROWS / seconds for name, seconds in best.items()}
    bench.record(f"read-back of {RANK_ROWS:,} rows: the project's reader vs the ADBC driver's Arrow fetch",
                 f"{rate['ours']:,.0f} vs {rate['adbc']:,.0f} rows/s = {rate['ours'] / rate['adbc']:.2f}x")
    bench.record(f"read-back of {RANK_ROWS:,} rows: the project's reader vs CSV COPY TO STDOUT (the previous one), "
                 "pandas.read_sql", f"{rate['csv']:,.0f} and {rate['read_sql']:,.0f} rows/s: "
                 f"{rate['ours'] / rate['csv']:.2f}x and {rate['ours'] / rate['read_sql']:.1f}x")


def noop_rerun(base: Path, bench: Bench) -> None:
    folder = base / "sample"
    write_sample_week(folder)
    settings_file = bench.configure(folder, bench.fresh_database("noop"))
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(settings_file)}
    command = [LUIGI, "--module", "pipeline", "WeeklyRecs", "--local-scheduler", "--week", WEEK.isoformat()]
    subprocess.run(command, cwd=ROOT, env=env, capture_output=True, check=True)
    seconds = timed(lambda: subprocess.run(command, cwd=ROOT, env=env, capture_output=True, check=True))
    bench.record("no-op rerun of a finished week (whole luigi command)", f"{seconds:.2f} s")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="weekly-recs-bench-") as folder:
        base = Path(folder)
        bench = Bench(base)
        bench.configure(base)
        loads = {rows: week_folder(base, f"load_{rows}", 1000, rows) for rows in SIZES}
        sampled = {}
        for rows, rows_dir in loads.items():
            ours = load_task(rows_dir, bench, rows)
            sampled[rows] = (statistics_before_going_live(), ours)
            server = server_side_copy(rows_dir, bench, rows)
            bench.record(f"load {rows:,} rows: the load task vs server-side COPY FROM csv (+ index)",
                         f"{rows / ours:,.0f} vs {rows / server:,.0f} rows/s = {server / ours:.2f}x")
        bench.record("the staged table's statistics before it goes live (ANALYZE), at 1M and 5M rows",
                     " and ".join(f"{analyze:.2f} s ({analyze / load:.0%} of its load)"
                                  for analyze, load in sampled.values()))
        first_reads(loads[SIZES[1]], bench, SIZES[1])
        whole_rows = week_folder(base, "whole", 1000, WHOLE_COMMAND_ROWS)
        ours, server = whole_command(whole_rows, bench, WHOLE_COMMAND_ROWS), server_side_copy(whole_rows, bench,
                                                                                            WHOLE_COMMAND_ROWS)
        bench.record(f"whole luigi command loading {WHOLE_COMMAND_ROWS:,} rows (start, CheckInputs, load) vs "
                     "server-side COPY FROM csv (+ index)", f"{ours:.2f} s vs {server:.2f} s = {ours / server:.2f}x")
        million = loads[SIZES[0]]
        ours = SIZES[0] / load_task(million, bench, SIZES[0])
        replaced = REPLACED_ROWS / replaced_system(million, bench)
        bench.record(f"the replaced system's per-row upserts ({REPLACED_ROWS:,} rows)",
                     f"{replaced:,.0f} rows/s; the load task is {ours / replaced:,.0f}x faster")
        luigi_copy = SIZES[0] / copy_to_table(million, bench)
        bench.record(f"luigi CopyToTable ({SIZES[0]:,} rows)",
                     f"{luigi_copy:,.0f} rows/s; the load task is {ours / luigi_copy:.1f}x faster")
        memory = {rows: load_memory(rows_dir, bench, rows) for rows, rows_dir in loads.items()}
        bench.record("load peak RSS at 1M and 5M rows (own process, /usr/bin/time -v)",
                     f"{memory[SIZES[0]]:.0f} MB and {memory[SIZES[1]]:.0f} MB, 5M/1M = "
                     f"{memory[SIZES[1]] / memory[SIZES[0]]:.2f}")
        ranking(base, bench)
        fitted_once(base, bench)
        noop_rerun(base, bench)
        bench.server.cleanup()
    machine = (f"{os.cpu_count()} cores, {platform.machine()}, {_cpu_model()}, Python {platform.python_version()},"
               f" {date.today()}")
    table = "\n".join(f"| {name} | {value} |" for name, value in bench.results)
    (ROOT / "benchmarks" / "results.md").write_text(f"Machine: {machine}\n\n| measure | result |\n|---|---|\n{table}\n")
    print(f"\n{machine}\nwritten to benchmarks/results.md")


def _cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    found = re.search(r"model name\s*: (.+)", info.read_text()) if info.exists() else None
    return found.group(1).strip() if found else platform.processor()


if __name__ == "__main__":
    main()
