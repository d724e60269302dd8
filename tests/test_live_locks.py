"""A publish never stalls the web service: it waits for a reader that holds a live table without
queueing anyone behind it, goes live once the reader ends, and past its wait fails naming the
reader, with every live table unchanged. Rollback takes the same path. A reader of an old archive
or an abandoned stage holds up nothing: the table outlives its week until a later publish."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import psycopg2
import pytest

from pipeline import (
    DefaultRecs,
    InferenceCandidates,
    OnlineRecs,
    RankCandidates,
    TrainCandidates,
    WeeklyRecs,
    live_locks,
    publish,
    serving,
)
from tests.conftest import (
    NEXT_WEEK,
    TASK_FAILED,
    TELEGRAM_ENV,
    WEEK,
    admin_connection,
    apply_settings,
    dba_keys_the_popular_items_to_a_catalogue,
    dba_materializes_the_top_10,
    eventually,
    for_seconds,
    live_state,
    maintenance_holding,
    query,
    replayed,
    run_luigi,
    run_module,
    run_tasks,
    set_for_the_database,
    staged,
    start_luigi,
)

STATEMENT_TIMEOUT_MS = 2000  # the web service's own


@pytest.fixture
def long_report(reader):
    """An analyst's transaction, open and idle, that has read the live ranking."""
    session = reader.connect("long-report")
    with session.cursor() as cur:
        cur.execute("SELECT count(*) FROM candidates_ranked")
    yield session
    session.close()


def web_service_reads(reader, seconds: float) -> tuple[int, int]:
    """Reads as the web service makes them, with its statement timeout, for `seconds`: (made, failed)."""
    made = failed = 0
    service = reader.connect()
    service.autocommit = True
    with service.cursor() as cur:
        cur.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        for _ in for_seconds(seconds):
            try:
                serving.top_k(cur, user_id=made % 300)
            except psycopg2.errors.QueryCanceled:
                failed += 1
            made += 1
    service.close()
    return made, failed


def live_week(conn):
    return publish.live_week(conn.cursor(), "candidates_ranked")


@pytest.mark.next_week_staged
def test_a_publish_waits_for_a_reader_without_stalling_the_web_service_and_goes_live_when_it_ends(
        config_file, conn, reader, long_report):
    publishing = start_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK))

    made, failed = web_service_reads(reader, seconds=4)
    still_waiting = publishing.poll() is None
    long_report.rollback()  # the report ends
    _, errors = publishing.communicate(timeout=60)

    assert still_waiting and made > 20 and failed == 0
    assert publishing.returncode == 0, errors[-2000:]
    assert live_week(conn) == NEXT_WEEK
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]


@pytest.mark.next_week_staged
def test_while_a_reader_holds_a_live_table_the_publish_never_queues_behind_it(
        config_file, conn, long_report):
    """Queued behind the report, each attempt would hold up every read after it for a `lock_timeout`:
    a session seen holding the table a `lock_timeout` apart is waited for without an attempt."""
    queued_now = ("SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'relation'"
                  " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    publishing = start_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK))

    queued = 0
    for _ in for_seconds(5, every=0.005):
        [(now,)] = query(conn, queued_now)
        queued += now
    still_waiting = publishing.poll() is None
    long_report.rollback()  # the report ends
    _, errors = publishing.communicate(timeout=60)

    assert still_waiting and queued == 0
    assert publishing.returncode == 0, errors[-2000:]
    assert live_week(conn) == NEXT_WEEK


@pytest.mark.next_week_staged
def test_past_its_wait_a_publish_fails_naming_the_blocker_and_changes_nothing(
        settings, config_file, conn, long_report, bot_api):
    settings["pipeline"]["publish_wait"] = "2"
    apply_settings(settings, config_file)
    before = live_state(conn)

    publishing = start_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK), env=TELEGRAM_ENV)
    _, errors = publishing.communicate(timeout=60)

    assert publishing.returncode == TASK_FAILED
    blocker = (f"by pid {long_report.get_backend_pid()} (long-report, idle in transaction, transaction open ")
    assert ("LiveTablesBusy: week 2026-11-28 not published: the live tables stayed held for more than 2 s "
            f"([pipeline] publish_wait) {blocker}") in errors
    assert "holding candidates_ranked" in errors
    [alert] = bot_api.texts()
    assert "FAILED: WeeklyRecs for week 2026-11-28" in alert and blocker in alert
    assert live_state(conn) == before
    long_report.rollback()
    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"  # the rerun publishes the staged week
    assert live_week(conn) == NEXT_WEEK


