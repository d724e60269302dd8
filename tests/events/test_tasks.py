"""The events stage's tasks: the week's four files made at its cutoff, past weeks' outcomes as train rows,
and a whole week from events to the five tables."""

from __future__ import annotations

import importlib.metadata
import math
import re
from datetime import date, timedelta
from pathlib import Path

import luigi
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline import config
from pipeline.contracts import CANDIDATES_INFERENCE, CANDIDATES_TRAIN, SIMILAR, TOP_POPULAR
from pipeline.events import tasks
from pipeline.events.candidates import FEATURES, SOURCES
from pipeline.events.inputs import read_items, read_window
from pipeline.events.tasks import CandidatesAtCutoff, CandidateShard, CutoffModel, TrainFromOutcomes
from pipeline.validation import held_out
from pipeline.wrapper import WeeklyRecs
from tests.conftest import (
    CUTOFF,
    PUBLISHED_TABLES,
    TASK_FAILED,
    TELEGRAM_ENV,
    WEEK,
    admin_connection,
    apply_settings,
    live_state,
    query,
    run_luigi,
    run_tasks,
)
from tests.events.test_inputs import events_file


def week_file(name: str, week: date = WEEK) -> pa.Table:
    return pq.read_table(config.pipeline().week_input_dir(week) / name)


def shop_events_and(shop: Path, folder: Path, **columns) -> Path:
    """`folder`, holding the shop's events and one more file of them (`events_file`'s, with `columns`)."""
    folder.mkdir()
    for file in (shop / "events").iterdir():
        (folder / file.name).symlink_to(file)
    events_file(folder / "extra.parquet", **columns)
    return folder


def with_extra_events(shop: Path, folder: Path, settings: dict, **columns) -> None:
    """The shop's events plus one more file, as the events the pipeline reads from now on, its
    files made afresh in another folder."""
    settings["events"]["events_path"] = str(shop_events_and(shop, folder, **columns))
    settings["pipeline"]["input_dir"] = str(folder.parent / f"{folder.name}-weeks" / "{week}")
    apply_settings(settings)


def most_weighted_available(shop: Path, days: int) -> pd.DataFrame:
    """The shop's available items by event weight in the `days` days before CUTOFF, heaviest first."""
    window = read_window(shop / "events", CUTOFF - timedelta(days=days), CUTOFF, config.events().weights)
    items = read_items(shop / "items.parquet")
    weight = pd.Series(window.weight).groupby(window.item_id).sum()
    weight = weight[weight.index.isin(items.loc[items["available"] > 0, "item_id"])].rename_axis("item_id")
    return weight.reset_index(name="items_cnt").sort_values(["items_cnt", "item_id"], ascending=[False, True])


def test_a_bad_events_file_fails_the_week_and_what_is_live_stays(events_settings, shop, tmp_path, conn):
    assert run_tasks(WeeklyRecs(week=WEEK - timedelta(weeks=1))).name == "SUCCESS"
    before = live_state(conn)
    with_extra_events(shop, tmp_path / "bad", events_settings, item_id=pa.array([7, None, 21], pa.int64()))

    assert run_tasks(WeeklyRecs(week=WEEK)).name == "FAILED"
    assert live_state(conn) == before


def test_events_after_the_cutoff_change_nothing_of_the_week(events_settings, shop, tmp_path):
    arrived_since = [CUTOFF + timedelta(minutes=m) for m in (0, 1, 2)]
    assert_the_week_ignores(shop, tmp_path / "later", events_settings, arrived_since)


def test_events_older_than_the_history_window_change_nothing_of_the_week(events_settings, shop, tmp_path):
    events_settings["events"]["history_days"] = "21"
    apply_settings(events_settings)
    long_ago = [CUTOFF - timedelta(days=d) for d in (22, 60, 400)]
    assert_the_week_ignores(shop, tmp_path / "old", events_settings, long_ago)


def assert_the_week_ignores(shop: Path, folder: Path, settings: dict, timestamps: list) -> None:
    """The week's files made again with three more events at `timestamps` are the same."""
    assert run_tasks(CandidatesAtCutoff(week=WEEK)).name == "SUCCESS"
    before = {name: week_file(name) for name in CandidatesAtCutoff(week=WEEK).output()}

    with_extra_events(shop, folder, settings, user_id=pa.array([1000, 1003, 1006], pa.int64()),
                      timestamp=pa.array(timestamps, pa.timestamp("s", "UTC")))
    assert run_tasks(CandidatesAtCutoff(week=WEEK)).name == "SUCCESS"

    for name, table in before.items():
        assert week_file(name).equals(table), name


