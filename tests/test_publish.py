"""What the web service reads survives every publish: its role's grants, its DBA's views and
functions, and the reads themselves, whatever weeks go live, roll back, are redone or backfilled.

Read as the web service reads: as a login role of its own (`[postgres] readers`), not the owner.
"""

from __future__ import annotations

import re
import select
import unittest.mock
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta

import psycopg2
import psycopg2.errors
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline import WeeklyRecs, catalog, db, publish, rollback, serving
from pipeline.load import DefaultRecs
from tests.conftest import (
    NEXT_WEEK,
    PUBLISHED_TABLES,
    TASK_FAILED,
    TELEGRAM_ENV,
    WEEK,
    admin_connection,
    apply_settings,
    dba_keys_the_popular_items_to_a_catalogue,
    dba_materializes_the_top_10,
    live_state,
    query,
    run_luigi,
    run_module,
    run_tasks,
    staged,
    tcp_config,
)

SERVED = ("default_recs", "online_recs", "candidates_ranked", "model_metrics")


def dba_builds_on_the_live_tables(conn, reader) -> None:
    """What a web service's DBA does once the first week is live: a view and a function, granted."""
    conn.cursor().execute(f"""
        CREATE VIEW service_recs AS SELECT user_id, item_id, rank, week FROM candidates_ranked WHERE rank <= 10;
        GRANT SELECT ON service_recs TO {reader.name};
        CREATE FUNCTION popular_items(k int) RETURNS TABLE (item_id bigint, week date) LANGUAGE sql STABLE
        BEGIN ATOMIC SELECT item_id, week FROM default_recs ORDER BY items_cnt DESC, item_id LIMIT k; END;
        GRANT EXECUTE ON FUNCTION popular_items(int) TO {reader.name};""")


def assert_the_reader_sees_exactly_the_live_week(conn, reader, week) -> list[str]:
    """Every served name and the DBA's objects show `week`; everything else is refused. Returns what was refused."""
    for table in (*SERVED[:3], "service_recs"):
        assert reader.read(f"SELECT DISTINCT week FROM {table}") == [(week,)], table
    assert (week,) in reader.read("SELECT week FROM model_metrics")
    assert reader.read("SELECT * FROM popular_items(3)") == query(
        conn, "SELECT item_id, week FROM default_recs ORDER BY items_cnt DESC, item_id LIMIT 3")
    internal = [name for (name,) in query(conn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                                                " AND (tablename LIKE '%%\\_\\_%%' OR tablename IN"
                                                " ('table_updates', 'table_updates_unlogged', 'ranker_models',"
                                                "  'week_inputs', 'candidates_train',"
                                                "  'candidates_inference'))")]
    for table in internal:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            reader.read(f'SELECT 1 FROM "{table}" LIMIT 1')
    return internal


def test_grants_views_functions_and_policies_hold_through_seven_weeks_a_rollback_and_a_redo(
        settings, config_file, conn, reader):
    def top_ten_only() -> bool:
        return reader.read("SELECT max(rank) FROM candidates_ranked") == [(10,)]

    weeks = [WEEK - timedelta(weeks=6 - k) for k in range(7)]
    run_tasks(WeeklyRecs(week=weeks[0]))
    dba_builds_on_the_live_tables(conn, reader)
    conn.cursor().execute(f"ALTER TABLE candidates_ranked ENABLE ROW LEVEL SECURITY; CREATE POLICY top_ten ON"
                          f" candidates_ranked FOR SELECT TO {reader.name} USING (rank <= 10)")

    for week in weeks:
        assert run_tasks(WeeklyRecs(week=week), DefaultRecs(week=week + timedelta(weeks=1))).name == "SUCCESS"
        refused = assert_the_reader_sees_exactly_the_live_week(conn, reader, week)
        assert {publish.staged_name("default_recs", week + timedelta(weeks=1)), "table_updates", "ranker_models",
                "week_inputs", publish.week_name("candidates_ranked", week)} <= set(refused)
        assert top_ten_only()

    for table in PUBLISHED_TABLES:  # retention 4: the oldest two weeks are gone
        assert publish.archived_weeks(conn.cursor(), table) == weeks[-2:-6:-1]
    back = run_module(config_file, "rollback")
    assert back.returncode == 0, back.stderr
    assert_the_reader_sees_exactly_the_live_week(conn, reader, weeks[-2])
    assert top_ten_only()
    assert run_module(config_file, "redo", str(WEEK)).returncode == 0
    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"
    assert_the_reader_sees_exactly_the_live_week(conn, reader, WEEK)
    assert top_ten_only()


def as_the_layout_before_partitions(conn, live, archived) -> None:
    """Each live table a plain table with its week in its comment, archives without a week check:
    what a deployment of the previous version holds."""
    cur = conn.cursor()
    for table in PUBLISHED_TABLES:
        old_live = publish.week_name(table, live)
        cur.execute(f"ALTER TABLE {table} DETACH PARTITION {old_live}; DROP TABLE {table};"
                    f" ALTER TABLE {old_live} RENAME TO {table}; ALTER TABLE {table} DROP CONSTRAINT week_is;"
                    f" COMMENT ON TABLE {table} IS 'week={live}';"
                    f" ALTER TABLE {publish.week_name(table, archived)} DROP CONSTRAINT week_is")


def test_a_deployment_of_the_previous_layout_keeps_its_grants_views_and_archives_on_its_first_publish(
        settings, config_file, conn, reader):
    earlier = WEEK - timedelta(weeks=1)
    run_tasks(WeeklyRecs(week=earlier), WeeklyRecs(week=WEEK))
    as_the_layout_before_partitions(conn, WEEK, earlier)
    settings["postgres"]["readers"] = "[]"  # what the web service reads, it reads by its DBA's grants alone
    apply_settings(settings, config_file)
    conn.cursor().execute(f"GRANT SELECT ON default_recs, online_recs TO {reader.name};"
                          f" GRANT SELECT (user_id, item_id, rank, week) ON candidates_ranked TO {reader.name}")
    dba_builds_on_the_live_tables(conn, reader)
    assert reader.read("SELECT DISTINCT week FROM service_recs") == [(WEEK,)]

    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK))

    assert result.returncode == 0, result.stderr[-2000:]
    assert query(conn, "SELECT relkind FROM pg_class WHERE relname = 'candidates_ranked'") == [("p",)]
    for table in ("default_recs", "online_recs", "candidates_ranked", "service_recs"):
        assert reader.read(f"SELECT DISTINCT week FROM {table}") == [(NEXT_WEEK,)], table
    assert reader.read("SELECT DISTINCT week FROM popular_items(3)") == [(NEXT_WEEK,)]
    for table in PUBLISHED_TABLES:
        assert publish.archived_weeks(conn.cursor(), table) == [WEEK, earlier]
    assert run_module(config_file, "rollback", str(earlier)).returncode == 0  # an archive of the old layout
    assert reader.read("SELECT DISTINCT week FROM service_recs") == [(earlier,)]