@pytest.mark.next_week_staged
def test_a_foreign_key_a_dba_adds_while_the_publish_waits_is_refused_at_the_swap_naming_it(
        config_file, conn, reader):
    """The week was checked before it waited; the key came after, and the swap looks again as it takes
    the live names and once it holds them, past which no key can be added: the week fails naming it, as
    it would have before anything was staged, not with PostgreSQL's error from detaching the week a row
    references."""
    conn.cursor().execute("ALTER TABLE candidates_ranked ADD PRIMARY KEY (week, user_id, item_id)")
    report = reader.connect("long-report")
    report.cursor().execute("SELECT count(*) FROM default_recs")
    before = live_state(conn)
    publishing = start_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK))

    keyed_like_the_live_name = ("SELECT count(*) FROM pg_constraint WHERE contype = 'p'"  # past the week's check
                                f" AND conrelid = to_regclass('{staged('candidates_ranked', NEXT_WEEK)}')")
    eventually(lambda: query(conn, keyed_like_the_live_name) != [(0,)], "the staged ranking keyed", seconds=60)
    conn.cursor().execute("CREATE TABLE clicks (week date, user_id bigint, item_id bigint, CONSTRAINT clicked_from"
                          "  FOREIGN KEY (week, user_id, item_id) REFERENCES candidates_ranked);"
                          " INSERT INTO clicks SELECT week, user_id, item_id FROM candidates_ranked LIMIT 1")
    still_waiting = publishing.poll() is None
    report.rollback()
    _, errors = publishing.communicate(timeout=60)

    assert still_waiting
    assert publishing.returncode == TASK_FAILED
    assert "ValueError: candidates_ranked: the foreign key clicked_from of clicks references it" in errors
    assert "in _lock_live_names" in errors and "ForeignKeyViolation" not in errors
    tables, weeks = live_state(conn)
    del tables["clicks"]
    assert (tables, weeks) == before
    report.close()


@pytest.mark.next_week_staged
def test_idle_blockers_are_terminated_only_when_asked(settings, conn, long_report):
    settings["pipeline"].update(terminate_idle_blockers="true", idle_blocker_seconds="1")
    apply_settings(settings)

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"

    assert live_week(conn) == NEXT_WEEK
    with pytest.raises(psycopg2.OperationalError):
        long_report.cursor().execute("SELECT 1")


@pytest.mark.next_week_staged
def test_a_web_request_idle_between_its_statements_is_waited_for_never_ended_as_a_forgotten_session(
        settings, conn, reader):
    """A web service that holds each request in a transaction (SQLAlchemy's session, Django's
    ATOMIC_REQUESTS) is idle in it between its statements; only a session idle for
    `idle_blocker_seconds` is a forgotten one."""
    settings["pipeline"].update(terminate_idle_blockers="true", idle_blocker_seconds="60")
    apply_settings(settings)
    request = reader.connect()
    request.cursor().execute("SELECT item_id FROM candidates_ranked LIMIT 1")  # its first statement
    request_ends = threading.Timer(1.5, request.commit)  # a slow request's last, in its own time
    request_ends.start()

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"

    request_ends.join()
    assert request.cursor().execute("SELECT 1") is None  # its session, still there
    assert live_week(conn) == NEXT_WEEK


@pytest.mark.next_week_staged
def test_a_rollback_waits_for_readers_the_same_way(settings, config_file, conn, long_report):
    long_report.rollback()
    run_tasks(WeeklyRecs(week=NEXT_WEEK))
    long_report.cursor().execute("SELECT count(*) FROM default_recs")  # a new report, on the new week
    settings["pipeline"]["publish_wait"] = "1"
    apply_settings(settings, config_file)

    refused = run_module(config_file, "rollback")

    assert refused.returncode == 1
    assert (f"rollback refused: rollback to week {WEEK} not done: the live tables stayed held for more than 1 s "
            f"([pipeline] publish_wait) by pid {long_report.get_backend_pid()} (long-report") in refused.stderr
    assert live_week(conn) == NEXT_WEEK