def test_no_event_of_the_label_window_reaches_the_train_features(events_settings, shop, tmp_path):
    """A burst of purchases of one item right after a train cutoff labels rows, and moves no feature."""
    assert run_tasks(TrainFromOutcomes(week=WEEK)).name == "SUCCESS"
    before = week_file(CANDIDATES_TRAIN.file).to_pandas()
    last_week = WEEK - timedelta(weeks=1)
    burst_item = int(before.loc[before["outcome_week"] == last_week, "item_id"].mode()[0])
    buyers = before.loc[(before["outcome_week"] == last_week) & (before["item_id"] == burst_item)
                        & (before["target"] == 0), "user_id"].unique()

    after_cutoff = config.events().cutoff_of(last_week) + timedelta(hours=1)
    with_extra_events(shop, tmp_path / "burst", events_settings, user_id=pa.array(buyers, pa.int64()),
                      item_id=pa.array([burst_item] * len(buyers), pa.int64()),
                      timestamp=pa.array([after_cutoff] * len(buyers), pa.timestamp("s", "UTC")),
                      event=pa.array(["transaction"] * len(buyers)))
    assert run_tasks(TrainFromOutcomes(week=WEEK)).name == "SUCCESS"
    after = week_file(CANDIDATES_TRAIN.file).to_pandas()

    both = before.merge(after, on=["outcome_week", "user_id", "item_id"], suffixes=("_before", "_after"))
    labelled = both[(both["item_id"] == burst_item) & (both["outcome_week"] == last_week)]
    assert len(buyers) > 0 and (labelled["target_after"] == 1).all()  # the burst was seen, as labels
    for feature in FEATURES:
        assert both[f"{feature}_before"].equals(both[f"{feature}_after"]), feature


def test_the_default_recs_are_the_most_weighted_available_items_of_the_last_default_days(events_settings, shop):
    """What the web service serves users without candidates: a window of its own, not recent popularity's."""
    events_settings["events"]["default_days"] = "14"
    apply_settings(events_settings)
    assert run_tasks(CandidatesAtCutoff(week=WEEK)).name == "SUCCESS"

    expected = most_weighted_available(shop, days=14)
    published = week_file(TOP_POPULAR.file).to_pandas()
    assert len(published) == config.events().top_popular
    assert published["item_id"].tolist() == expected["item_id"].head(len(published)).tolist()
    assert published["items_cnt"].tolist() == pytest.approx(expected["items_cnt"].head(len(published)).tolist())


def test_a_week_whose_cutoff_has_not_come_is_refused(events_settings):
    future = date.today() + timedelta(days=14)
    task = CandidatesAtCutoff(week=future)
    with pytest.raises(ValueError, match=r"events up to .* UTC are needed, and that time has not come yet: it is "
                                         r"\d{4}-\d\d-\d\d \d\d:\d\d UTC \(\[events\] cutoff, label_days; the cutoff "
                                         r"is in UTC and cron fires in the host's time zone"):
        task.events_until(None, config.events().cutoff_of(task.week))


# A whole week


def test_a_week_runs_from_events_to_the_five_tables(events_settings, conn):
    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"

    for table in PUBLISHED_TABLES:
        assert query(conn, f"SELECT DISTINCT week FROM {table}") == [(WEEK,)]
    inference = week_file("candidates_inference.parquet")
    assert query(conn, "SELECT count(*) FROM candidates_ranked") == [(inference.num_rows,)]
    per_user = query(conn, "SELECT max(n) FROM (SELECT count(*) n FROM candidates_inference GROUP BY user_id) c")
    assert per_user == [(30,)]
    train_weeks = query(conn, "SELECT DISTINCT outcome_week FROM candidates_train ORDER BY 1")
    assert train_weeks == [(WEEK - timedelta(weeks=2),), (WEEK - timedelta(weeks=1),)]
    taken_again = ("SELECT count(*) FROM candidates_inference i JOIN candidates_train t ON t.user_id = i.user_id"
                   " AND t.item_id = i.item_id AND t.target = 1 AND t.outcome_week = %s")
    seen_bit = 1 << SOURCES.index("seen")
    # what a user took last week is history now: a candidate again only where the seen source lists it
    assert query(conn, taken_again + f" AND i.sources & {seen_bit} = 0", WEEK - timedelta(weeks=1)) == [(0,)]
    assert query(conn, taken_again, WEEK - timedelta(weeks=1)) != [(0,)]  # this shop's users come back to things


def test_the_train_file_holds_max_train_rows_of_learning_users_beside_the_held_out_share_and_the_metrics_say_so(
        events_settings, conn):
    """More outcome rows than a fit on learning users fills: the ranker fits once, on the file's
    learning users, and validates on its held-out users (a fifth of the file)."""
    events_settings["pipeline"]["max_train_rows"] = "6000"
    apply_settings(events_settings)

    assert run_tasks(WeeklyRecs(week=WEEK)).name == "SUCCESS"

    outcomes = sum(week_file("outcomes.parquet", WEEK - timedelta(weeks=k)).num_rows for k in (1, 2))
    train = week_file("candidates_train.parquet")
    held = held_out(train.column("user_id").to_numpy(), config.pipeline().random_seed, 0.2)
    learning = int((~held).sum())
    assert 6000 - 30 < learning <= 6000 < outcomes and 1500 - 30 < held.sum() <= 1500
    assert query(conn, "SELECT count(*) FROM candidates_train") == [(train.num_rows,)]
    assert query(conn, "SELECT available_rows, train_rows, fits FROM model_metrics") == [(outcomes, learning, 1)]


