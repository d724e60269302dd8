"""The ranking stage: TrainRanker fits once on a bounded sample of whole users and shares the model
through PostgreSQL; ScoreShard tasks score the week's users in shards; the ranking goes live with
the week, its metrics with it."""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import (
    DefaultRecs,
    InferenceCandidates,
    RankCandidates,
    TrainCandidates,
    WeeklyRecs,
    config,
    publish,
    ranker,
    training,
)
from pipeline import rank as ranking_stage
from pipeline.rank import QualityGateError, TrainRanker
from pipeline.ranker import Ranker, candidates_ranked, whole_users
from pipeline.validation import held_out
from tests.conftest import (
    NEXT_WEEK,
    PUBLISHED_TABLES,
    TASK_FAILED,
    WEEK,
    apply_settings,
    live_state,
    query,
    run_luigi,
    run_tasks,
    set_for_the_database,
    staged,
)


def test_ranks_are_one_to_n_per_user_in_score_order(settings, conn):
    assert run_tasks(RankCandidates(week=WEEK)).name == "SUCCESS"

    rows = query(conn, f"SELECT user_id, rank, cb_score FROM {staged('candidates_ranked')} ORDER BY user_id, rank")
    by_user: dict[int, list[tuple[int, float]]] = {}
    for user, rank, score in rows:
        by_user.setdefault(user, []).append((rank, score))
    assert len(by_user) == 300
    for ranked in by_user.values():
        assert [rank for rank, _ in ranked] == list(range(1, len(ranked) + 1))
        scores = [score for _, score in ranked]
        assert scores == sorted(scores, reverse=True)


def test_the_shards_rows_are_staged_whole_and_the_table_of_their_own_writes_is_gone(settings, conn):
    """Written again by `COPY ... FREEZE` in the stage's transaction, so that a snapshot older than
    the week sees them (`test_publish`), into a table that takes the staged ranking's name."""
    assert run_tasks(RankCandidates(week=WEEK)).name == "SUCCESS"

    ranking_tables = query(conn, "SELECT tablename FROM pg_tables WHERE tablename LIKE 'candidates\\_ranked\\_\\_%'")
    assert ranking_tables == [(staged("candidates_ranked"),)]
    assert query(conn, f"SELECT count(*) FROM {staged('candidates_ranked')}") == \
        query(conn, f"SELECT count(*) FROM {staged('candidates_inference')}")


def test_a_week_whose_shards_the_version_before_scored_is_staged_from_them_after_an_upgrade(settings, conn):
    """That version wrote the shards' rows to a logged table and marked them in Luigi's own table of
    markers: scored again, they would be there twice."""
    ranking = RankCandidates(week=WEEK)
    assert run_tasks(*ranking.shards(ranking.shard_count())).name == "SUCCESS"
    scored = query(conn, f"SELECT count(*) FROM {staged(ranking.table)}")[0][0]
    conn.cursor().execute(f"ALTER TABLE {staged(ranking.table)} SET LOGGED;"
                          " INSERT INTO table_updates SELECT * FROM table_updates_unlogged;"
                          " DELETE FROM table_updates_unlogged")

    assert run_tasks(ranking).name == "SUCCESS"

    assert query(conn, f"SELECT count(*), count(DISTINCT (user_id, item_id)) FROM {staged(ranking.table)}") == [
        (scored, scored)]


@pytest.mark.published_week
def test_ranked_table_holds_every_inference_candidate_with_its_columns(settings, conn):
    assert query(conn, "SELECT count(*) FROM candidates_ranked") == \
        query(conn, "SELECT count(*) FROM candidates_inference")
    columns = [c for (c,) in query(conn, "SELECT column_name FROM information_schema.columns"
                                   " WHERE table_name = 'candidates_ranked' ORDER BY ordinal_position")]
    assert columns == ["user_id", "item_id", "als_score", "category_id", "parent_id", "available",
                       "week", "cb_score", "rank"]


def test_the_model_is_saved_under_the_weeks_folder_and_in_the_database(settings, conn, tmp_path):
    run_tasks(RankCandidates(week=WEEK))

    saved = (tmp_path / "models" / WEEK.isoformat() / "model.cbm").read_bytes()
    assert len(saved) > 0
    assert query(conn, "SELECT model FROM ranker_models WHERE week = %s", WEEK)[0][0].tobytes() == saved