def test_an_archive_or_a_stage_an_analyst_is_reading_outlives_its_week_without_holding_up_the_next(
        settings, config_file, conn, pg_socket_dir, database):
    settings["pipeline"].update(retention="1", publish_wait="5")
    apply_settings(settings, config_file)
    weeks = [WEEK - timedelta(weeks=1), WEEK, NEXT_WEEK, NEXT_WEEK + timedelta(weeks=1)]
    run_tasks(WeeklyRecs(week=weeks[0]))
    run_tasks(WeeklyRecs(week=weeks[1]))
    settings["pipeline"]["retention"] = "2"  # as when a week was staged that never went live
    apply_settings(settings)
    run_tasks(DefaultRecs(week=weeks[0] - timedelta(weeks=1)))
    settings["pipeline"]["retention"] = "1"
    apply_settings(settings, config_file)
    expired = [publish.week_name("candidates_ranked", weeks[0]),
               publish.staged_name("default_recs", weeks[0] - timedelta(weeks=1))]
    analyst = psycopg2.connect(host=pg_socket_dir, dbname=database, user="postgres",
                               application_name="quarterly-report")
    with analyst.cursor() as cur:
        cur.execute(f"SELECT (SELECT count(*) FROM {expired[0]}), (SELECT count(*) FROM {expired[1]})")
        counts = cur.fetchone()

    published = run_luigi(config_file, "WeeklyRecs", "--week", str(weeks[2]), "--local-scheduler", "--no-lock")

    assert published.returncode == 0, published.stderr[-2000:]
    assert live_week(conn) == weeks[2]
    for name in expired:
        assert (f"{name} is no longer needed but kept until a later publish: pid {analyst.get_backend_pid()}"
                " (quarterly-report, idle in transaction") in published.stderr
    with analyst.cursor() as cur:
        cur.execute(f"SELECT (SELECT count(*) FROM {expired[0]}), (SELECT count(*) FROM {expired[1]})")
        assert cur.fetchone() == counts
    analyst.close()
    assert run_tasks(WeeklyRecs(week=weeks[3])).name == "SUCCESS"
    assert publish.archived_weeks(conn.cursor(), "candidates_ranked") == [weeks[2]]
    assert publish.staged_weeks(conn.cursor(), "default_recs") == []


@pytest.mark.next_week_staged
def test_a_publish_held_up_by_a_reader_of_the_staged_week_names_that_reader(
        settings, config_file, conn, pg_socket_dir, database):
    settings["pipeline"]["publish_wait"] = "2"
    apply_settings(settings, config_file)
    preview = psycopg2.connect(host=pg_socket_dir, dbname=database, user="postgres", application_name="preview")
    preview.cursor().execute(f"SELECT count(*) FROM {publish.staged_name('candidates_ranked', NEXT_WEEK)}")

    refused = run_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK), "--local-scheduler", "--no-lock")

    assert refused.returncode == TASK_FAILED
    assert (f"by pid {preview.get_backend_pid()} (preview, idle in transaction, transaction open "
            in refused.stderr) and "holding candidates_ranked__staged_20261128" in refused.stderr
    assert live_week(conn) == WEEK
    preview.close()
    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"


@pytest.mark.next_week_staged
def test_a_rerun_replaces_a_stage_someone_is_reading_once_they_end_and_past_its_wait_names_them(
        settings, config_file, conn, pg_socket_dir, database):
    settings["pipeline"]["publish_wait"] = "2"
    apply_settings(settings, config_file)
    stage = publish.staged_name("default_recs", NEXT_WEEK)
    preview = psycopg2.connect(host=pg_socket_dir, dbname=database, user="postgres", application_name="preview")
    preview.cursor().execute(f"SELECT count(*) FROM {stage}")  # what did the week hold?
    assert run_module(config_file, "redo", str(NEXT_WEEK)).returncode == 0

    refused = run_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK), "--local-scheduler", timeout=60)

    assert refused.returncode == TASK_FAILED
    assert (f"default_recs for week {NEXT_WEEK} not staged: {stage} stayed held for more than 2 s ([pipeline] "
            f"publish_wait) by pid {preview.get_backend_pid()} (preview, idle in transaction, ") in refused.stderr
    assert live_week(conn) == WEEK
    preview.close()
    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"
    assert live_week(conn) == NEXT_WEEK