def test_source_events_alone_gives_the_ranker_every_feature_the_stage_computes(settings):
    settings["pipeline"]["source"] = "events"  # and no feature listed: luigi.cfg and events.cfg list none
    apply_settings(settings)

    chosen = config.pipeline().ranker_features()

    assert chosen.features == FEATURES
    assert chosen.derived_features == ("popularity_rank", "als_gap", "item_frequency", "item_mean_als",
                                       "category_share")
    assert config.pipeline(features=["als_score"]).ranker_features().features == ("als_score",)  # listed: kept


def test_candidates_made_in_one_and_in_four_shards_are_the_same_row_for_row(events_settings, tmp_path):
    assert run_tasks(CandidatesAtCutoff(week=WEEK)).name == "SUCCESS"  # 50,000 users a shard: one shard
    one_shard = week_file(CANDIDATES_INFERENCE.file)
    users = len(pc.unique(one_shard.column("user_id")))

    events_settings["events"]["users_per_shard"] = str(math.ceil(users / 4))
    events_settings["pipeline"]["input_dir"] = str(tmp_path / "sharded" / "{week}")
    apply_settings(events_settings)
    result = luigi.build([CandidatesAtCutoff(week=WEEK)], local_scheduler=True, detailed_summary=True, workers=1)

    assert re.search(r"4 CandidateShard\(.*shards=4\)", result.summary_text), result.summary_text
    assert week_file(CANDIDATES_INFERENCE.file).equals(one_shard)
    folder = config.pipeline().week_input_dir(WEEK)
    assert sorted(path.name for path in folder.iterdir()) == sorted(  # the fit and the shards' files are gone
        [CANDIDATES_INFERENCE.file, SIMILAR.file, TOP_POPULAR.file])


def test_an_upgrade_installed_while_a_week_runs_leaves_the_running_week_its_fit(events_settings, monkeypatch):
    assert run_tasks(CutoffModel(week=WEEK)).name == "SUCCESS"
    monkeypatch.setattr(importlib.metadata, "version", lambda library: "installed while the week ran")
    assert CutoffModel(week=WEEK).complete()  # the running code wrote it: its shards go on from it

    tasks.code_fingerprint.cache_clear()  # the next run's process, which runs the upgrade
    assert not CutoffModel(week=WEEK).complete()
    monkeypatch.undo()
    tasks.code_fingerprint.cache_clear()


def test_a_week_resumed_by_other_code_fits_again_and_remakes_its_shards(events_settings, tmp_path, monkeypatch):
    assert run_tasks(CandidatesAtCutoff(week=WEEK)).name == "SUCCESS"
    uninterrupted = week_file(CANDIDATES_INFERENCE.file)
    events_settings["pipeline"]["input_dir"] = str(tmp_path / "interrupted" / "{week}")
    apply_settings(events_settings)
    assert run_tasks(CandidateShard(week=WEEK, shard=0, shards=1)).name == "SUCCESS"  # stopped after its shard
    assert CutoffModel(week=WEEK).complete()  # the same code would go on from the fit

    monkeypatch.setattr(tasks, "code_fingerprint", lambda: "the code after an upgrade")
    assert not CutoffModel(week=WEEK).complete()
    result = luigi.build([CandidatesAtCutoff(week=WEEK)], local_scheduler=True, detailed_summary=True, workers=1)

    ran = result.summary_text.split("ran successfully")[1]
    assert "CutoffModel(" in ran and "CandidateShard(" in ran, result.summary_text
    assert week_file(CANDIDATES_INFERENCE.file).equals(uninterrupted)


def test_a_role_that_could_not_publish_is_refused_before_the_events_stage_fits_anything(
        events_settings, pipeline_role, bot_api, config_file, tmp_path, pg_socket_dir, database):
    """A shop's first week fits every train week's sources first (an hour for `make bench-week`'s shop): a
    role left without `CREATE` on `public` (PostgreSQL 15 and later) was refused only after them."""
    with admin_connection(pg_socket_dir, database) as dba:
        dba.cursor().execute(f'REVOKE CREATE ON SCHEMA public FROM "{pipeline_role}"')

    result = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", str(WEEK), env=TELEGRAM_ENV)

    assert result.returncode == TASK_FAILED
    assert f"ValueError: [postgres] user {pipeline_role} may not make tables in schema public" in result.stderr
    assert not list((tmp_path / "weeks").rglob("*.*"))  # no fit, no file of any week
    assert result.stderr.count("may not make tables in schema public") > 1  # each train week's fit: one problem
    [text] = bot_api.texts()  # the events stage's tasks sent none before 2026-12-07
    assert text.startswith("weekly-recs FAILED: CutoffModel for week ")
    assert f"GRANT CREATE ON SCHEMA public TO {pipeline_role}" in text
