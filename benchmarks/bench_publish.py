"""`make bench` (part 3): the web service's reads while a week goes live and a long reader holds a live table.

Three web-service threads, each a login role of its own reading a user's top 10 every 50 ms with a
2 s `statement_timeout`; an analyst's transaction holds `candidates_ranked` for 45 s; 2 s into it,
`luigi --module pipeline WeeklyRecs` puts the next (staged) week live. Run twice in this script on
one fresh embedded PostgreSQL: first as a swap that simply queues for its locks (`lock_timeout = 0`,
how the previous layout swapped), then with the pipeline's defaults. Then a third week, with no
long reader but a DBA's index, primary key and foreign key on `candidates_ranked`, which the swap
once built or checked inside itself: the reads during that publish, and each build or check timed
apart (what the swap held the readers for). Then two more weeks with the readers and the long
report on a hot standby of the server instead, the standby first unknown to the pipeline, then
listed in `[postgres] standbys`.
Written to benchmarks/publish_results.md.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import luigi
import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import DefaultRecs, OnlineRecs, RankCandidates, WeeklyRecs, config, db, serving  # noqa: E402
from pipeline.sample_data import write_sample_week  # noqa: E402

FIRST_WEEK = date(2026, 10, 31)  # its sixth week, 2026-12-05, has begun (a week that has not is refused)
USERS = 20_000  # 400,000 candidates a week
READERS, EVERY_S, STATEMENT_TIMEOUT_MS = 3, 0.05, 2000
HOLD_S, PUBLISH_AFTER_S = 45, 2
LUIGI = str(Path(sys.executable).with_name("luigi"))
ROLE = "websvc"


@dataclass
class Reads:
    """Each read: when it started, how long it took, whether it failed."""

    started: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    failed: list[bool] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def during(self, start: float, stop: float) -> tuple[int, int, float]:
        inside = [(lat, bad) for at, lat, bad in zip(self.started, self.latency, self.failed, strict=True)
                  if start <= at <= stop]
        return len(inside), sum(bad for _, bad in inside), max(lat for lat, _ in inside)


def web_service(socket: str, database: str, reads: Reads, stop: threading.Event, seed: int) -> None:
    conn = psycopg2.connect(host=socket, dbname=database, user=ROLE, application_name="web-service")
    conn.autocommit = True
    user = seed
    with conn.cursor() as cur:
        cur.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        while not stop.is_set():
            user = (user * 7919 + 1) % USERS
            started = time.monotonic()
            try:
                serving.top_k(cur, USERS + user)
                failed = False
            except psycopg2.Error:  # a timeout, or a deadlock with a swap: the page fails, the service goes on
                failed = True
            with reads.lock:
                reads.started.append(started)
                reads.latency.append(time.monotonic() - started)
                reads.failed.append(failed)
            time.sleep(EVERY_S)
    conn.close()


def long_report(socket: str, database: str, held: threading.Event, ended: list[float]) -> None:
    conn = psycopg2.connect(host=socket, dbname=database, user=ROLE, application_name="analyst-report")
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM candidates_ranked")
        held.set()
        time.sleep(HOLD_S)
    with contextlib.suppress(psycopg2.OperationalError):  # on a standby, whose replay of a swap cancelled it
        conn.rollback()
    ended.append(time.monotonic())
    conn.close()


def stage(week: date) -> None:
    result = luigi.build([DefaultRecs(week=week), OnlineRecs(week=week), RankCandidates(week=week)],
                         local_scheduler=True, log_level="WARNING", detailed_summary=True)
    assert result.status.name == "SUCCESS", result.summary_text


def publish_while_read(socket: str, database: str, cfg: Path, week: date, *flags: str,
                       long_reader: bool = True) -> dict:
    """The web service's reads while `WeeklyRecs` puts the staged `week` live, a long reader holding
    `candidates_ranked` from before the publish starts if `long_reader`."""
    stage(week)
    reads, stop, held, ended = Reads(), threading.Event(), threading.Event(), []
    threads = [threading.Thread(target=web_service, args=(socket, database, reads, stop, k)) for k in range(READERS)]
    if long_reader:
        threads.append(threading.Thread(target=long_report, args=(socket, database, held, ended)))
    for thread in threads:
        thread.start()
    if long_reader:
        held.wait()
    time.sleep(PUBLISH_AFTER_S)
    started = time.monotonic()
    publishing = subprocess.run([LUIGI, "--module", "pipeline", "WeeklyRecs", "--local-scheduler", "--week",
                                 str(week), *flags], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "LUIGI_CONFIG_PATH": str(cfg)})
    finished = time.monotonic()
    if long_reader:
        threads.pop().join()
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    assert publishing.returncode == 0, publishing.stderr[-2000:]
    made, failed, worst = reads.during(started, finished)
    until_reader_ended = reads.during(started, ended[0] if ended else finished)
    return {"reads": made, "failed": failed, "worst": worst, "publish": finished - started,
            "after_reader": finished - ended[0] if ended else None, "until_reader_ended": until_reader_ended}


DBA_CHANGES = {  # what each makes attaching a table without it do: (statement on the live name, the same apart)
    "index": ("CREATE INDEX items_ranked ON candidates_ranked (item_id, rank)", "CREATE INDEX ON {} (item_id, rank)"),
    "primary key": ("ALTER TABLE candidates_ranked ADD PRIMARY KEY (week, user_id, item_id)",
                    "CREATE UNIQUE INDEX ON {} (week, user_id, item_id)"),
    "foreign key": ("ALTER TABLE candidates_ranked ADD FOREIGN KEY (item_id) REFERENCES catalogue",
                    "ALTER TABLE {} ADD FOREIGN KEY (item_id) REFERENCES catalogue"),
}


def publish_under_the_dbas_changes(socket: str, cfg: Path, week: date) -> dict:
    """The web service's reads while a week goes live under a DBA's index, primary key and foreign
    key (to a catalogue of the items); and what the old swap would have held the live names for:
    each built or checked on the week's table, timed apart."""
    with psycopg2.connect(host=socket, dbname="postgres", user="postgres") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE catalogue AS SELECT DISTINCT item_id FROM candidates_ranked;"
                    " ALTER TABLE catalogue ADD PRIMARY KEY (item_id)")
        for on_the_live_name, _ in DBA_CHANGES.values():
            cur.execute(on_the_live_name)
    result = publish_while_read(socket, "postgres", cfg, week, long_reader=False)
    with psycopg2.connect(host=socket, dbname="postgres", user="postgres") as conn, conn.cursor() as cur:
        for what, (_, apart) in DBA_CHANGES.items():
            started = time.monotonic()
            cur.execute(apart.format(f"candidates_ranked__{week:%Y%m%d}"))
            result[what] = time.monotonic() - started
            conn.rollback()
    return result


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="weekly-recs-bench-publish-") as folder:
        base = Path(folder)
        server = db.embedded_package().get_server(base / "pgdata", cleanup_mode="stop")
        socket = str(server.get_postmaster_info().socket_dir)
        write_sample_week(base / "week", users=USERS)
        settings = {"postgres": {"host": socket, "database": "postgres", "readers": f'["{ROLE}"]'},
                    "pipeline": {"input_dir": str(base / "week"), "model_dir": str(base / "models"),
                                 "iterations": "50", "allow_same_files": "true"}}  # one sample, every week
        for section, values in settings.items():
            config.override(section, values)
        cfg = base / "bench.cfg"
        cfg.write_text("".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items())
                               for s, kv in settings.items()))
        with psycopg2.connect(host=socket, dbname="postgres", user="postgres") as conn:
            conn.cursor().execute(f"CREATE ROLE {ROLE} LOGIN")
        luigi.build([WeeklyRecs(week=FIRST_WEEK)], local_scheduler=True, log_level="WARNING")
        queued = publish_while_read(socket, "postgres", cfg, FIRST_WEEK + timedelta(weeks=1),
                                    "--pipeline-lock-timeout", "0")
        ours = publish_while_read(socket, "postgres", cfg, FIRST_WEEK + timedelta(weeks=2))
        keyed = publish_under_the_dbas_changes(socket, cfg, FIRST_WEEK + timedelta(weeks=3))
        standby = db.start_embedded_standby(socket, Path(tempfile.mkdtemp(dir=base)))
        unwatched = publish_while_read(standby, "postgres", cfg, FIRST_WEEK + timedelta(weeks=4))
        cfg.write_text(cfg.read_text().replace("[postgres]\n", f'[postgres]\nstandbys = ["{standby}"]\n'))
        watched = publish_while_read(standby, "postgres", cfg, FIRST_WEEK + timedelta(weeks=5))
        db.stop_embedded(Path(standby) / "data")
        server.cleanup()
    rows = [("a swap that queues for its locks (lock_timeout 0, as the previous layout swapped)", queued),
            ("the pipeline's publish (lock_timeout 0.1 s, backoff to 2 s)", ours)]
    table = "\n".join(f"| {name} | {r['reads']} | {r['failed']} | {r['worst']:.3f} s | {r['publish']:.1f} s |"
                      f" {r['after_reader']:.1f} s |" for name, r in rows)
    text = (f"{date.today()}, {os.cpu_count()} cores; {READERS} web-service threads, a read every {EVERY_S * 1000:.0f}"
            f" ms, statement_timeout {STATEMENT_TIMEOUT_MS} ms; a reader holds candidates_ranked for {HOLD_S} s, the"
            f" publish starts {PUBLISH_AFTER_S} s into it; {USERS * 20:,} candidates a week\n\n"
            "| publish | reads during it | failed | worst latency | publish took | live after the reader ended |\n"
            f"|---|---|---|---|---|---|\n{table}\n")
    apart = ", ".join(f"{what} {keyed[what]:.2f} s" for what in DBA_CHANGES)
    text += ("\nUnder a DBA's index, primary key and foreign key on the live name ("
             + "; ".join(f"`{statement}`" for statement, _ in DBA_CHANGES.values()) + "), no long reader: the"
             f" pipeline's publish {keyed['reads']} reads, {keyed['failed']} failed, worst {keyed['worst']:.3f} s."
             f" What attaching the week's table without them does inside the swap, timed apart: {apart}\n")
    standby_rows = [("the standby not listed (the pipeline sees no reader there; the replay waits for it)", unwatched),
                    ("the standby listed in `[postgres] standbys`", watched)]
    text += ("\nThe same readers and long report on a hot standby of the server (`pg_basebackup`, PostgreSQL's "
             "defaults: `max_standby_streaming_delay` 30 s), the publish on the primary; reads from the publish's "
             f"start until the report's {HOLD_S} s were over (the standby not listed cancels it at about 30 s):\n\n"
             "| publish | reads | failed | worst latency | publish took |\n|---|---|---|---|---|\n"
             + "\n".join(f"| {name} | {r['until_reader_ended'][0]} | {r['until_reader_ended'][1]} |"
                          f" {r['until_reader_ended'][2]:.3f} s | {r['publish']:.1f} s |" for name, r in standby_rows)
             + "\n")
    (ROOT / "benchmarks" / "publish_results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