def rewrite_top_popular(input_dir, **columns) -> None:
    """top_popular.parquet with these extra columns (None drops one)."""
    path = input_dir / "top_popular.parquet"
    table = pq.read_table(path)
    for name, values in columns.items():
        if name in table.column_names:
            table = table.drop_columns([name])
        if values is not None:
            table = table.append_column(name, pa.array([values] * table.num_rows))
    pq.write_table(table, path)


def test_a_week_may_add_or_drop_columns_but_not_one_that_a_dependent_object_uses(settings, config_file, input_dir,
                                                                                conn, reader):
    rewrite_top_popular(input_dir, title="a title", brand="acme")
    run_tasks(WeeklyRecs(week=WEEK))
    conn.cursor().execute(f"CREATE VIEW shop_titles AS SELECT item_id, title FROM default_recs;"
                          f" GRANT SELECT ON shop_titles TO {reader.name}")
    rewrite_top_popular(input_dir, brand=None, price=9.5)

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"
    assert reader.read("SELECT DISTINCT title, price, week FROM default_recs") == [("a title", 9.5, NEXT_WEEK)]
    assert "brand" not in catalog.table_columns(conn.cursor(), "default_recs")
    before = live_state(conn)
    rewrite_top_popular(input_dir, title=None)
    later = NEXT_WEEK + timedelta(weeks=1)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(later))

    assert refused.returncode == TASK_FAILED
    assert (f"ContractError: {input_dir / 'top_popular.parquet'}, column 'title': the week has no column 'title', "
            "which view shop_titles uses in default_recs") in refused.stderr
    assert live_state(conn) == before
    assert query(conn, "SELECT count(*) FROM pg_tables WHERE tablename LIKE '%%staged%%'") == [(0,)]
    assert reader.read("SELECT DISTINCT title FROM shop_titles") == [("a title",)]


def next_week_published_saying(config_file, bot_api, said: str) -> str:
    """`luigi` publishes the next week, saying `said` in its log and in its success message, which it returns."""
    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK), env=TELEGRAM_ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"week {NEXT_WEEK}: {said}" in result.stderr
    [text] = bot_api.texts()
    assert f"week {NEXT_WEEK} published" in text and said in text
    return text


def test_a_week_that_changes_a_live_names_columns_says_so_as_a_select_star_the_web_service_prepared_fails(
        bot_api, config_file, input_dir, conn, reader):
    rewrite_top_popular(input_dir, brand="acme")
    run_tasks(WeeklyRecs(week=WEEK))
    conn.cursor().execute(f"CREATE VIEW service_defaults AS SELECT item_id, items_cnt, week FROM default_recs;"
                          f" GRANT SELECT ON service_defaults TO {reader.name}")
    web_service = reader.connect()
    web_service.autocommit = True
    web_service.cursor().execute("PREPARE defaults AS SELECT * FROM default_recs; EXECUTE defaults")
    rewrite_top_popular(input_dir, brand=None, price=9.5)

    text = next_week_published_saying(config_file, bot_api, (
        "default_recs changes its columns: added price (double precision), dropped brand; a SELECT * of it "
        "prepared before fails (cached plan must not change result type) until prepared again"))

    assert text.count("changes its columns") == 1  # the other tables kept theirs
    with pytest.raises(psycopg2.errors.FeatureNotSupported, match="cached plan must not change result type"):
        web_service.cursor().execute("EXECUTE defaults")
    assert reader.read("SELECT DISTINCT week FROM service_defaults") == [(NEXT_WEEK,)]  # a view keeps its columns
    web_service.close()

    rolled_back = run_module(config_file, "rollback")

    assert rolled_back.returncode == 0, rolled_back.stderr[-2000:]
    assert (f"rollback to week {WEEK}: default_recs changes its columns: added brand (text), dropped price; "
            "a SELECT * of it prepared before fails") in rolled_back.stderr


def test_a_web_service_the_dba_granted_some_columns_keeps_them_through_a_retype_and_no_more(
        settings, config_file, input_dir, conn, reader):
    rewrite_top_popular(input_dir, price=9.5)
    run_tasks(WeeklyRecs(week=WEEK))
    conn.cursor().execute(f"REVOKE SELECT ON default_recs FROM {reader.name};"
                          f" GRANT SELECT (item_id, price, week) ON default_recs TO {reader.name}")
    rewrite_top_popular(input_dir, price="on request")  # retyped: a new column, to PostgreSQL

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"

    assert reader.read("SELECT DISTINCT price, week FROM default_recs") == [("on request", NEXT_WEEK)]
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):  # `[postgres] readers` widened nothing
        reader.read("SELECT items_cnt FROM default_recs LIMIT 1")
    before = live_state(conn)
    rewrite_top_popular(input_dir, price=None)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK + timedelta(weeks=1)))

    assert refused.returncode == TASK_FAILED
    assert (f"ContractError: {input_dir / 'top_popular.parquet'}, column 'price': the week has no column 'price', "
            f"which the grant of SELECT to {reader.name} uses in default_recs") in refused.stderr
    assert live_state(conn) == before


def what_the_dba_documented_and_tuned(conn, table: str) -> list[tuple]:
    """The table's comment and extended statistics, then each column in order: its comment,
    statistics target and options."""
    return query(conn, "SELECT NULL, obj_description(%s::regclass, 'pg_class'), NULL, NULL", table) + query(
        conn, "SELECT NULL, stxname, NULL, NULL FROM pg_statistic_ext WHERE stxrelid = %s::regclass", table) + query(
        conn, "SELECT attname, col_description(attrelid, attnum), attstattarget, attoptions FROM pg_attribute"
              " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", table)