def test_another_run_of_the_week_writing_its_model_file_meanwhile_never_reaches_the_stored_model(
        settings, conn, tmp_path, monkeypatch):
    """Two runs of a week (two cron firings, two workers) fit at once, each then writing the week's
    model file; one of them stores its model for the shards."""
    kept = tmp_path / "models" / WEEK.isoformat() / "model.cbm"
    fit = training.FreshProcesses.run

    def fitted_while_the_other_run_writes_the_file(self, function, *args):
        result = fit(self, function, *args)
        if function is training.fitted:
            kept.write_bytes(b"the first bytes of the other run's model")
        return result
    monkeypatch.setattr(training.FreshProcesses, "run", fitted_while_the_other_run_writes_the_file)

    assert run_tasks(RankCandidates(week=WEEK)).name == "SUCCESS"

    stored = query(conn, "SELECT model FROM ranker_models WHERE week = %s", WEEK)[0][0].tobytes()
    assert stored == kept.read_bytes() != b"the first bytes of the other run's model"


@pytest.mark.published_week
def test_the_model_puts_more_of_what_users_take_in_its_top_5_than_the_als_order_or_chance(settings, conn,
                                                                                           sample_week):
    """The sample generator knows what its inference users go on to take (`truth.parquet`): the
    week's ranking is measured against that, not against itself."""
    truth = pq.read_table(sample_week.parent / "truth.parquet").to_pandas().set_index(["user_id", "item_id"])
    ranked = query(conn, "SELECT user_id, item_id, rank, row_number() OVER (PARTITION BY user_id"
                         " ORDER BY als_score DESC, item_id) FROM candidates_ranked")
    taken = {(user, item): truth.loc[(user, item), "target"] for user, item, _, _ in ranked}

    model_top5 = sum(taken[(u, i)] for u, i, rank, _ in ranked if rank <= 5)
    als_top5 = sum(taken[(u, i)] for u, i, _, als_rank in ranked if als_rank <= 5)
    chance_top5 = truth["target"].sum() * 5 / 20
    assert model_top5 > 1.1 * als_top5 and model_top5 > 1.3 * chance_top5, (model_top5, als_top5, chance_top5)


def test_one_shard_and_four_shards_publish_the_same_ranking(settings, conn):
    settings["pipeline"]["shards"] = "1"
    apply_settings(settings)
    run_tasks(WeeklyRecs(week=WEEK))
    settings["pipeline"]["shards"] = "4"
    apply_settings(settings)

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "SUCCESS"

    ranking = "SELECT user_id, item_id, cb_score, rank FROM {} ORDER BY user_id, item_id"
    one_shard = query(conn, ranking.format("candidates_ranked__20261121"))
    assert len(one_shard) == 6000
    assert query(conn, ranking.format("candidates_ranked")) == one_shard
    shard_markers = query(conn, "SELECT update_id FROM table_updates_unlogged WHERE update_id LIKE 'ScoreShard%%'")
    assert sorted(m[:16] for (m,) in shard_markers) == ["ScoreShard_0_1_2", *(f"ScoreShard_{k}_4_2" for k in range(4))]


def test_a_week_whose_learning_users_fill_max_train_rows_is_fitted_once_and_the_validated_model_goes_live(
        settings, conn, input_dir):
    """6,000 train rows, a cap of 2,010: the sample is 2,010 rows of learning users and the held-out
    users' share beside them. A second fit on the whole sample would learn from no more rows, so the
    model the gate validated is the one stored, and it ranks the held-out users as the gate saw."""
    settings["pipeline"]["max_train_rows"] = "2010"
    apply_settings(settings)

    run_tasks(WeeklyRecs(week=WEEK))

    ((trained, available, fits, validated_ndcg),) = query(
        conn, "SELECT train_rows, available_rows, fits, ndcg_at_10 FROM model_metrics")
    assert (available, fits) == (6000, 1)
    assert 2010 - 20 < trained <= 2010 and trained % 20 == 0  # every sample user keeps all 20 candidates
    stored = Ranker.from_settings(config.pipeline(), pd.read_parquet(input_dir / "top_popular.parquet"))
    with conn.cursor() as cur:
        model, _ = ranking_stage.load_model(cur, TrainRanker(week=WEEK).table, WEEK, stored)
        train_table = publish.week_table(cur, TrainCandidates(week=WEEK).table, WEEK)
    sampled = np.array(ranking_stage.sampled_users(conn, train_table, available))
    held = sampled[held_out(sampled, 42, 0.2)]
    rows = pd.read_parquet(input_dir / "candidates_train.parquet")
    test = stored.prepared(rows[rows["user_id"].isin(held)],
                           ranking_stage.item_stats(conn, train_table).to_pandas().set_index("item_id"))
    assert 2010 // 5 - 20 < len(test) <= 2010 // 4  # the held-out users' share of the sample
    assert stored.validation(model, test)["ndcg_at_10"] == pytest.approx(validated_ndcg)


