"""Walk-forward backtest: replay weeks from events, judge each published ranking by the week after it.

    python -m pipeline.evaluation.backtest --start 2026-09-26 --stop 2026-11-14 [--scored-from 2026-10-24]
        [--seeds 42 7 1]

Every week of the range runs the whole graph (`[pipeline] source = events`) on a database and a
folder of the backtest's own, never the production ones; a week its quality gate refuses keeps the
previous ranking, which is then what users would have seen and what is scored. Each user with
events before the week's cutoff and in the 7 days after it is a user-week. For each: NDCG@10 and
Recall@10 of the published ranking, of recent popularity (seen items removed) and of the ALS order,
and the share of what they took that the candidates held (pool recall), in all and by each source
that listed them. A newcomer (events in the 7 days after the cutoff only) is a user-week apart:
NDCG@10 of what the web service serves them, `default_recs`, and of recent popularity. Weeks before
`--scored-from` are the ones settings were chosen on: they are replayed (the later weeks train on
their outcomes) and reported apart, so that the pooled figure of the scored weeks is out of
sample. Results go to the tables `backtest_weeks` and `backtest_runs`, to a picture, and to
standard output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import uuid
from datetime import date, timedelta
from pathlib import Path

import luigi
import luigi.configuration
import numpy as np
import pandas as pd
import psycopg2.extras
import pyarrow as pa
from psycopg2 import sql

from pipeline import catalog, config, db, metrics
from pipeline.backfill import weeks_between
from pipeline.base import week_parameter
from pipeline.contracts import CANDIDATES_INFERENCE
from pipeline.events import candidates, inputs
from pipeline.events.history import History
from pipeline.load import DefaultRecs
from pipeline.rank import QualityGateError, RankCandidates, TrainRanker
from pipeline.wrapper import WeeklyRecs

TRUTH_DAYS = 7
ORDERS = ("ranking", "popularity", "als")
_RANKED = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("rank", pa.int32())])
_ITEMS = pa.schema([("item_id", pa.int64())])


def use_backtest_database(database: str, folder: Path) -> None:
    """Points this process's pipeline at a fresh database and folders of its own, and sends no message.

    The backtest starts from nothing, so that it measures the settings it runs with now; it refuses
    the production database by name.
    """
    config.checked_identifier(database, "--database")
    if database == config.postgres().database:
        raise ValueError(f"--database {database!r} is the production database ([postgres] database); "
                         "the backtest needs one of its own")
    with db.connection(autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    for made in (folder / "weeks", folder / "models"):
        shutil.rmtree(made, ignore_errors=True)
    config.override("postgres", {"database": database})
    config.override("pipeline", {"source": "events", "input_dir": str(folder / "weeks" / "{week}"),
                                 "model_dir": str(folder / "models")})
    config.override("telegram", {"notify": "[]"})


_refused_weeks: set[date] = set()


@TrainRanker.event_handler(luigi.Event.FAILURE)
def _note_refusal(task: TrainRanker, exception: Exception) -> None:
    if isinstance(exception, QualityGateError):
        _refused_weeks.add(task.week)


def replay(week: date) -> bool:
    """Runs the week in this process; True when it went live, False when its quality gate refused it
    (the previous ranking then stays). Any other failure stops the backtest."""
    _refused_weeks.discard(week)
    if luigi.build([WeeklyRecs(week=week)], local_scheduler=True, workers=1):
        return True
    if week in _refused_weeks:
        return False
    raise RuntimeError(f"week {week} failed (see the log above); the backtest stops")


def user_weeks(week: date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The week's user-weeks, one row each: of the users with events before the cutoff, each order's
    NDCG@10 and Recall@10 and the pool's recall; of the newcomers (events after it only), those of
    what the web service serves them (`default_recs`) and of recent popularity."""
    settings = config.events()
    cutoff = settings.cutoff_of(week)
    path = settings.resolved_events_path()
    history = History.at(cutoff, inputs.window_batches(path, None, cutoff, settings.weights),
                         inputs.read_items(settings.resolved_items_path()), (settings.popular_days,))
    truth = _pairs(inputs.read_window(path, cutoff, cutoff + timedelta(days=TRUTH_DAYS), settings.weights))
    served = _published_ranking(week, truth["user_id"].unique())
    popular = history.popular_order(settings.popular_days)  # the baseline of both kinds of user
    returning = truth["user_id"].isin(history.users)
    return (_returning_users(week, history, popular, truth[returning], served),
            _newcomers(week, history, popular, truth[~returning], served))