def test_what_the_dba_documented_and_tuned_on_a_live_name_outlives_a_retype_and_a_rollback(
        settings, input_dir, conn, reader):
    rewrite_top_popular(input_dir, price=9.5)
    run_tasks(WeeklyRecs(week=WEEK))
    conn.cursor().execute("COMMENT ON TABLE default_recs IS 'The shop''s fallback recommendations: ask #recs';"
                          " COMMENT ON COLUMN default_recs.price IS 'in euros, as the catalogue had it';"
                          " ALTER TABLE default_recs ALTER COLUMN price SET STATISTICS 500,"
                          "  ALTER COLUMN price SET (n_distinct = -0.5);"
                          " CREATE STATISTICS prices_of_items (dependencies) ON item_id, price FROM default_recs")
    documented = what_the_dba_documented_and_tuned(conn, "default_recs")
    rewrite_top_popular(input_dir, price="on request")  # retyped

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"

    assert reader.read("SELECT DISTINCT price, week FROM default_recs") == [("on request", NEXT_WEEK)]
    assert what_the_dba_documented_and_tuned(conn, "default_recs") == documented
    assert query(conn, "SELECT obj_description('online_recs'::regclass, 'pg_class')") == [(f"week={NEXT_WEEK}",)]

    rollback.roll_back(WEEK)

    assert reader.read("SELECT DISTINCT price, week FROM default_recs") == [(9.5, WEEK)]
    assert what_the_dba_documented_and_tuned(conn, "default_recs") == documented
    assert [week for week, _ in rollback.available_weeks(conn.cursor(), ["default_recs"]).items()] == [NEXT_WEEK, WEEK]


def tuning_of_week(conn, table: str, week) -> tuple[dict, dict]:
    """What the week's table of `table` is tuned with, the pipeline's own options apart."""
    name = publish.week_name(table, week)
    parameters = catalog.storage_parameters(conn.cursor(), name)
    for own in ("autovacuum_enabled", "vacuum_truncate"):
        parameters.pop(own, None)
    return parameters, catalog.column_tuning(conn.cursor(), name)


@pytest.mark.published_week
def test_what_the_dba_tuned_on_the_live_week_every_later_week_and_a_rollback_take_before_they_are_sampled(
        settings, conn, reader):
    live = publish.week_name("candidates_ranked", WEEK)
    conn.cursor().execute(  # PostgreSQL refuses storage parameters on the live name, and asks for them on its weeks
        f"ALTER TABLE {live} SET (parallel_workers = 4, autovacuum_vacuum_scale_factor = 0.01);"
        " ALTER TABLE candidates_ranked ALTER COLUMN user_id SET STATISTICS 1000;"  # passed down to the live week
        f" ALTER TABLE {live} ALTER COLUMN item_id SET (n_distinct = -0.25)")
    tuned = tuning_of_week(conn, "candidates_ranked", WEEK)
    assert tuned[0] and tuned[1]["user_id"].statistics == 1000

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"

    assert tuning_of_week(conn, "candidates_ranked", NEXT_WEEK) == tuned
    assert query(conn, "SELECT n_distinct FROM pg_stats WHERE tablename = %s AND attname = 'item_id'",
                 publish.week_name("candidates_ranked", NEXT_WEEK)) == [(-0.25,)]  # sampled as the DBA asked
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]
    conn.cursor().execute(f"ALTER TABLE {publish.week_name('candidates_ranked', NEXT_WEEK)}"
                          " SET (parallel_workers = 2), RESET (autovacuum_vacuum_scale_factor),"
                          " ALTER COLUMN user_id SET STATISTICS -1, ALTER COLUMN item_id RESET (n_distinct)")
    retuned = tuning_of_week(conn, "candidates_ranked", NEXT_WEEK)

    rollback.roll_back(WEEK)

    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(WEEK,)]
    assert tuning_of_week(conn, "candidates_ranked", WEEK) == retuned != tuned


@pytest.fixture(scope="module")
def fast_disk(pg_socket_dir, tmp_path_factory) -> Iterator[str]:
    """A tablespace, as a DBA makes one on the shop's fast disks: for the module, as it outlives its databases."""
    folder, name = tmp_path_factory.mktemp("fast_disk"), f"fast_{uuid.uuid4().hex[:8]}"
    db.handed_to_server(folder)
    with admin_connection(pg_socket_dir) as admin:
        admin.cursor().execute(f"CREATE TABLESPACE {name} LOCATION '{folder}'")
        yield name
        admin.cursor().execute(f"DROP TABLESPACE {name}")


def tablespaces_of_week(conn, table: str, week) -> set[str]:
    """Where the week's table of `table` and each of its indexes are ('' for the database's default)."""
    name = publish.week_name(table, week)
    return {place for (place,) in query(
        conn, "SELECT coalesce(s.spcname, '') FROM pg_class c LEFT JOIN pg_tablespace s ON s.oid = c.reltablespace"
              " WHERE c.oid = %s::regclass OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = %s::regclass)",
        name, name)}


def test_a_week_goes_live_on_the_disk_the_dba_put_the_live_name_on_with_its_indexes(
        fast_disk, pipeline_role, settings, conn, reader, pg_socket_dir, database):
    run_tasks(WeeklyRecs(week=WEEK))
    live = publish.week_name("candidates_ranked", WEEK)
    with admin_connection(pg_socket_dir, database) as dba:
        dba.cursor().execute(f"CREATE INDEX items_ranked ON candidates_ranked (item_id, rank);"
                             f" ALTER TABLE candidates_ranked SET TABLESPACE {fast_disk};"  # where its weeks go
                             f" ALTER TABLE {live} SET TABLESPACE {fast_disk};"
                             f" ALTER TABLE {publish.week_name('online_recs', WEEK)} SET TABLESPACE {fast_disk};"
                             f" GRANT CREATE ON TABLESPACE {fast_disk} TO {pipeline_role}")

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"

    assert tablespaces_of_week(conn, "candidates_ranked", NEXT_WEEK) == {fast_disk}  # the DBA's index too
    assert tablespaces_of_week(conn, "online_recs", NEXT_WEEK) == {fast_disk}  # as the live week was
    assert tablespaces_of_week(conn, "default_recs", NEXT_WEEK) == {""}
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]


def test_a_week_the_pipeline_may_not_put_on_the_dbas_disk_fails_naming_it_with_the_live_week_whole(
        fast_disk, pipeline_role, settings, config_file, conn, pg_socket_dir, database):
    run_tasks(WeeklyRecs(week=WEEK))
    with admin_connection(pg_socket_dir, database) as dba:
        dba.cursor().execute(f"ALTER TABLE default_recs SET TABLESPACE {fast_disk}")
    before = live_state(conn)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK))

    assert refused.returncode == TASK_FAILED
    assert (f"PermissionError: default_recs: its weeks belong on tablespace {fast_disk}, where the pipeline's role may "
            f"not create tables (GRANT CREATE ON TABLESPACE {fast_disk} TO {pipeline_role})") in refused.stderr
    assert live_state(conn) == before