def test_a_week_a_little_over_max_train_rows_is_validated_then_fitted_again_on_the_whole_sample(settings, conn):
    """6,000 rows and a cap of 5,000: the learning users alone do not fill the cap, so the model that
    goes live learns from the whole sample, held-out users too."""
    settings["pipeline"]["max_train_rows"] = "5000"
    apply_settings(settings)

    run_tasks(WeeklyRecs(week=WEEK))

    ((trained, available, fits),) = query(conn, "SELECT train_rows, available_rows, fits FROM model_metrics")
    assert (available, fits) == (6000, 2)
    assert 5000 - 20 < trained <= 5000 and trained % 20 == 0


def test_ties_are_broken_by_item_id():
    candidates = pa.table({"user_id": [1, 1, 1, 2], "item_id": [30, 10, 20, 5]})

    ranked = candidates_ranked(candidates, np.array([0.5, 0.5, 0.9, 0.1]))

    assert ranked.column("item_id").to_pylist() == [20, 10, 30, 5]
    assert ranked.column("rank").to_pylist() == [1, 2, 3, 1]


def test_scoring_batches_never_split_a_user():
    users = np.repeat(np.arange(50), np.arange(1, 51))
    batches = pa.table({"user_id": users}).to_batches(max_chunksize=37)

    tables = list(whole_users(iter(batches), rows=100))

    assert sum(t.num_rows for t in tables) == len(users)
    firsts = [t.column("user_id")[0].as_py() for t in tables[1:]]
    lasts = [t.column("user_id")[-1].as_py() for t in tables[:-1]]
    assert all(first != last for first, last in zip(firsts, lasts, strict=True)) and len(tables) > 5


def test_each_published_week_has_a_metrics_row(settings, conn):
    run_tasks(WeeklyRecs(week=WEEK), WeeklyRecs(week=NEXT_WEEK))

    rows = query(conn, "SELECT week, model_type, train_rows, fits, positives > 0, ndcg_at_10 BETWEEN 0 AND 1,"
                       " als_ndcg_at_10 BETWEEN 0 AND 1, duration_s > 0 FROM model_metrics ORDER BY week")
    assert rows == [(WEEK, "CatBoostRanker", 6000, 2, True, True, True, True),
                    (NEXT_WEEK, "CatBoostRanker", 6000, 2, True, True, True, True)]


def test_a_dbas_idle_in_transaction_timeout_never_ends_the_ranking_while_it_reads(settings, database,
                                                                                 pg_socket_dir, conn, monkeypatch):
    """A shop's DBA ends sessions left idle in a transaction (`idle_in_transaction_session_timeout`),
    and a shop's reads take seconds: the ranking reads through the driver's connections while its own
    waits, so its own holds no transaction open meanwhile."""
    run_tasks(TrainCandidates(week=WEEK), InferenceCandidates(week=WEEK), DefaultRecs(week=WEEK))
    set_for_the_database(pg_socket_dir, database, idle_in_transaction_session_timeout="1s")
    read_at_a_shops_size = ranking_stage.item_stats

    def slow_item_stats(*args):
        time.sleep(2)
        return read_at_a_shops_size(*args)
    monkeypatch.setattr(ranking_stage, "item_stats", slow_item_stats)

    assert run_tasks(RankCandidates(week=WEEK)).name == "SUCCESS"

    assert query(conn, f"SELECT count(*) FROM {staged('candidates_ranked')}") == [(6000,)]


@pytest.mark.server_since(17, "transaction_timeout")
def test_a_dbas_transaction_timeout_never_ends_a_shard_that_scores_for_longer(settings, database, pg_socket_dir,
                                                                             conn, monkeypatch):
    """PostgreSQL 17's `transaction_timeout` ends any session whose transaction lasts longer; a shop's
    shard scores for minutes inside the `COPY` that writes it."""
    run_tasks(TrainRanker(week=WEEK))
    set_for_the_database(pg_socket_dir, database, transaction_timeout="1s")
    scored_at_a_shops_pace = ranker.ranked_batches

    def slow_ranked_batches(*args):
        time.sleep(2)
        yield from scored_at_a_shops_pace(*args)
    monkeypatch.setattr(ranker, "ranked_batches", slow_ranked_batches)

    assert run_tasks(RankCandidates(week=WEEK)).name == "SUCCESS"

    assert query(conn, f"SELECT count(*) FROM {staged('candidates_ranked')}") == [(6000,)]