def _returning_users(week: date, history: History, popular: np.ndarray, truth: pd.DataFrame,
                     served: pd.DataFrame) -> pd.DataFrame:
    pool = pd.read_parquet(config.pipeline().week_input_dir(week) / CANDIDATES_INFERENCE.file,
                           columns=["user_id", "item_id", "rank_als", "sources"])
    lists = {"ranking": served, "popularity": _popular_unseen(history, popular, truth["user_id"].unique()),
             "als": pool.assign(rank=pool["rank_als"])[["user_id", "item_id", "rank"]]}
    result = _scored(lists, truth)
    result["pool_recall"] = metrics.share_found(pool, truth)
    for bit, source in enumerate(candidates.SOURCES):
        result[f"pool_recall_{source}"] = metrics.share_found(pool[pool["sources"].to_numpy() & (1 << bit) > 0], truth)
    return result.rename_axis("user_id").reset_index().assign(week=week)


def _newcomers(week: date, history: History, popular: np.ndarray, truth: pd.DataFrame,
               served: pd.DataFrame) -> pd.DataFrame:
    """A user the shop has never seen is served `default_recs`, whose window (`default_days`) is its own;
    recent popularity (`popular`, positions in order) is what it would be otherwise."""
    top = history.items["item_id"].to_numpy()[popular[:metrics.K]]
    lists = {"default": served, "popularity": _same_list(truth["user_id"].unique(), top)}
    return _scored(lists, truth).rename_axis("user_id").reset_index().assign(week=week)


def _scored(lists: dict[str, pd.DataFrame], truth: pd.DataFrame) -> pd.DataFrame:
    """Per user of `truth`: NDCG@10 and Recall@10 of each of the lists, prefixed by its name."""
    return pd.concat([metrics.top_k_against(ranked, truth).add_prefix(f"{name}_") for name, ranked in lists.items()],
                     axis=1)


def _pairs(window: inputs.Interactions) -> pd.DataFrame:
    return pd.DataFrame({"user_id": window.user_id, "item_id": window.item_id}).drop_duplicates()


def _published_ranking(week: date, users: np.ndarray) -> pd.DataFrame:
    """What the web service serves now (`pipeline.serving`): each user's rows of the week's ranking, or
    of the last one that went live, and to a user without rows, as to one not active, `default_recs`."""
    table = RankCandidates(week=week).table
    with db.connection() as conn:
        with conn.cursor() as cur:
            if not catalog.exists(cur, table):
                return _RANKED.empty_table().to_pandas()
        personal = db.copy_out(conn, sql.SQL("SELECT user_id, item_id, rank FROM {} WHERE rank <= {}").format(
            sql.Identifier(table), sql.Literal(metrics.K)), _RANKED).to_pandas()
        popular = db.copy_out(conn, sql.SQL("SELECT item_id FROM {} ORDER BY items_cnt DESC, item_id LIMIT {}").format(
            sql.Identifier(DefaultRecs(week=week).table), sql.Literal(metrics.K)), _ITEMS).to_pandas()["item_id"]
    return pd.concat([personal, _same_list(np.setdiff1d(users, personal["user_id"].to_numpy()), popular)],
                     ignore_index=True)


def _same_list(users: np.ndarray, items: np.ndarray) -> pd.DataFrame:
    """Every one of `users` given `items`, in their order."""
    return pd.DataFrame({"user_id": np.repeat(users, len(items)), "item_id": np.tile(items, len(users)),
                         "rank": np.tile(np.arange(1, len(items) + 1), len(users))})