def test_the_live_names_go_where_the_pipelines_role_is_pointed_with_a_same_named_table_elsewhere_untouched(
        pipeline_role, settings, reader, pg_socket_dir, database):
    with admin_connection(pg_socket_dir, database) as dba:
        dba.cursor().execute(f"CREATE SCHEMA recs AUTHORIZATION {pipeline_role};"
                             f" ALTER ROLE {pipeline_role} IN DATABASE {database} SET search_path = recs;"
                             f" GRANT USAGE ON SCHEMA recs TO {reader.name};"
                             " CREATE TABLE public.candidates_ranked (note text)")

        assert run_tasks(WeeklyRecs(week=WEEK), WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"

        assert reader.read("SELECT DISTINCT week FROM recs.candidates_ranked") == [(NEXT_WEEK,)]
        assert query(dba, "SELECT DISTINCT schemaname FROM pg_tables WHERE tableowner = %s", pipeline_role) == [
            ("recs",)]
        assert query(dba, "SELECT count(*) FROM public.candidates_ranked") == [(0,)]


@pytest.mark.parametrize("pipeline_role", ["Shop Recs"], indirect=True)
def test_a_role_with_no_schema_to_make_tables_in_is_refused_before_anything_and_what_it_says_to_do_works_as_pasted(
        pipeline_role, reader, config_file, pg_socket_dir, database):
    """PostgreSQL 15 and later give no role but the database's owner `CREATE` on `public`, and a DBA
    may point the role at a schema not made yet; PostgreSQL's own words name neither. The role's name
    is one SQL must quote, as the advice does."""
    role = f'"{pipeline_role}"'
    with admin_connection(pg_socket_dir, database) as dba:
        dba.cursor().execute(f"REVOKE CREATE ON SCHEMA public FROM {role}")
        not_allowed = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(WEEK))
        dba.cursor().execute(f"ALTER ROLE {role} IN DATABASE {database} SET search_path = \"$user\"")
        no_schema = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(WEEK))
        made_nothing = query(dba, "SELECT count(*) FROM pg_class WHERE relowner = %s::regrole", role)
        advised = re.search(r"\((CREATE SCHEMA .+?), or ALTER ROLE", no_schema.stderr)
        dba.cursor().execute(f"{advised[1]}; GRANT USAGE ON SCHEMA {role} TO {reader.name}")
        went_live = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(WEEK))

        assert not_allowed.returncode == TASK_FAILED
        assert (f"ValueError: [postgres] user {role} may not make tables in schema public, the first of its "
                f'search_path ("$user", public) that exists in database {database} (GRANT CREATE ON SCHEMA public '
                f"TO {role}, or ALTER ROLE {role} IN DATABASE {database} SET search_path = a schema of its own)"
                ) in not_allowed.stderr
        assert no_schema.returncode == TASK_FAILED
        assert (f"ValueError: [postgres] user {role} has no schema to make the week's tables in, in database "
                f'{database}: none of its search_path ("$user") exists (CREATE SCHEMA {role} AUTHORIZATION {role}, '
                f"or ALTER ROLE {role} IN DATABASE {database} SET search_path = a schema it may create in)"
                ) in no_schema.stderr, no_schema.stderr[-3000:]
        assert made_nothing == [(0,)]
        assert went_live.returncode == 0, went_live.stderr[-2000:]
        assert reader.read(f"SELECT DISTINCT week FROM {role}.candidates_ranked") == [(WEEK,)]


@pytest.mark.published_week
def test_a_live_name_that_logical_replication_publishes_goes_live_saying_its_subscribers_miss_the_week(
        bot_api, config_file, conn):
    conn.cursor().execute("CREATE PUBLICATION shop_replica FOR TABLE candidates_ranked"
                          " WITH (publish_via_partition_root = true)")

    text = next_week_published_saying(config_file, bot_api, (
        "not carried by logical replication: candidates_ranked (publication shop_replica); its subscribers keep "
        "the rows they had"))

    assert text.count("logical replication") == 1


@pytest.mark.published_week
def test_a_week_loaded_from_the_live_weeks_files_goes_live_saying_which_tables_repeat_it(bot_api, config_file,
                                                                                      input_dir):
    """The popular items may stay the same for a week; a week of last week's rows is not to pass unsaid."""
    similar = input_dir / "similar.parquet"
    pq.write_table(pq.read_table(similar).slice(1), similar)  # only the similar items were made anew

    text = next_week_published_saying(config_file, bot_api, (
        f"default_recs: loaded from the very file the live week {WEEK} was, so its rows are that week's again"))

    repeated = [line.split(":")[0] for line in text.splitlines() if "loaded from the very file" in line]
    assert repeated == ["default_recs", "candidates_train", "candidates_inference"]  # the suite allows the last two


def test_a_reader_role_that_does_not_exist_is_refused_by_name_before_anything_is_staged(settings, config_file,
                                                                                      conn):
    settings["postgres"]["readers"] = '["websvc_nobody"]'
    apply_settings(settings, config_file)

    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(WEEK))

    assert result.returncode == TASK_FAILED
    assert "ValueError: [postgres] readers: no role named 'websvc_nobody' in the database" in result.stderr
    assert query(conn, "SELECT count(*) FROM pg_tables WHERE tablename LIKE '%%\\_\\_%%'") == [(0,)]


@pytest.mark.published_week
def test_the_web_services_reads_as_its_own_role(settings, conn, reader):
    (user, item), = query(conn, "SELECT user_id, item_id FROM candidates_ranked WHERE rank = 1 LIMIT 1")
    stranger = query(conn, "SELECT max(user_id) + 1 FROM candidates_ranked")[0][0]

    with reader.connect() as service, service.cursor() as cur:
        personal = serving.top_k(cur, user, k=5)
        popular = serving.top_k(cur, stranger, k=5)
        similar = serving.neighbours(cur, item, k=3)
    service.close()

    assert personal == query(conn, "SELECT item_id, rank FROM candidates_ranked WHERE user_id = %s AND rank <= 5"
                                   " ORDER BY rank", user)
    assert [rank for _, rank in personal] == [1, 2, 3, 4, 5]
    assert popular == list(zip([i for (i,) in query(conn, "SELECT item_id FROM default_recs ORDER BY items_cnt DESC,"
                                                          " item_id LIMIT 5")], range(1, 6), strict=True))
    assert similar == query(conn, "SELECT itemid_2, score FROM online_recs WHERE itemid_1 = %s ORDER BY score DESC,"
                                  " itemid_2 LIMIT 3", item)
    assert len(similar) == 3