@pytest.mark.next_week_staged
def test_a_rerun_waiting_for_a_long_query_on_its_stage_outlasts_a_dbas_idle_in_transaction_timeout(
        config_file, conn, pg_socket_dir, database):
    """The rerun's transaction waits between its attempts at the stage for longer than a DBA lets the
    shop's sessions idle in a transaction; the analyst's query is working, not idle, all along."""
    stage = publish.staged_name("default_recs", NEXT_WEEK)
    assert run_module(config_file, "redo", str(NEXT_WEEK)).returncode == 0
    set_for_the_database(pg_socket_dir, database, idle_in_transaction_session_timeout="500ms")
    with admin_connection(pg_socket_dir, database) as analyst:
        pid = analyst.get_backend_pid()
        long_query = threading.Thread(target=analyst.cursor().execute,
                                      args=(f"SELECT count(*), pg_sleep(3) FROM {stage}",))
        long_query.start()
        eventually(lambda: query(conn, "SELECT 1 FROM pg_locks WHERE pid = %s AND relation = %s::regclass",
                                 pid, stage), "the analyst's query holding the stage", every=0.01)

        rerun = run_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK), "--local-scheduler", timeout=60)
        long_query.join()

    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert live_week(conn) == NEXT_WEEK


@pytest.mark.published_week
def test_a_publish_held_up_by_a_reader_of_the_table_a_dba_foreign_key_references_names_that_reader(
        settings, config_file, conn, reader):
    dba_keys_the_popular_items_to_a_catalogue(conn)
    settings["pipeline"]["publish_wait"] = "2"
    apply_settings(settings, config_file)
    shop = conn.cursor()
    shop.execute(f"GRANT SELECT ON catalogue TO {reader.name}")
    browsing = reader.connect("catalogue-report")
    browsing.cursor().execute("SELECT count(*) FROM catalogue")

    refused = run_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK), "--local-scheduler")

    assert refused.returncode == TASK_FAILED  # attaching the week's key to the catalogue locks it for a moment
    assert (f"by pid {browsing.get_backend_pid()} (catalogue-report, idle in transaction, transaction open "
            in refused.stderr) and "holding catalogue" in refused.stderr
    assert live_week(conn) == WEEK
    browsing.close()
    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"
    assert live_week(conn) == NEXT_WEEK


@pytest.mark.next_week_staged
def test_a_long_import_into_the_catalogue_a_dba_foreign_key_references_never_queues_the_shops_other_writes(
        settings, config_file, conn, pg_socket_dir, database):
    dba_keys_the_popular_items_to_a_catalogue(conn)
    settings["pipeline"]["publish_wait"] = "4"
    apply_settings(settings, config_file)
    importing = psycopg2.connect(host=pg_socket_dir, dbname=database, user="postgres",
                                 application_name="catalogue-import")
    importing.cursor().execute("UPDATE catalogue SET title = 'imported' WHERE item_id IN"
                               " (SELECT min(item_id) FROM catalogue)")  # and more, for minutes
    publishing = start_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK))
    # until the week's key is being added: it waits for the import
    eventually(lambda: query(conn, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%FOREIGN KEY%%'"
                                   " AND pid <> pg_backend_pid()")[0][0] or publishing.poll() is not None,
               "the week's foreign key being added", seconds=60)
    assert publishing.poll() is None, publishing.communicate()
    shop = psycopg2.connect(host=pg_socket_dir, dbname=database, user="postgres", application_name="shop-admin")
    with shop.cursor() as cur:
        cur.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        cur.execute("UPDATE catalogue SET title = 'renamed' WHERE item_id IN (SELECT max(item_id) FROM catalogue)")
    shop.commit()  # not queued behind the publish
    _, stderr = publishing.communicate(timeout=120)

    assert publishing.returncode == TASK_FAILED
    assert (f"week {NEXT_WEEK} not published: {staged('default_recs', NEXT_WEEK)} and catalogue stayed held for "
            f"more than 4 s ([pipeline] publish_wait) by pid {importing.get_backend_pid()} (catalogue-import, idle in "
            "transaction") in stderr
    assert live_week(conn) == WEEK
    importing.commit()
    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"
    assert live_week(conn) == NEXT_WEEK
    shop.close()
    importing.close()