def _popular_unseen(history: History, popular: np.ndarray, users: np.ndarray) -> pd.DataFrame:
    """Each user's 10 first of the `popular` positions not yet had."""
    rows = np.searchsorted(history.users, users)
    top = candidates.unseen_popular(history, rows, popular, metrics.K)
    frame = pd.DataFrame({"user_id": np.repeat(users, metrics.K), "position": np.tile(np.arange(1, metrics.K + 1),
                                                                                      len(users)),
                          "item": top.ravel()})
    frame = frame[frame["item"] >= 0]
    return pd.DataFrame({"user_id": frame["user_id"], "rank": frame["position"],
                         "item_id": history.items["item_id"].to_numpy()[frame["item"]]})


_MEASURES = [f"{name}_{metric}" for name in ORDERS for metric in ("ndcg", "recall")] + ["pool_recall"] \
    + [f"pool_recall_{source}" for source in candidates.SOURCES]


def pooled(per_user: pd.DataFrame) -> dict[str, float]:
    """Means over user-weeks, and 95% bootstrap intervals: of the ranking's NDCG@10 over popularity's,
    and of pool recall."""
    result = per_user[_MEASURES].mean().astype(float).to_dict()
    pool_low, pool_high = metrics.bootstrap_mean(per_user["pool_recall"], rounds=2000)
    return {**result, "user_weeks": len(per_user), **_ratio("", per_user["ranking_ndcg"], per_user["popularity_ndcg"]),
            "pool_recall_low": pool_low, "pool_recall_high": pool_high}


def pooled_newcomers(newcomers: pd.DataFrame) -> dict[str, float]:
    """Means over the newcomers' weeks of `default_recs`' NDCG@10 and recent popularity's, and the
    95% bootstrap interval of their ratio (NaN without newcomers)."""
    if newcomers.empty:
        return {"newcomer_weeks": 0, **dict.fromkeys(("newcomer_default_ndcg", "newcomer_popularity_ndcg",
                                                      "newcomer_ratio", "newcomer_ratio_low", "newcomer_ratio_high"),
                                                     float("nan"))}
    return {"newcomer_weeks": len(newcomers), "newcomer_default_ndcg": float(newcomers["default_ndcg"].mean()),
            "newcomer_popularity_ndcg": float(newcomers["popularity_ndcg"].mean()),
            **_ratio("newcomer_", newcomers["default_ndcg"], newcomers["popularity_ndcg"])}


def _ratio(prefix: str, model: pd.Series, baseline: pd.Series) -> dict[str, float]:
    """NaN where the baseline found nothing: no ratio to it exists (a week's few newcomers, say)."""
    if baseline.mean() == 0:
        return dict.fromkeys((f"{prefix}ratio", f"{prefix}ratio_low", f"{prefix}ratio_high"), float("nan"))
    low, high = metrics.bootstrap_gain(model, baseline, rounds=2000)
    return {f"{prefix}ratio": float(model.mean() / baseline.mean()), f"{prefix}ratio_low": 1 + low,
            f"{prefix}ratio_high": 1 + high}


def by_week(per_user: pd.DataFrame, newcomers: pd.DataFrame, scored_from: date) -> pd.DataFrame:
    """Each week's means, of its newcomers apart; `scored` is 0 for the weeks settings were chosen on
    (before `scored_from`).

    `validation_ndcg` is what the week's quality gate measured on its held-out rows, `takers_ndcg`
    what it estimates: the published ranking's NDCG@10 over the users who took one of their
    candidates the week after (the held-out groups are such users too).
    """
    table = per_user.groupby("week")[_MEASURES].mean()
    takers = per_user[per_user["pool_recall"] > 0].groupby("week")["ranking_ndcg"].mean()
    new = newcomers.groupby("week")
    table = table.assign(users=per_user.groupby("week").size(), takers_ndcg=takers, newcomers=new.size(),
                         newcomer_default_ndcg=new["default_ndcg"].mean(),
                         newcomer_popularity_ndcg=new["popularity_ndcg"].mean()).reset_index()
    table["newcomers"] = table["newcomers"].fillna(0)
    table["validation_ndcg"] = table["week"].map(_validation_ndcg(table["week"].min()))
    return table.assign(scored=(table["week"] >= scored_from).astype(int))


def _validation_ndcg(week: date) -> dict[date, float]:
    """Each week's validation NDCG@10 (`model_metrics`), from one query; a week the gate refused has none."""
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT week, ndcg_at_10 FROM {}").format(
            sql.Identifier(TrainRanker(week=week).metrics_table)))
        return dict(cur.fetchall())