def planned_groups(reader, table: str, column: str) -> int:
    """How many groups the planner expects a `GROUP BY column` over the live name to make, as the
    web service's role asks: it reads the name's own statistics, which no autovacuum gathers."""
    [([plan],)] = reader.read(f"EXPLAIN (FORMAT JSON) SELECT {column}, count(*) FROM {table} GROUP BY {column}")
    return plan["Plan"]["Plan Rows"]


def keep_a_quarter_of_the_similar_items(input_dir) -> None:
    similar = pq.read_table(input_dir / "similar.parquet")
    kept = pc.unique(similar["itemid_1"])[::4]
    pq.write_table(similar.filter(pc.is_in(similar["itemid_1"], kept)), input_dir / "similar.parquet")


def test_the_planner_knows_each_week_the_moment_it_goes_live_or_is_rolled_back_to(settings, config_file, input_dir,
                                                                                  conn, reader):
    def distinct_items() -> int:
        return query(conn, "SELECT count(DISTINCT itemid_1) FROM online_recs")[0][0]

    run_tasks(WeeklyRecs(week=WEEK))
    first = distinct_items()
    keep_a_quarter_of_the_similar_items(input_dir)
    settings["pipeline"]["max_row_drop"] = "1"  # a week meant to be smaller, not a file cut short
    apply_settings(settings, config_file)

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"

    assert planned_groups(reader, "online_recs", "itemid_1") == distinct_items() == first // 4 + (first % 4 > 0)
    for table in PUBLISHED_TABLES:  # the week's table was sampled before the swap, not left to autovacuum
        assert query(conn, "SELECT count(*) > 0 FROM pg_stats WHERE tablename = %s",
                     publish.week_name(table, NEXT_WEEK)) == [(True,)], table
    assert run_module(config_file, "rollback").returncode == 0
    assert planned_groups(reader, "online_recs", "itemid_1") == distinct_items() == first


def heard(listener, wait_s: float = 5) -> list[str]:
    """What a `LISTEN`ing connection was told, waiting up to `wait_s` for the first word."""
    if not listener.notifies:
        select.select([listener], [], [], wait_s)
    listener.poll()
    payloads = [notification.payload for notification in listener.notifies]
    listener.notifies.clear()
    return payloads


@pytest.mark.published_week
def test_a_web_service_listening_hears_each_week_once_as_it_goes_live_or_is_rolled_back_to_and_not_a_refused_one(
        settings, config_file, input_dir, reader):
    """A web service that caches the week's rows learns that they changed the moment they do."""
    listener = reader.connect("web-service-cache")
    listener.autocommit = True
    listener.cursor().execute(f"LISTEN {publish.LIVE_CHANNEL}")

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"
    assert heard(listener) == [str(NEXT_WEEK)]  # one word for the five tables
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]

    assert run_module(config_file, "rollback").returncode == 0
    assert heard(listener) == [str(WEEK)]

    (input_dir / "similar.parquet").write_bytes(b"not parquet")
    assert run_tasks(WeeklyRecs(week=NEXT_WEEK + timedelta(weeks=1))).name != "SUCCESS"
    assert heard(listener, wait_s=0.5) == []
    listener.close()


def test_a_stage_is_left_to_the_pipeline_and_a_week_to_autovacuum_once_it_is_live_or_archived(settings, conn):
    def autovacuumed(name: str) -> bool:
        """And never truncated by it: a standby would replay the lock, making its readers wait."""
        return query(conn, "SELECT NOT 'autovacuum_enabled=false' = ANY(reloptions)"
                           " AND 'vacuum_truncate=false' = ANY(reloptions) FROM pg_class WHERE relname = %s",
                     name) == [(True,)]

    run_tasks(WeeklyRecs(week=NEXT_WEEK), DefaultRecs(week=WEEK))  # then a backfill of the week before

    assert not autovacuumed(staged("default_recs"))  # no vacuum to hold up the week's going live
    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"
    for table in PUBLISHED_TABLES:
        assert autovacuumed(publish.week_name(table, NEXT_WEEK)) and autovacuumed(publish.week_name(table, WEEK))


def plan_nodes(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def explained(cur, statement: str) -> list[dict]:
    cur.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}")
    [([plan],)] = cur.fetchall()
    return list(plan_nodes(plan["Plan"]))


def test_a_loaded_week_goes_live_as_a_vacuum_would_leave_it_so_index_only_scans_never_visit_its_rows(
        settings, conn, reader):
    """Loaded with `COPY ... FREEZE` (the ranking, which its shards fill, written again so): rows
    frozen, every page all-visible. Loaded plainly, an index-only scan fetches each row from the heap
    until a vacuum has run, and a first read writes the pages again (README, Performance)."""
    run_tasks(WeeklyRecs(week=WEEK))
    keys = {"online_recs": "itemid_1", "candidates_ranked": "user_id", "candidates_train": "user_id",
            "candidates_inference": "user_id"}

    def index_only_scans(cur, table: str) -> list[tuple[int, bool]]:
        cur.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        nodes = explained(cur, f"SELECT count({keys[table]}) FROM {table}")
        return [(node["Heap Fetches"], node["Actual Rows"] > 0) for node in nodes
                if node["Node Type"] == "Index Only Scan"]

    with reader.connect() as service, service.cursor() as cur:
        scans = {table: index_only_scans(cur, table) for table in ("online_recs", "candidates_ranked")}
    service.close()
    with conn.cursor() as cur:  # the ranking's own reads of the candidates, and an analyst's
        scans |= {table: index_only_scans(cur, table) for table in ("candidates_train", "candidates_inference")}

    assert scans == {table: [(0, True)] for table in keys}


def test_a_snapshot_older_than_the_week_sees_the_whole_new_week(settings, conn, reader):
    """A reader in `REPEATABLE READ` since before the week, which reads the live names only after the
    swap, finds the new week's tables attached: every table of it is written by `COPY ... FREEZE`
    (the ranking again once its shards are in), whose rows every snapshot sees."""
    run_tasks(WeeklyRecs(week=WEEK))
    report = reader.connect("report")
    report.set_session(isolation_level="REPEATABLE READ")
    with report.cursor() as cur:
        cur.execute("SELECT 1")  # its snapshot, from before the next week

        assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"
        counts = {}
        for table in ("default_recs", "online_recs", "candidates_ranked"):
            cur.execute(f"SELECT count(*), min(week) FROM {table}")
            counts[table] = cur.fetchone()
    report.close()

    assert counts == {table: (query(conn, f"SELECT count(*) FROM {table}")[0][0], NEXT_WEEK)
                      for table in ("default_recs", "online_recs", "candidates_ranked")}
    assert min(count for count, _ in counts.values()) > 0


