"""The walk-forward backtest: every week replayed on a database of its own, scored by the week after it."""

from __future__ import annotations

import math
import uuid
from datetime import date, timedelta

import pandas as pd
import pyarrow as pa
import pytest

from pipeline import config, db
from pipeline.evaluation import backtest
from pipeline.evaluation.backtest import use_backtest_database
from tests.conftest import WEEK, admin_connection, apply_settings, query, run_module
from tests.evaluation.test_movielens import DATASET, needs_movielens
from tests.events.test_tasks import most_weighted_available, with_extra_events

WEEKS = ("1998-04-04", "1998-04-11", "1998-04-11")  # first, first scored, last


def test_the_backtest_refuses_the_production_database(settings, tmp_path):
    with pytest.raises(ValueError, match=r"--database .* is the production database"):
        use_backtest_database(settings["postgres"]["database"], tmp_path)


def test_a_week_the_gate_refuses_is_scored_by_the_ranking_users_still_see(events_settings, tmp_path,  # noqa: F811
                                                                          pg_socket_dir):
    before = WEEK - timedelta(weeks=1)
    use_backtest_database(f"backtest_{uuid.uuid4().hex[:8]}", tmp_path / "backtest")
    assert backtest.replay(before)
    config.override("pipeline", {"max_ndcg_drop": "-1", "gate_sigmas": "-100"})  # every week refused

    assert not backtest.replay(WEEK)

    with db.connection() as live:
        assert query(live, "SELECT DISTINCT week FROM candidates_ranked") == [(before,)]
    returning, newcomers = backtest.user_weeks(WEEK)
    assert len(returning) > 50 and returning["ranking_ndcg"].mean() > 0  # last week's ranking, as users see it
    assert newcomers.empty and backtest.pooled_newcomers(newcomers)["newcomer_weeks"] == 0  # all arrived early


def test_a_newcomer_is_scored_by_the_default_recs_the_web_service_serves_them(events_settings, shop,  # noqa: F811
                                                                              tmp_path, pg_socket_dir):
    """One newcomer takes the first of the default_recs, the other the eleventh, out of the ten served."""
    default_order = most_weighted_available(shop, config.events().default_days)["item_id"].tolist()
    newcomers = [9_000_001, 9_000_004]
    with_extra_events(shop, tmp_path / "newcomers", events_settings, user_id=pa.array(newcomers, pa.int64()),
                      item_id=pa.array([default_order[0], default_order[10]], pa.int64()),
                      timestamp=pa.array([config.events().cutoff_of(WEEK) + timedelta(hours=1)] * 2,
                                         pa.timestamp("s", "UTC")), event=pa.array(["view"] * 2))
    use_backtest_database(f"backtest_{uuid.uuid4().hex[:8]}", tmp_path / "backtest")
    assert backtest.replay(WEEK)

    returning, new = backtest.user_weeks(WEEK)

    assert new["user_id"].tolist() == newcomers and not returning["user_id"].isin(newcomers).any()
    assert new["default_ndcg"].tolist() == [1.0, 0.0]
    assert backtest.pooled_newcomers(new)["newcomer_default_ndcg"] == 0.5


@pytest.mark.filterwarnings("error")
def test_newcomers_whom_popularity_served_nothing_have_no_ratio_and_no_warning():
    newcomers = pd.DataFrame({"default_ndcg": [1.0, 0.0], "popularity_ndcg": [0.0, 0.0]})
    figures = backtest.pooled_newcomers(newcomers)
    assert figures["newcomer_default_ndcg"] == 0.5
    assert all(math.isnan(figures[name]) for name in ("newcomer_ratio", "newcomer_ratio_low", "newcomer_ratio_high"))


def test_a_week_that_fails_for_another_reason_stops_the_backtest(events_settings, tmp_path):  # noqa: F811
    use_backtest_database(f"backtest_{uuid.uuid4().hex[:8]}", tmp_path / "backtest")
    config.override("events", {"items_path": str(tmp_path / "missing.parquet")})

    with pytest.raises(RuntimeError, match=r"week 2026-11-21 failed .* the backtest stops"):
        backtest.replay(WEEK)