def record(weeks: pd.DataFrame, summary: dict[str, float], start: date, stop: date, scored_from: date) -> str:
    """The run (`summary`: of the scored weeks, and the settings it ran with) and its weeks in the backtest
    database; returns the run's id."""
    run_id = uuid.uuid4().hex[:12]
    with db.connection() as conn, conn.cursor() as cur:
        numbers = ", ".join(f"{name} double precision" for name in summary)
        cur.execute(f"CREATE TABLE IF NOT EXISTS backtest_runs (run_id text PRIMARY KEY, start_week date,"
                    f" stop_week date, scored_from date, settings jsonb, {numbers},"
                    f" run_at timestamptz DEFAULT now())")
        cur.execute(sql.SQL("INSERT INTO backtest_runs (run_id, start_week, stop_week, scored_from, settings, {})"
                            " VALUES (%s, %s, %s, %s, %s, {})")
                    .format(sql.SQL(", ").join(map(sql.Identifier, summary)),
                            sql.SQL(", ").join(sql.Placeholder() * len(summary))),
                    (run_id, start, stop, scored_from, psycopg2.extras.Json(settings_in_force()),
                     *summary.values()))
        columns = [c for c in weeks.columns if c != "week"]
        cur.execute("CREATE TABLE IF NOT EXISTS backtest_weeks (run_id text, week date, "
                    + ", ".join(f"{c} double precision" for c in columns) + ", PRIMARY KEY (run_id, week))")
        psycopg2.extras.execute_values(cur, sql.SQL("INSERT INTO backtest_weeks (run_id, week, {}) VALUES %s").format(
            sql.SQL(", ").join(map(sql.Identifier, columns))),
            [(run_id, row.week, *(float(getattr(row, c)) for c in columns)) for row in weeks.itertuples()])
        conn.commit()
    return run_id


def settings_in_force() -> dict[str, dict[str, str]]:
    """The `[pipeline]` and `[events]` settings the weeks ran with (neither holds a secret): a run's
    figures move with them, its seed alone by as much as some changes (README)."""
    return {"pipeline": config.pipeline().to_str_params(), "events": config.events().to_str_params()}