def test_an_archive_someone_built_on_outlives_the_retention_and_the_publish_goes_on(settings, conn):
    settings["pipeline"]["retention"] = "1"
    apply_settings(settings)
    weeks = [WEEK - timedelta(weeks=2), WEEK - timedelta(weeks=1), WEEK]
    run_tasks(WeeklyRecs(week=weeks[0]))
    first = publish.week_name("default_recs", weeks[0])
    conn.cursor().execute(f"CREATE VIEW audit_first_week AS SELECT * FROM {first}")

    assert run_tasks(WeeklyRecs(week=weeks[1]), WeeklyRecs(week=weeks[2])).name == "SUCCESS"

    assert publish.archived_weeks(conn.cursor(), "default_recs") == weeks[1::-1]  # kept past retention 1
    assert publish.archived_weeks(conn.cursor(), "online_recs") == [weeks[1]]
    assert query(conn, "SELECT DISTINCT week FROM audit_first_week") == [(weeks[0],)]


def test_an_archive_the_pipeline_may_no_longer_drop_outlives_the_retention_and_the_week_goes_live(
        settings, config_file, pipeline_role, pg_socket_dir, database):
    settings["pipeline"]["retention"] = "1"
    apply_settings(settings, config_file)
    weeks = [WEEK - timedelta(weeks=2), WEEK - timedelta(weeks=1), WEEK]
    assert run_tasks(WeeklyRecs(week=weeks[0]), WeeklyRecs(week=weeks[1])).name == "SUCCESS"
    audited = publish.week_name("default_recs", weeks[0])
    with admin_connection(pg_socket_dir, database) as admin:  # an auditor's DBA takes the first week over
        admin.cursor().execute(f"CREATE ROLE audit_{pipeline_role};"
                               f" ALTER TABLE {audited} OWNER TO audit_{pipeline_role}")

        published = run_luigi(config_file, "WeeklyRecs", "--week", str(weeks[2]), "--local-scheduler")

        assert published.returncode == 0, published.stderr[-2000:]
        assert f"{audited} is no longer needed but kept until a later publish: must be owner of table {audited}" \
            in published.stderr
        with admin.cursor() as cur:
            cur.execute("SELECT DISTINCT week FROM default_recs")
            assert cur.fetchall() == [(weeks[2],)]
            cur.execute(f"SELECT DISTINCT week FROM {audited}")
            assert cur.fetchall() == [(weeks[0],)]
            cur.execute(f"DROP TABLE {audited}; DROP ROLE audit_{pipeline_role}")


@pytest.mark.published_week
def test_an_index_the_dba_made_on_a_live_name_is_built_before_the_swap_never_in_it(settings, conn, reader):
    conn.cursor().execute("CREATE INDEX items_ranked ON candidates_ranked (item_id, rank)")

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"

    [(index, table)] = query(conn, "SELECT c.relname, i.indrelid::regclass::text FROM pg_inherits h JOIN pg_class c"
                                   " ON c.oid = h.inhrelid JOIN pg_index i ON i.indexrelid = c.oid WHERE h.inhparent ="
                                   " 'items_ranked'::regclass AND i.indrelid = %s::regclass",
                             publish.week_name("candidates_ranked", NEXT_WEEK))
    # built on the staged table, before the swap renamed it: the swap, which locks what the web
    # service reads, only attached it (attaching builds a missing index under the name of the week)
    assert index.startswith(publish.staged_name("candidates_ranked", NEXT_WEEK)), index
    [(item,)] = query(conn, "SELECT min(item_id) FROM candidates_ranked")
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked WHERE item_id = %s", item) == [(NEXT_WEEK,)]


@pytest.mark.parametrize(("what_the_dba_made", "named"), [
    ("CREATE INDEX shop_prices ON default_recs (price)", "index shop_prices"),
    ("ALTER TABLE default_recs ADD CONSTRAINT priced CHECK (price > 0)", "constraint priced"),
    ("CREATE STATISTICS prices_of_items (dependencies) ON item_id, price FROM default_recs",
     "statistics object prices_of_items"),
])
def test_a_week_may_not_drop_a_column_that_an_index_a_constraint_or_statistics_the_dba_made_uses(
        settings, config_file, input_dir, conn, what_the_dba_made, named):
    rewrite_top_popular(input_dir, price=9.5)
    run_tasks(WeeklyRecs(week=WEEK))
    conn.cursor().execute(what_the_dba_made)
    before = live_state(conn)
    rewrite_top_popular(input_dir, price=None)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK))

    assert refused.returncode == TASK_FAILED
    assert (f"ContractError: {input_dir / 'top_popular.parquet'}, column 'price': the week has no column 'price', "
            f"which {named} uses in default_recs") in refused.stderr
    assert live_state(conn) == before


def test_keys_the_dba_put_on_a_live_name_are_made_before_the_swap_never_in_it(settings, config_file, conn, reader):
    settings["pipeline"]["retention"] = "1"
    apply_settings(settings, config_file)
    weeks = [WEEK + timedelta(weeks=k) for k in range(-1, 3)]  # the last of them, 2026-12-05, has begun
    run_tasks(WeeklyRecs(week=weeks[0]))
    dba_keys_the_popular_items_to_a_catalogue(conn)

    for week in weeks[1:]:
        assert run_tasks(WeeklyRecs(week=week)).name == "SUCCESS"

        week_table = publish.week_name("default_recs", week)
        keys = query(conn, "SELECT k.contype, k.conname, i.relname FROM pg_constraint k LEFT JOIN pg_class i"
                           " ON i.oid = k.conindid AND k.contype = 'p' WHERE k.conrelid = %s::regclass"
                           " AND k.conparentid <> 0 ORDER BY 1", week_table)
        # attaching found both keys on the table and took them for the live name's: had it made them,
        # it would have built the key's index (named after the week's table) and checked every row for
        # the foreign key, while the web service waited on the live names
        staged = publish.staged_name("default_recs", week)
        assert keys == [("f", "catalogued", None), ("p", unittest.mock.ANY, f"{staged}_pkey")]
        assert len(query(conn, "SELECT FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%(week, item_id)'",
                         week_table)) == 1  # the key's, and no index of the same shape beside it
        assert reader.read("SELECT DISTINCT week FROM default_recs") == [(week,)]
        # an archive past retention, its foreign key with it, is dropped as any other
        assert publish.archived_weeks(conn.cursor(), "default_recs") == [week - timedelta(weeks=1)]
    assert run_module(config_file, "rollback").returncode == 0  # the archive takes the keys back as it is
    assert reader.read("SELECT DISTINCT week FROM default_recs") == [(weeks[-2],)]


