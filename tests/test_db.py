"""Which server the pipeline uses: the embedded one by default, or a server named in [postgres]."""

from __future__ import annotations

import psycopg2
import pytest

from pipeline import db
from tests.conftest import apply_settings, run_luigi


def test_an_empty_host_starts_the_embedded_server_in_the_configured_folder(settings, tmp_path):
    settings["postgres"].update(host="", database="postgres", embedded_dir=str(tmp_path / "embedded"))
    apply_settings(settings)
    try:
        with db.connection() as conn, conn.cursor() as cur:
            cur.execute("SHOW listen_addresses")
            assert cur.fetchone() == ("",)  # its unix socket only
        assert (tmp_path / "embedded" / "PG_VERSION").read_text().strip() == "18"
        assert db.server().host == str(tmp_path / "embedded")
    finally:
        db.stop_embedded_server()
    assert not (tmp_path / "embedded" / "postmaster.pid").exists()


def test_a_week_runs_against_a_separate_server_over_tcp_with_a_password(tcp_server, tmp_path, sample_week):
    config = tmp_path / "tcp.cfg"
    config.write_text(
        f"[postgres]\nhost = {tcp_server['host']}\nport = {tcp_server['port']}\n"
        f"user = {tcp_server['user']}\ndatabase = postgres\n"
        f"[pipeline]\ninput_dir = {sample_week}\nmodel_dir = {tmp_path / 'models'}\niterations = 30\n")

    result = run_luigi(config, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-21",
                       env={"PGPASSWORD": tcp_server["password"]})

    assert result.returncode == 0, result.stderr[-2000:]
    assert f"PostgreSQL at 127.0.0.1:{tcp_server['port']}" in result.stdout + result.stderr
    assert tcp_server["password"] not in result.stdout + result.stderr
    conn = psycopg2.connect(host=tcp_server["host"], port=tcp_server["port"], user=tcp_server["user"],
                            password=tcp_server["password"], dbname="postgres")
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT user_id) FROM candidates_ranked")
        assert cur.fetchone() == (6000, 300)
    conn.close()


def test_a_wrong_password_is_refused_without_showing_it(tcp_server, settings):
    settings["postgres"].update(host=tcp_server["host"], port=tcp_server["port"], user=tcp_server["user"],
                                password="not-the-password-123")
    apply_settings(settings)

    with pytest.raises(ConnectionError) as refused:
        db.server().connect()

    assert f"127.0.0.1:{tcp_server['port']}" in str(refused.value)
    assert "not-the-password-123" not in str(refused.value)


def test_redact_hides_secrets_and_dsn_passwords():
    text = "postgresql://weekly:s3cret@db:5432/x password=s3cret token 123:abc"

    assert db.redact(text, "123:abc") == "postgresql://weekly:***@db:5432/x password=*** token ***"