def draw(weeks: pd.DataFrame, path: Path, title: str) -> None:
    """NDCG@10 per week, the weeks settings were chosen on shaded apart from the scored ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.2), dpi=110)
    chosen_on = weeks.loc[weeks["scored"] == 0, "week"]
    if len(chosen_on):
        axes.axvspan(chosen_on.min() - timedelta(days=3), chosen_on.max() + timedelta(days=3), color="0.9",
                     label="weeks the settings were chosen on")
    labels = {"ranking": "published ranking", "popularity": "recent popularity", "als": "ALS order"}
    for name in ORDERS:
        axes.plot(weeks["week"], weeks[f"{name}_ndcg"], marker="o", label=labels[name])
    axes.set(title=title, xlabel="week (cutoff)", ylabel="NDCG@10 over the next 7 days")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.autofmt_xdate()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


def report(weeks: pd.DataFrame, summaries: dict[str, dict[str, float]]) -> str:
    """The weeks, then pooled figures for each group of them ("chosen on", "scored")."""
    lines = [f"{'week':<12}{'':<7}{'users':>6}{'ranking':>9}{'popular':>9}{'als':>8}{'pool':>7}"
             "   (NDCG@10; pool recall)"]
    lines += [f"{row.week!s:<12}{'scored' if row.scored else 'chosen':<7}{row.users:>6}{row.ranking_ndcg:>9.3f}"
              f"{row.popularity_ndcg:>9.3f}{row.als_ndcg:>8.3f}{row.pool_recall:>7.3f}" for row in weeks.itertuples()]
    for group, summary in summaries.items():
        lines.append(f"pooled over the {summary['user_weeks']} user-weeks of the weeks {group}:")
        for name in ORDERS:
            lines.append(f"  {name:<11} NDCG@10 {summary[f'{name}_ndcg']:.3f}  "
                         f"Recall@10 {summary[f'{name}_recall']:.3f}")
        lines.append(f"  candidate pool recall {summary['pool_recall']:.3f} (95% user-week bootstrap "
                     f"{summary['pool_recall_low']:.3f}-{summary['pool_recall_high']:.3f}); by source: " + ", ".join(
            f"{source} {summary[f'pool_recall_{source}']:.3f}" for source in candidates.SOURCES))
        lines.append(f"  ranking / popularity NDCG@10: {summary['ratio']:.2f} "
                     f"(95% user-week bootstrap {summary['ratio_low']:.2f}-{summary['ratio_high']:.2f})")
        lines.append(f"  newcomers (no event before the cutoff; {summary['newcomer_weeks']} user-weeks), NDCG@10 of "
                     f"default_recs {summary['newcomer_default_ndcg']:.3f}, of recent popularity "
                     f"{summary['newcomer_popularity_ndcg']:.3f}: {summary['newcomer_ratio']:.2f} (95% user-week "
                     f"bootstrap {summary['newcomer_ratio_low']:.2f}-{summary['newcomer_ratio_high']:.2f})")
        lines.append(f"  the quality gate's validation NDCG@10 missed the next week's (of the users who took a "
                     f"candidate) by {summary['validation_error']:.3f} a week on average")
    return "\n".join(lines)


def run(start: date, stop: date, database: str, folder: Path, scored_from: date | None = None,
        picture: Path | None = None) -> dict[str, dict[str, float]]:
    """Replays the weeks from `start` to `stop`, drawing `picture` (default: in `folder`); returns the
    pooled figures of each group of them ("chosen on": before `scored_from`, if any; "scored": from
    it, by default all of them)."""
    scored_from = scored_from or start
    picture = picture or folder / "ndcg_by_week.png"
    if not start <= scored_from <= stop:
        raise ValueError(f"--scored-from {scored_from} must lie from --start {start} to --stop {stop}")
    use_backtest_database(database, folder)
    scored_weeks = []
    for week in weeks_between(start, stop):
        went_live = replay(week)
        print(f"week {week}: {'published' if went_live else 'refused; the previous ranking stays'}", flush=True)
        scored_weeks.append(user_weeks(week))
    per_user, newcomers = (pd.concat(frames, ignore_index=True) for frames in zip(*scored_weeks, strict=True))
    weeks = by_week(per_user, newcomers, scored_from)
    summaries = {}
    for group, scored in (("chosen on", False), ("scored", True)):
        part, its_weeks = per_user[(per_user["week"] >= scored_from) == scored], weeks[weeks["scored"] == scored]
        its_newcomers = newcomers[(newcomers["week"] >= scored_from) == scored]
        if len(part):
            miss = (its_weeks["validation_ndcg"] - its_weeks["takers_ndcg"]).abs().mean()
            summaries[group] = {**pooled(part), **pooled_newcomers(its_newcomers), "validation_error": float(miss)}
    run_id = record(weeks, summaries["scored"], start, stop, scored_from)
    draw(weeks, picture, f"Walk-forward backtest, {start} to {stop}")
    print(report(weeks, summaries))
    print(f"run {run_id} recorded in {db.server()}, tables backtest_runs and backtest_weeks; picture: {picture}")
    return summaries


def run_over_seeds(seeds: list[int], start: date, stop: date, database: str, folder: Path,
                   scored_from: date | None = None) -> dict[int, dict[str, dict[str, float]]]:
    """The backtest once for each seed (`[pipeline] random_seed`, which seeds ALS, CatBoost and the
    users held out for validation), each in a database (`DATABASE_seedN`) and a folder (`FOLDER/seedN`)
    of its own; then each seed's figures and their range.

    The seed alone moves the figures by as much as some changes to the settings do (README): a change
    has shown something only where it moves them by more than their range over seeds.
    """
    production = config.postgres().database
    results = {}
    for seed in dict.fromkeys(seeds):  # each once, in the order given
        config.override("postgres", {"database": production})  # what each seed's database is checked against
        config.override("pipeline", {"random_seed": str(seed)})
        print(f"seed {seed}:", flush=True)
        results[seed] = run(start, stop, f"{database}_seed{seed}", folder / f"seed{seed}", scored_from)
    print(seeds_report(results))
    return results


def run_once_or_over_seeds(seeds: list[int] | None, start: date, stop: date, database: str, folder: Path,
                           scored_from: date | None, picture: Path | None = None) -> None:
    """Once with `[pipeline] random_seed`, drawing `picture` (default: in `folder`), or once for each of `seeds`."""
    if seeds:
        run_over_seeds(seeds, start, stop, database, folder, scored_from)
    else:
        run(start, stop, database, folder, scored_from, picture)


def seeds_report(results: dict[int, dict[str, dict[str, float]]]) -> str:
    """For each group of weeks, each seed's ranking / popularity and pool recall, then their range."""
    lines = []
    for group in ("chosen on", "scored"):
        runs = {seed: summaries[group] for seed, summaries in results.items() if group in summaries}
        if not runs:
            continue
        seeds = f"{len(runs)} seeds" if len(runs) > 1 else "1 seed"
        lines.append(f"over {seeds}, the weeks {group}: ranking / popularity NDCG@10 [95%], pool recall")
        lines += [f"  seed {seed:<6} {figures['ratio']:.2f} [{figures['ratio_low']:.2f}, {figures['ratio_high']:.2f}]"
                  f"  {figures['pool_recall']:.3f}" for seed, figures in runs.items()]
        ratios, pools = ([figures[name] for figures in runs.values()] for name in ("ratio", "pool_recall"))
        lines.append(f"  range {min(ratios):.2f} to {max(ratios):.2f} (mean {np.mean(ratios):.2f}),"
                     f" pool recall {min(pools):.3f} to {max(pools):.3f} (mean {np.mean(pools):.3f})")
    return "\n".join(lines)