def als_score_that_knows_the_target(input_dir):
    """A week whose als_score is nearly the label, while the ranker is configured not to see it."""
    table = pq.read_table(input_dir / "candidates_train.parquet")
    target = table.column("target").to_numpy().astype("float32")
    noisy = target + np.random.default_rng(0).random(len(target), dtype=np.float32) * 0.1
    pq.write_table(table.set_column(table.schema.get_field_index("als_score"), "als_score", pa.array(noisy)),
                   input_dir / "candidates_train.parquet")


@pytest.mark.published_week
def test_a_week_ranking_worse_than_the_als_order_is_refused_and_nothing_of_it_goes_live(settings, config_file,
                                                                                         input_dir, conn):
    before = live_state(conn)
    als_score_that_knows_the_target(input_dir)
    settings["pipeline"].update(features='["category_id", "parent_id", "available"]', derived_features="[]")
    apply_settings(settings, config_file)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-28")

    assert refused.returncode == TASK_FAILED
    assert re.search(r"QualityGateError: week 2026-11-28: validation NDCG@10 0\.\d{4} is below the als_score "
                     r"order's (0\.9\d{3}|1\.0000) by more than 0\.\d{4} "
                     r"\(max_ndcg_drop 0\.02, 2\.0 x its standard error",
                     refused.stderr)
    assert "staged" in refused.stderr  # the loads of the week did run: they stay staged, not live
    assert live_state(conn) == before

    forced = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", "2026-11-28",
                       "--TrainRanker-force-publish")
    assert forced.returncode == 0
    assert "running   DefaultRecs" not in forced.stderr  # only what was missing is redone
    for table in PUBLISHED_TABLES:
        assert query(conn, f"SELECT DISTINCT week FROM {table}") == [(NEXT_WEEK,)]


@pytest.mark.published_week
def test_a_week_worse_than_the_last_published_one_is_refused(settings, input_dir, conn):
    table = pq.read_table(input_dir / "candidates_train.parquet")
    shuffled = np.random.default_rng(1).permutation(table.column("target").to_numpy())
    pq.write_table(table.set_column(table.schema.get_field_index("target"), "target", pa.array(shuffled)),
                   input_dir / "candidates_train.parquet")

    assert run_tasks(WeeklyRecs(week=NEXT_WEEK)).name == "FAILED"

    for table in PUBLISHED_TABLES:
        assert query(conn, f"SELECT DISTINCT week FROM {table}") == [(WEEK,)]


def validation(ndcg: float, ndcg_se: float, als: float = 0.1, vs_als_se: float = 0.01) -> dict:
    return {"ndcg_at_10": ndcg, "ndcg_se": ndcg_se, "als_ndcg_at_10": als, "ndcg_vs_als_se": vs_als_se}


def test_the_gate_lets_a_drop_within_the_validations_own_noise_through(settings):
    gate = TrainRanker(week=NEXT_WEEK)
    gate.check_quality(validation(0.25, ndcg_se=0.03), previous=(0.30, 0.03))  # 0.05 < 2 x 0.042


def test_the_gate_refuses_a_drop_beyond_its_noise_and_says_by_how_much(settings):
    gate = TrainRanker(week=NEXT_WEEK)
    with pytest.raises(QualityGateError, match=r"validation NDCG@10 0\.2500 is below the last published week's "
                                               r"0\.3000 by more than 0\.0200 \(max_ndcg_drop 0\.02, 2\.0 x its "
                                               r"standard error 0\.0071\)"):
        gate.check_quality(validation(0.25, ndcg_se=0.005), previous=(0.30, 0.005))


def test_the_gate_compares_with_the_als_order_by_their_paired_difference(settings):
    gate = TrainRanker(week=NEXT_WEEK)
    gate.check_quality(validation(0.20, ndcg_se=0.001, als=0.26, vs_als_se=0.04), previous=None)
    with pytest.raises(QualityGateError, match=r"below the als_score order's 0\.2600"):
        gate.check_quality(validation(0.20, ndcg_se=0.04, als=0.26, vs_als_se=0.01), previous=None)