@pytest.mark.published_week
def test_a_week_that_breaks_a_foreign_key_the_dba_made_fails_before_the_swap_naming_it(settings, config_file,
                                                                                       input_dir, conn):
    dba_keys_the_popular_items_to_a_catalogue(conn)
    before = live_state(conn)
    path = input_dir / "top_popular.parquet"
    uncatalogued = pq.read_table(path)
    uncatalogued = uncatalogued.set_column(uncatalogued.schema.get_field_index("item_id"), "item_id",
                                           pc.add(uncatalogued["item_id"], 10**9))
    pq.write_table(uncatalogued, path)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK))

    assert refused.returncode == TASK_FAILED
    assert ('insert or update on table "default_recs__staged_20261128" violates foreign key constraint "catalogued"'
            in refused.stderr)
    assert live_state(conn) == before


@pytest.mark.published_week
def test_a_foreign_key_to_a_live_name_is_refused_before_anything_is_staged_as_no_later_week_could_go_live(
        config_file, conn, reader):
    """A row can reference only the live week's rows, and PostgreSQL will not detach the week it references:
    the swap would fail after the whole week's work, and every week's after it."""
    run_tasks(WeeklyRecs(week=NEXT_WEEK))  # an archive to roll back to
    conn.cursor().execute("ALTER TABLE candidates_ranked ADD PRIMARY KEY (week, user_id, item_id);"
                          ' CREATE TABLE "Shop Clicks" (week date, user_id bigint, item_id bigint, CONSTRAINT'
                          '  "Clicked From" FOREIGN KEY (week, user_id, item_id) REFERENCES candidates_ranked);'
                          ' INSERT INTO "Shop Clicks" SELECT week, user_id, item_id FROM candidates_ranked LIMIT 1')
    before = live_state(conn)
    later = NEXT_WEEK + timedelta(weeks=1)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(later))
    not_rolled_back = run_module(config_file, "rollback")

    refusal = 'candidates_ranked: the foreign key "Clicked From" of "Shop Clicks" references it'
    assert refused.returncode == TASK_FAILED
    assert f"ValueError: {refusal}" in refused.stderr
    assert not_rolled_back.returncode != 0
    assert f"rollback refused: {refusal}" in not_rolled_back.stderr
    assert live_state(conn) == before
    assert not any(catalog.exists(conn.cursor(), staged(table, later)) for table in PUBLISHED_TABLES)
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]
    conn.cursor().execute(re.search(r"\((ALTER TABLE .+?), or have it", refused.stderr)[1])  # as pasted
    assert catalog.referencing_keys(conn.cursor(), "candidates_ranked") == []


@pytest.mark.published_week
def test_a_partition_a_dba_attached_beside_the_weeks_stays_live_through_each_publish_and_rollback(
        config_file, conn, reader):
    """Rows the shop serves whatever the week (pinned by its merchandisers, say) in a partition of
    the DBA's own: each week swaps only the week's table, and may not drop or retype their columns."""
    conn.cursor().execute("CREATE TABLE pinned (LIKE candidates_ranked);"
                          " INSERT INTO pinned SELECT * FROM candidates_ranked LIMIT 1;"
                          " UPDATE pinned SET week = NULL, item_id = -1;"
                          " ALTER TABLE candidates_ranked ATTACH PARTITION pinned DEFAULT")
    weeks_served = "SELECT DISTINCT week FROM candidates_ranked WHERE week IS NOT NULL"

    published = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK))

    assert published.returncode == 0, published.stderr[-2000:]
    assert reader.read("SELECT item_id FROM candidates_ranked WHERE week IS NULL") == [(-1,)]
    assert reader.read(weeks_served) == [(NEXT_WEEK,)]
    assert run_module(config_file, "rollback").returncode == 0
    assert reader.read("SELECT item_id FROM candidates_ranked WHERE week IS NULL") == [(-1,)]
    assert reader.read(weeks_served) == [(WEEK,)]
    columns = catalog.table_columns(conn.cursor(), "candidates_ranked")
    refused = publish.refused_changes(conn.cursor(), "candidates_ranked", {**columns, "cb_score": "text"})
    assert refused == [("cb_score", "the week's 'cb_score' is text, not double precision, and partition pinned "
                                    "uses it in candidates_ranked")]


@pytest.mark.published_week
def test_the_dbas_materialized_views_take_each_week_after_the_swap_and_their_readers_never_wait(
        config_file, conn, reader):
    """A materialized view over a live name keeps the rows it was made of: the web service reading
    it would be served the first week, every week after, and nobody told."""
    dba_materializes_the_top_10(conn, reader)  # service_top
    conn.cursor().execute(f"""
        CREATE VIEW popular_now AS SELECT item_id, items_cnt, week FROM default_recs;
        CREATE MATERIALIZED VIEW popular_top AS SELECT item_id, week FROM popular_now ORDER BY items_cnt DESC
            LIMIT 5;
        CREATE UNIQUE INDEX ON popular_top (item_id);
        CREATE MATERIALIZED VIEW weeks_online AS SELECT DISTINCT week FROM online_recs;
        GRANT SELECT ON popular_top, weeks_online TO {reader.name};""")
    analyst = reader.connect("analyst")
    analyst.cursor().execute("SELECT count(*) FROM service_top")  # held, in an open transaction, throughout

    published = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK))

    assert published.returncode == 0, published.stderr[-2000:]
    analyst.rollback()
    for view in ("service_top", "popular_top"):
        assert reader.read(f"SELECT DISTINCT week FROM {view}") == [(NEXT_WEEK,)], view
    assert reader.read("SELECT week FROM weeks_online") == [(WEEK,)]  # no unique index: left, and named
    assert (f"materialized view weeks_online still holds the rows of before week {NEXT_WEEK}: without a unique "
            "index it cannot be refreshed CONCURRENTLY") in published.stderr
    assert run_module(config_file, "rollback").returncode == 0
    assert reader.read("SELECT DISTINCT week FROM service_top") == [(WEEK,)]
    analyst.close()