def add_seeds_argument(parser: argparse.ArgumentParser) -> None:
    """`--seeds`, as every backtest command takes it."""
    parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                        help="run once for each seed, each in a database and folder of its own, and report "
                             "the figures' range over them (default: once, with [pipeline] random_seed)")


def on_shop(shop: Path, weeks: tuple[date, date, date], database: str, folder: Path,
            events_settings: dict[str, str], seeds: list[int] | None = None) -> None:
    """The walk-forward backtest of a shop's `events/` and `items.parquet`: events.cfg's stage, then
    LUIGI_CONFIG_PATH's settings (if any), then `events_settings`; `weeks` are the first, the first
    scored and the last; once, or once for each of `seeds`."""
    for path in (config.ROOT / "events.cfg", os.environ.get("LUIGI_CONFIG_PATH")):
        if path:
            luigi.configuration.add_config_path(str(path))
    config.override("events", {"events_path": str(shop / "events"), "items_path": str(shop / "items.parquet"),
                               **events_settings})
    first, scored_from, last = weeks
    run_once_or_over_seeds(seeds, first, last, database, folder, scored_from)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluation.backtest",
                                     description=__doc__.split("\n\n")[0])
    week = week_parameter()
    parser.add_argument("--start", required=True, type=lambda text: week.normalize(date.fromisoformat(text)))
    parser.add_argument("--stop", required=True, type=lambda text: week.normalize(date.fromisoformat(text)))
    parser.add_argument("--scored-from", type=lambda text: week.normalize(date.fromisoformat(text)), default=None,
                        help="weeks before it are those the settings were chosen on, reported apart "
                             "(default: --start, every week scored)")
    parser.add_argument("--database", default="weekly_recs_backtest", help="the backtest's own database")
    parser.add_argument("--folder", type=Path, default=config.ROOT / "var" / "backtest",
                        help="where the weeks' files and models go")
    parser.add_argument("--picture", type=Path, default=None,
                        help="PNG of NDCG@10 per week (default: in --folder; with --seeds, in each seed's)")
    add_seeds_argument(parser)
    options = parser.parse_args(argv)
    if options.seeds and options.picture:
        parser.error("--picture names one picture; with --seeds each seed draws its own in FOLDER/seedN")
    run_once_or_over_seeds(options.seeds, options.start, options.stop, options.database, options.folder.resolve(),
                           options.scored_from, options.picture)


if __name__ == "__main__":
    main()
