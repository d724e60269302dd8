"""Names from configuration cannot run SQL, and secrets never reach the output."""

from __future__ import annotations

import pytest

from tests.conftest import apply_settings, query, run_luigi, tcp_config

INJECTION = 'default_recs"; DROP TABLE table_updates; --'


def test_a_table_name_that_is_not_an_identifier_is_refused_before_any_sql(settings, config_file, conn):
    run_luigi(config_file, "DefaultRecs", "--local-scheduler", "--week", "2026-11-21")
    settings["DefaultRecs"] = {"table": INJECTION}
    apply_settings(settings, config_file)

    result = run_luigi(config_file, "DefaultRecs", "--local-scheduler", "--week", "2026-11-28")

    assert result.returncode != 0
    assert "[DefaultRecs] table: 'default_recs\"; DROP TABLE table_updates; --' is not a valid table name" \
        in result.stderr
    assert query(conn, "SELECT count(*) FROM table_updates") == [(2,)]  # CheckInputs and DefaultRecs


def test_a_table_name_its_weeks_would_take_past_63_characters_is_refused_and_the_longest_allowed_goes_live_whole(
        settings, config_file, conn, reader):
    """PostgreSQL cuts a longer name without an error: the week's tables would lose what tells them apart."""
    settings["RankCandidates"] = {"table": "r" * 40}
    apply_settings(settings, config_file)

    refused = run_luigi(config_file, "RankCandidates", "--local-scheduler", "--week", "2026-11-21")

    assert refused.returncode != 0
    assert f"[RankCandidates] table: '{'r' * 40}' is 40 characters" in refused.stderr and "at most 39" in refused.stderr
    settings["RankCandidates"] = {"table": "r" * 39}
    apply_settings(settings, config_file)
    assert run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-21").returncode == 0
    assert reader.read(f"SELECT count(*) FROM {'r' * 39}") == query(conn, "SELECT count(*) FROM candidates_inference")


def test_a_configured_table_name_is_used_as_given(settings, config_file, conn):
    settings["DefaultRecs"] = {"table": "popular_items"}
    apply_settings(settings, config_file)

    assert run_luigi(config_file, "DefaultRecs", "--local-scheduler", "--week", "2026-11-21").returncode == 0
    assert query(conn, "SELECT count(*) > 0 FROM popular_items__staged_20261121") == [(True,)]


@pytest.mark.parametrize("password_from", ["environment", "config file"])
def test_the_database_password_never_reaches_the_output(tcp_server, tmp_path, input_dir, password_from):
    (input_dir / "similar.parquet").unlink()  # a failing run prints tracebacks: the most to leak from
    in_file = {"password": tcp_server["password"]} if password_from == "config file" else {}
    config = tcp_config(tcp_server, tmp_path, input_dir, **in_file)
    env = {"PGPASSWORD": tcp_server["password"]} if password_from == "environment" else {}

    failed = run_luigi(config, "WeeklyRecs", "--local-scheduler", "--week", "2026-10-03", env=env)
    refused = run_luigi(config, "WeeklyRecs", "--local-scheduler", "--week", "2026-10-03",
                        env={"PGPASSWORD": "wrong-" + tcp_server["password"]} if not in_file else env)

    assert failed.returncode != 0 and "file not found" in failed.stderr
    assert refused.returncode != 0
    for result in (failed, refused):
        assert tcp_server["password"] not in result.stdout + result.stderr