def test_over_seeds_each_seed_runs_in_a_database_of_its_own_and_the_report_gives_their_range(
        events_settings, tmp_path, pg_socket_dir, capsys):
    before, base = WEEK - timedelta(weeks=1), f"backtest_{uuid.uuid4().hex[:8]}"

    results = backtest.run_over_seeds([1, 2], before, WEEK, base, tmp_path / "backtest", scored_from=WEEK)

    report = capsys.readouterr().out.split("over 2 seeds, the weeks chosen on:")[1]
    scored = {seed: result["scored"] for seed, result in results.items()}
    assert scored[1]["pool_recall"] != scored[2]["pool_recall"]  # the seed reached ALS
    for seed, figures in scored.items():
        with admin_connection(pg_socket_dir, f"{base}_seed{seed}") as its_database:
            (settings, pool_recall), = query(its_database, "SELECT settings, pool_recall FROM backtest_runs")
        assert settings["pipeline"]["random_seed"] == str(seed) and pool_recall == figures["pool_recall"]
        assert f"seed {seed:<6} {figures['ratio']:.2f} [" in report and f"{figures['pool_recall']:.3f}" in report
        assert (tmp_path / "backtest" / f"seed{seed}" / "ndcg_by_week.png").exists()
    pools = sorted(figures["pool_recall"] for figures in scored.values())
    assert f"pool recall {pools[0]:.3f} to {pools[1]:.3f}" in report.split("the weeks scored:")[1]


@needs_movielens
def test_movielens_weeks_are_replayed_scored_recorded_and_drawn(settings, tmp_path, conn, pg_socket_dir):
    settings["events"] = {"train_weeks": "4"}
    apply_settings(settings, tmp_path / "luigi.cfg")

    done = run_module(tmp_path / "luigi.cfg", "evaluation.movielens", "backtest", str(DATASET),
                      str(tmp_path / "backtest"), *WEEKS, timeout=600)

    assert done.returncode == 0, done.stderr[-3000:]
    for week in WEEKS:
        assert f"week {week}: published" in done.stdout
    assert "user-weeks of the weeks chosen on:" in done.stdout and "user-weeks of the weeks scored:" in done.stdout
    assert "95% user-week bootstrap" in done.stdout and "by source: als " in done.stdout
    assert "newcomers (no event before the cutoff;" in done.stdout
    assert (tmp_path / "backtest" / "ndcg_by_week.png").read_bytes()[:4] == b"\x89PNG"
    assert query(conn, "SELECT to_regclass('candidates_ranked')") == [(None,)]  # production untouched
    with admin_connection(pg_socket_dir, "weekly_recs_movielens") as backtest:
        weeks = query(backtest, "SELECT week, scored, users, ranking_ndcg, popularity_ndcg, als_ndcg, pool_recall,"
                                " greatest(pool_recall_als, pool_recall_popular, pool_recall_cooccurrence,"
                                " pool_recall_category) FROM backtest_weeks ORDER BY week")
        (ratio, user_weeks, scored_from, pool_low, pool_high, newcomer_weeks, newcomer_ndcg), = query(
            backtest, "SELECT ratio, user_weeks, scored_from, pool_recall_low, pool_recall_high, newcomer_weeks,"
                      " newcomer_default_ndcg FROM backtest_runs")
        newcomers = query(backtest, "SELECT newcomers FROM backtest_weeks ORDER BY week")
        (settings,), = query(backtest, "SELECT settings FROM backtest_runs")
    assert [row[:2] for row in weeks] == [(date(1998, 4, 4), 0), (date(1998, 4, 11), 1)]
    for _, _, users, *scores, pool_recall, best_source in weeks:
        assert users >= 30 and all(0 < score < 1 for score in scores)
        assert pool_recall > 0.3 and 0 < best_source < pool_recall  # the union holds more than any one source
    assert ratio > 0 and user_weeks == weeks[1][2] and scored_from == date(1998, 4, 11)  # the scored week alone
    assert pool_low < weeks[1][6] < pool_high
    assert newcomer_weeks == newcomers[1][0] > 0 and 0 < newcomer_ndcg < 1  # MovieLens users arrive every week
    assert settings["events"]["train_weeks"] == "4" and settings["events"]["cutoff"] == "00:00"  # what it ran with
    assert settings["pipeline"]["random_seed"] == "42" and settings["pipeline"]["source"] == "events"