def test_a_live_name_a_dba_gave_to_another_role_is_refused_before_anything_is_staged_naming_the_way_back(
        pipeline_role, config_file, conn, pg_socket_dir, database):
    """Only a table's owner may attach and detach its partitions: the swap would fail after the week's work."""
    run_tasks(WeeklyRecs(week=WEEK))
    with admin_connection(pg_socket_dir, database) as dba:
        dba.cursor().execute(f"CREATE ROLE shop_{pipeline_role};"
                             f" ALTER TABLE default_recs OWNER TO shop_{pipeline_role}")
        try:
            before = live_state(dba)
            refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK))

            assert refused.returncode == TASK_FAILED
            assert (f"ValueError: default_recs belongs to role shop_{pipeline_role}, whose rights the pipeline's role "
                    f"{pipeline_role} does not have: it could not put a week live there (ALTER TABLE default_recs "
                    f"OWNER TO {pipeline_role}, or GRANT shop_{pipeline_role} TO {pipeline_role})") in refused.stderr
            assert live_state(dba) == before
            assert not any(catalog.exists(conn.cursor(), staged(table, NEXT_WEEK)) for table in PUBLISHED_TABLES)
        finally:
            dba.cursor().execute(f"ALTER TABLE default_recs OWNER TO {pipeline_role}; DROP ROLE shop_{pipeline_role}")


@pytest.mark.server_since(17, "GRANT MAINTAIN")
def test_a_materialized_view_the_pipelines_role_may_not_refresh_is_named_with_the_grant_that_lets_it(
        pipeline_role, config_file, pg_socket_dir, database):
    run_tasks(WeeklyRecs(week=WEEK))
    views = ("users_ranked", "users_maintained")
    with admin_connection(pg_socket_dir, database) as dba:  # the DBA's views, not the pipeline's role's
        for view in views:
            dba.cursor().execute(f"CREATE MATERIALIZED VIEW {view} AS SELECT DISTINCT week, user_id FROM"
                                 f" candidates_ranked; CREATE UNIQUE INDEX ON {view} (week, user_id)")
        dba.cursor().execute(f"GRANT MAINTAIN ON users_maintained TO {pipeline_role}")
        try:
            published = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK))

            assert published.returncode == 0, published.stderr[-2000:]
            assert query(dba, "SELECT DISTINCT week FROM users_maintained") == [(NEXT_WEEK,)]
            assert query(dba, "SELECT DISTINCT week FROM users_ranked") == [(WEEK,)]
            assert (f"materialized view users_ranked still holds the rows of before week {NEXT_WEEK}: the pipeline's "
                    f"role may not refresh it (GRANT MAINTAIN ON users_ranked TO {pipeline_role}") in published.stderr
        finally:  # before the pipeline's role and its tables go
            dba.cursor().execute(f"DROP MATERIALIZED VIEW {', '.join(views)}")


@pytest.mark.parametrize("tcp_server", [15], indirect=True, ids=["PostgreSQL 15"])
def test_before_postgresql_17_a_materialized_view_the_pipelines_role_may_not_refresh_names_its_owners_role(
        tcp_server, tmp_path, sample_week):
    """Before 17 there is no MAINTAIN to grant: only the view's owner's rights refresh it (15, the oldest
    supported, stands for 16 too: each of three weeks costs a `luigi` of its own)."""
    database, role = f"mv_{uuid.uuid4().hex[:8]}", f"recs_{uuid.uuid4().hex[:8]}"
    superuser = {key: tcp_server[key] for key in ("host", "port", "user", "password")}
    with closing(psycopg2.connect(**superuser, dbname="postgres")) as server:
        server.autocommit = True
        server.cursor().execute(f"CREATE DATABASE {database}")
        server.cursor().execute(f"CREATE ROLE {role} LOGIN PASSWORD '{role}'")
    config = tcp_config(tcp_server, tmp_path, sample_week, user=role, database=database)
    with closing(psycopg2.connect(**superuser, dbname=database)) as dba:
        dba.autocommit = True
        dba.cursor().execute(f"GRANT CREATE ON SCHEMA public TO {role}")
        assert run_luigi(config, "WeeklyRecs", "--local-scheduler", "--week", str(WEEK),
                         env={"PGPASSWORD": role}).returncode == 0
        dba.cursor().execute("CREATE MATERIALIZED VIEW users_ranked AS SELECT DISTINCT week, user_id FROM"
                             " candidates_ranked; CREATE UNIQUE INDEX ON users_ranked (week, user_id)")

        published = run_luigi(config, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK),
                              env={"PGPASSWORD": role})

        assert published.returncode == 0, published.stderr[-2000:]
        assert query(dba, "SELECT DISTINCT week FROM users_ranked") == [(WEEK,)]
        assert (f"materialized view users_ranked still holds the rows of before week {NEXT_WEEK}: the pipeline's role"
                f" may not refresh it (GRANT {tcp_server['user']} TO {role}: before PostgreSQL 17 only its owner's"
                f" rights refresh it; or {tcp_server['user']} refreshes it)") in published.stderr
        dba.cursor().execute(f"GRANT {tcp_server['user']} TO {role}")
        assert run_luigi(config, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK + timedelta(weeks=1)),
                         env={"PGPASSWORD": role}).returncode == 0
        assert query(dba, "SELECT DISTINCT week FROM users_ranked") == [(NEXT_WEEK + timedelta(weeks=1),)]


@pytest.mark.published_week
def test_constraints_the_dba_put_on_a_live_name_hold_for_every_later_week_or_refuse_it(settings, config_file,
                                                                                       conn, reader):
    conn.cursor().execute("ALTER TABLE candidates_ranked ALTER COLUMN user_id SET NOT NULL;"
                          " ALTER TABLE candidates_ranked ADD CONSTRAINT ranked_from_one CHECK (rank >= 1)")

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(NEXT_WEEK,)]
    assert run_module(config_file, "rollback").returncode == 0  # the archive the DBA's change reached, too
    assert reader.read("SELECT DISTINCT week FROM candidates_ranked") == [(WEEK,)]

    conn.cursor().execute("ALTER TABLE candidates_ranked ADD CONSTRAINT until_december CHECK (week < '2026-12-01')")
    before = live_state(conn)
    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(NEXT_WEEK + timedelta(weeks=1)))

    assert refused.returncode == TASK_FAILED
    assert ('check constraint "until_december" of relation "candidates_ranked__staged_20261205" is violated'
            in refused.stderr)
    assert live_state(conn) == before