@pytest.fixture
def next_week_staged_by_the_pipelines_role(pipeline_role, settings, reader) -> None:
    """As a `next_week_staged` copy holds it, but made by a login role of the pipeline's own, which
    owns the tables: the template's are the superuser's."""
    run_tasks(WeeklyRecs(week=WEEK))
    run_tasks(DefaultRecs(week=NEXT_WEEK), OnlineRecs(week=NEXT_WEEK), RankCandidates(week=NEXT_WEEK))


def test_an_idle_blocker_the_pipelines_role_may_not_end_is_waited_for_and_named_once(
        pipeline_role, next_week_staged_by_the_pipelines_role, settings, config_file, conn, long_report,
        pg_socket_dir, database):
    with admin_connection(pg_socket_dir, database) as admin:  # it sees others' sessions, may not end them
        admin.cursor().execute(f"GRANT pg_read_all_stats TO {pipeline_role}")
    settings["pipeline"].update(terminate_idle_blockers="true", idle_blocker_seconds="0.5", publish_wait="3")
    apply_settings(settings, config_file)

    refused = run_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK), "--local-scheduler", "--no-lock")

    blocker = f"pid {long_report.get_backend_pid()} (long-report, idle in transaction, transaction open "
    assert refused.returncode == TASK_FAILED
    assert refused.stderr.count(f"[pipeline] terminate_idle_blockers: cannot end {blocker}") == 1
    assert "permission denied to terminate process: grant the pipeline's role pg_signal_backend" in refused.stderr
    assert f"held for more than 3 s ([pipeline] publish_wait) by {blocker}" in refused.stderr
    long_report.cursor().execute("SELECT 1")  # still there
    long_report.rollback()
    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"


@pytest.mark.next_week_staged
def test_a_publish_waits_for_a_reader_on_a_standby_too_and_the_web_service_reading_there_never_stalls(
        settings, config_file, conn, reader, standby, pg_socket_dir, database):
    settings["postgres"]["standbys"] = json.dumps([standby])
    settings["pipeline"]["publish_wait"] = "2"
    apply_settings(settings, config_file)
    replayed(pg_socket_dir, database, standby)
    replica = reader.at(standby)
    report = replica.connect("long-report")  # an analyst's report, on the replica analysts are sent to
    report.cursor().execute("SELECT count(*) FROM candidates_ranked")

    refused = run_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK), "--local-scheduler", "--no-lock")

    assert refused.returncode == TASK_FAILED
    assert (f"by pid {report.get_backend_pid()} (long-report, idle in transaction, transaction open " in refused.stderr
            and f"holding candidates_ranked on standby {standby}" in refused.stderr)
    settings["pipeline"]["publish_wait"] = "60"
    apply_settings(settings, config_file)
    publishing = start_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK))
    made, failed = web_service_reads(replica, seconds=4)  # a swap replayed now would queue them for 30 s
    assert failed == 0 and made > 20
    assert publishing.poll() is None and live_week(conn) == WEEK
    report.rollback()
    _, stderr = publishing.communicate(timeout=60)
    assert publishing.returncode == 0, stderr[-2000:]
    replayed(pg_socket_dir, database, standby)
    assert replica.read("SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]
    report.close()


def popular_then_ranked(cur, user_id: int) -> None:
    """A read that takes the popular items before the ranking (a DBA's view, say): not the order
    the web service's own reads take them in, which the swap takes them in."""
    cur.execute("SELECT (SELECT count(*) FROM default_recs),"
                " (SELECT count(*) FROM candidates_ranked WHERE user_id = %s)", (user_id,))


def requests_in_transactions(reader, stop: threading.Event, served: list[int], read=serving.top_k) -> None:
    """A web service's requests, each a transaction of its own that reads the live names (`read`)
    and holds them for 50 ms, with its statement timeout, until `stop`; then `served` gets how many
    were made. A request that fails ends the thread without it."""
    service = reader.connect()
    with service.cursor() as cur:
        cur.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        service.commit()
        made = 0
        while not stop.is_set():
            read(cur, user_id=made % 300)
            cur.execute("SELECT pg_sleep(0.05)")  # the rest of the request, in its transaction
            service.commit()
            made += 1
    service.close()
    served.append(made)


@contextmanager
def requests_running(replica, read=serving.top_k) -> Iterator[list[int]]:
    """Four requests at a time on `replica` (`requests_in_transactions`), a quarter of one apart, for
    the block: some request holds the live names at every moment, none for long. Then how many each
    made; a thread whose request failed is missing."""
    stop, served = threading.Event(), []
    service = [threading.Thread(target=requests_in_transactions, args=(replica, stop, served, read))
               for _ in range(4)]
    try:
        for thread in service:
            thread.start()
            time.sleep(0.013)
        yield served
    finally:
        stop.set()
        for thread in service:
            thread.join()


@pytest.mark.next_week_staged
def test_a_standby_never_free_of_requests_keeps_the_week_staged_rather_than_have_its_replay_cancel_them(
        settings, config_file, conn, reader, standby, pg_socket_dir, database):
    """The requests read the popular items first: replayed among them, the swap would hold the
    ranking while a request holding the popular items asks for it, a deadlock the standby ends by
    cancelling the request after `deadlock_timeout`."""
    settings["postgres"]["standbys"] = json.dumps([standby])
    settings["pipeline"]["publish_wait"] = "3"
    apply_settings(settings, config_file)
    replayed(pg_socket_dir, database, standby)

    with requests_running(reader.at(standby), popular_then_ranked) as served:
        refused = run_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK), "--local-scheduler", "--no-lock")

    assert len(served) == 4 and min(served) > 20  # no request failed
    assert refused.returncode == TASK_FAILED
    assert "stayed held for more than 3 s ([pipeline] publish_wait) by pid " in refused.stderr
    assert "(web-service, " in refused.stderr and f"holding candidates_ranked on standby {standby}" in refused.stderr
    assert live_week(conn) == WEEK
    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"  # the rerun, once the standby is free


@pytest.mark.next_week_staged
def test_a_standby_replays_the_swap_among_the_web_services_requests_without_failing_one(
        settings, config_file, conn, reader, standby, pg_socket_dir, database):
    """The standby not listed, the swap is replayed while requests hold the ranking: it takes the
    live names in the order the requests do, and waits for the requests in flight, not the other way."""
    replayed(pg_socket_dir, database, standby)

    with requests_running(reader.at(standby)) as served:
        published = run_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK), "--local-scheduler", "--no-lock")
        replayed(pg_socket_dir, database, standby)
        time.sleep(1)  # requests on the week replayed

    assert published.returncode == 0, published.stderr[-2000:]
    assert len(served) == 4 and min(served) > 20  # no request failed
    assert reader.at(standby).read("SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]


@pytest.mark.next_week_staged
def test_idle_blockers_on_a_standby_are_terminated_there_when_asked(
        settings, config_file, conn, reader, standby, pg_socket_dir, database):
    settings["postgres"]["standbys"] = json.dumps([standby])
    settings["pipeline"].update(terminate_idle_blockers="true", idle_blocker_seconds="1", publish_wait="30")
    apply_settings(settings, config_file)
    replayed(pg_socket_dir, database, standby)
    report = reader.at(standby).connect("long-report")
    report.cursor().execute("SELECT count(*) FROM candidates_ranked")

    published = run_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK), "--local-scheduler", "--no-lock")

    assert published.returncode == 0, published.stderr[-2000:]
    assert (f"terminated pid {report.get_backend_pid()} (long-report, idle in transaction, transaction open "
            in published.stderr) and f"holding candidates_ranked on standby {standby}" in published.stderr
    with pytest.raises(psycopg2.OperationalError):
        report.cursor().execute("SELECT 1")
    assert live_week(conn) == NEXT_WEEK


@contextmanager
def streaming_delay(standby: str, delay: str) -> Iterator[None]:
    """The standby's `max_standby_streaming_delay` for a while: how long its replay waits for a
    reader it conflicts with before cancelling it (30 s by default, which other specs rely on)."""
    def configured(statement: str) -> None:
        with admin_connection(standby) as admin, admin.cursor() as cur:
            cur.execute(statement)
            cur.execute("SELECT pg_reload_conf()")

    configured(f"ALTER SYSTEM SET max_standby_streaming_delay = '{delay}'")
    try:
        yield
    finally:
        configured("ALTER SYSTEM RESET max_standby_streaming_delay")


def without_dead_rows_in_the_shared_catalogs(socket_dir: str, timeout: float = 30) -> None:
    """The roles and databases of the tests before leave dead rows in the cluster's shared catalogs,
    which autovacuum removes at any moment, from any database: replayed on a standby, that conflicts
    with its readers in every database, once their snapshot was taken while a transaction older than
    those rows still ran on the primary (an autovacuum's `ANALYZE`). It cancelled this spec's report
    once on CI, the week's loads not involved. So the primary's other transactions are waited out and
    the shared catalogs vacuumed before the report's snapshot."""
    with admin_connection(socket_dir) as admin:
        eventually(lambda: query(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                                        " AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL)") == [(0,)],
                   "the primary's other transactions ending", seconds=timeout)
        admin.cursor().execute("VACUUM pg_authid, pg_auth_members, pg_shdepend, pg_database")


def test_a_weeks_loads_never_cancel_a_reader_on_a_standby_whose_snapshot_is_older_than_them(
        settings, conn, reader, standby, pg_socket_dir, database):
    """A vacuum that marks rows visible to all (as autovacuum does once a week is live) is replayed
    on a standby as a conflict with every reader there whose snapshot is older than the rows, whichever
    table it reads, and the replay cancels them after `max_standby_streaming_delay`. Rows written
    frozen (`COPY ... FREEZE`) leave a vacuum nothing to mark."""
    loads = (DefaultRecs(week=WEEK), OnlineRecs(week=WEEK), TrainCandidates(week=WEEK), InferenceCandidates(week=WEEK))
    without_dead_rows_in_the_shared_catalogs(pg_socket_dir)
    replayed(pg_socket_dir, database, standby)
    with streaming_delay(standby, "1s"), reader.at(standby).connect("long-report") as report:
        report.set_session(isolation_level="REPEATABLE READ")
        held = report.cursor()
        held.execute("SELECT 1")  # the report's snapshot, from before the week

        assert run_tasks(*loads).name == "SUCCESS"
        with admin_connection(pg_socket_dir, database) as admin, admin.cursor() as cur:
            for load in loads:
                cur.execute(f'VACUUM "{staged(load.table)}"')
        replayed(pg_socket_dir, database, standby)
        time.sleep(2)  # twice the delay

        held.execute("SELECT 1")
        assert held.fetchall() == [(1,)]
    report.close()


@pytest.mark.next_week_staged
def test_a_standby_the_pipeline_cannot_reach_holds_nothing_up_and_is_named_once(
        settings, config_file, conn, tmp_path):
    gone = str(tmp_path / "replica-being-rebuilt")
    settings["postgres"]["standbys"] = json.dumps([gone])
    apply_settings(settings, config_file)

    published = run_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK), "--local-scheduler", "--no-lock")

    assert published.returncode == 0, published.stderr[-2000:]
    assert published.stderr.count(f"[postgres] standbys: not waiting for readers on {gone}: cannot connect to") == 1
    assert live_week(conn) == NEXT_WEEK


@pytest.mark.published_week
def test_a_live_name_held_by_maintenance_after_the_swap_keeps_its_statistics_for_a_later_publish(
        settings, conn, pg_socket_dir, database, caplog):
    with admin_connection(pg_socket_dir, database) as admin:  # as if the names had never been sampled
        admin.cursor().execute("DELETE FROM pg_statistic WHERE starelid IN"
                               " ('online_recs'::regclass, 'candidates_ranked'::regclass)")
    vacuum = psycopg2.connect(host=pg_socket_dir, dbname=database, user="postgres", application_name="nightly-vacuum")
    vacuum.cursor().execute("LOCK TABLE online_recs IN SHARE UPDATE EXCLUSIVE MODE")  # what a VACUUM holds
    started = time.monotonic()

    with caplog.at_level(logging.WARNING, logger="luigi-interface"):
        live_locks.analyze_live_names(["online_recs", "candidates_ranked"], WEEK)

    assert time.monotonic() - started < 2  # one bounded attempt: the week is live already
    assert (f"online_recs keeps the statistics of its former week until a later publish: pid "
            f"{vacuum.get_backend_pid()} (nightly-vacuum, idle in transaction") in caplog.text
    sampled = "SELECT count(*) > 0 FROM pg_stats WHERE tablename = %s AND inherited"
    assert query(conn, sampled, "online_recs") == [(False,)]
    assert query(conn, sampled, "candidates_ranked") == [(True,)]
    vacuum.close()


@pytest.mark.next_week_staged
def test_a_materialized_view_under_vacuum_takes_the_week_once_the_vacuum_ends_and_its_readers_never_wait(
        config_file, conn, reader, pg_socket_dir, database):
    """Autovacuum or a DBA's `VACUUM` holds a materialized view against its refresh, often right
    after a publish's refresh changed many of its rows: a refresh given up after a `lock_timeout`
    would serve the web service the former week until the next. The refresh's lock is one no
    reader's conflicts with, so waiting for it holds up no one."""
    dba_materializes_the_top_10(conn, reader)
    vacuum = maintenance_holding(pg_socket_dir, database, "service_top")

    publishing = start_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK))
    until_its_refresh_waits(conn, publishing)
    time.sleep(2)  # past a lock_timeout, and past the deadlock_timeout that ends an autovacuum in the way
    waited_for_the_vacuum = publishing.poll() is None
    read_meanwhile = reader.read("SELECT DISTINCT week FROM service_top")
    vacuum.rollback()  # the vacuum ends
    _, errors = publishing.communicate(timeout=60)

    assert waited_for_the_vacuum and read_meanwhile == [(WEEK,)]
    assert publishing.returncode == 0, errors[-2000:]
    assert reader.read("SELECT DISTINCT week FROM service_top") == [(NEXT_WEEK,)]
    assert "still holds the rows" not in errors
    vacuum.close()


@pytest.mark.next_week_staged
def test_a_run_killed_while_a_refresh_waits_leaves_the_week_live_and_its_rerun_refreshes_the_view(
        config_file, conn, reader, pg_socket_dir, database):
    """The week's marker is written in the swap: were it the only one, a rerun would find the week
    done, and the web service would read the former week from the view until the next publish."""
    dba_materializes_the_top_10(conn, reader)
    vacuum = maintenance_holding(pg_socket_dir, database, "service_top")
    publishing = start_luigi(config_file, "WeeklyRecs", "--week", str(NEXT_WEEK))
    until_its_refresh_waits(conn, publishing)

    os.killpg(publishing.pid, signal.SIGKILL)  # the machine goes down, an operator stops the run
    publishing.communicate()
    vacuum.rollback()
    read_after_the_kill = reader.read("SELECT DISTINCT week FROM service_top")
    rerun = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK))

    assert read_after_the_kill == [(WEEK,)]
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "running   WeeklyRecs" in rerun.stderr and "running   RankCandidates" not in rerun.stderr
    assert reader.read("SELECT DISTINCT week FROM service_top") == [(NEXT_WEEK,)]
    assert f"weekly-recs: week {NEXT_WEEK} published" in rerun.stdout
    vacuum.close()


def until_its_refresh_waits(conn, publishing: subprocess.Popen) -> None:
    """Until the publish's refresh of `service_top` waits for its lock (or the publish ends)."""
    refresh_waits = "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'service_top'::regclass"
    eventually(lambda: query(conn, refresh_waits) != [(0,)] or publishing.poll() is not None,
               "the refresh of service_top waiting", seconds=60)
