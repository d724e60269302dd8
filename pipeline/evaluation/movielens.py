"""MovieLens 100k as a week of the modelling stage's files, and an evaluation of a published ranking.

    python -m pipeline.evaluation.movielens make ../shared/datasets/ml-100k OUTDIR
    python -m pipeline.evaluation.movielens evaluate OUTDIR      # scores the published candidates_ranked
    python -m pipeline.evaluation.movielens events ../shared/datasets/ml-100k OUTDIR   # for source = events
    python -m pipeline.evaluation.movielens backtest ../shared/datasets/ml-100k [FOLDER [FIRST SCORED_FROM LAST]]
        [--seeds 42 7 1]

Each user's ratings are split by time into history (60%), label (20%) and test (20%) periods; a
global time cut would leave too few users with test interactions. A truncated SVD of the history
gives the train candidates and their `als_score`, labelled by the label period; one of history and
label gives the inference candidates, which the test period judges. `category_id` is the first
genre, `parent_id` the release decade, `available` whether the release date is known.
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import config, metrics

# The last 16 Saturdays followed by 7 days of ratings: settings are chosen on the first 8, the last 8 are scored.
BACKTEST_WEEKS = (date(1997, 12, 27), date(1998, 2, 21), date(1998, 4, 11))  # first, first scored, last
CANDIDATES_PER_USER = 50
FACTORS = 48
SHARES = (0.6, 0.2)  # history, label; the rest is test


def read_ratings(dataset: Path) -> pd.DataFrame:
    return pd.read_csv(dataset / "u.data", sep="\t", names=["user_id", "item_id", "rating", "ts"])


def read_items(dataset: Path) -> pd.DataFrame:
    return _items_of(_u_item(dataset))


def _u_item(dataset: Path) -> pd.DataFrame:
    return pd.read_csv(dataset / "u.item", sep="|", header=None, encoding="latin-1")


def _items_of(u_item: pd.DataFrame) -> pd.DataFrame:
    genres = u_item.iloc[:, 5:24].to_numpy()
    released = _release_dates(u_item)
    return pd.DataFrame({
        "item_id": u_item[0].astype("int64"),
        "category_id": genres.argmax(axis=1).astype("int64"),
        "parent_id": (released.dt.year.fillna(0) // 10 * 10).astype("int64"),
        "available": released.notna().astype("int64"),
    })


def _release_dates(u_item: pd.DataFrame) -> pd.Series:
    """Each film's release date as `u.item` gives it (NaT where it gives none), in the file's order."""
    return pd.to_datetime(u_item[2], format="%d-%b-%Y", errors="coerce")


def split_by_time(ratings: pd.DataFrame) -> pd.Series:
    """'history', 'label' or 'test' for each rating, by its place in its user's own timeline."""
    place = ratings.groupby("user_id")["ts"].rank(method="first") / ratings.groupby("user_id")["ts"].transform("size")
    return pd.Series(np.select([place <= SHARES[0], place <= sum(SHARES)], ["history", "label"], "test"),
                     index=ratings.index)


def svd_scores(interactions: pd.DataFrame, users: int, items: int) -> tuple[np.ndarray, np.ndarray]:
    """User-item scores and item factors of a rank-`FACTORS` SVD of the 0/1 interaction matrix."""
    matrix = np.zeros((users + 1, items + 1), dtype=np.float32)
    matrix[interactions["user_id"], interactions["item_id"]] = 1
    left, singular, right = np.linalg.svd(matrix, full_matrices=False)
    item_factors = (right[:FACTORS].T * np.sqrt(singular[:FACTORS]))
    return (left[:, :FACTORS] * singular[:FACTORS]) @ right[:FACTORS], item_factors


def candidates(scores: np.ndarray, seen: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Each user's top unseen items by SVD score, with their item attributes."""
    masked = scores.copy()
    masked[seen["user_id"], seen["item_id"]] = -np.inf
    masked[:, 0] = -np.inf
    users = seen["user_id"].unique()
    top = np.argsort(-masked[users], axis=1)[:, :CANDIDATES_PER_USER]
    frame = pd.DataFrame({"user_id": np.repeat(users, CANDIDATES_PER_USER).astype("int64"),
                          "item_id": top.ravel().astype("int64")})
    frame["als_score"] = masked[frame["user_id"], frame["item_id"]].astype("float32")
    return frame.merge(items, on="item_id", how="left")


def labelled(frame: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """1 where the (user, item) pair is in `truth`."""
    keys = pd.MultiIndex.from_frame(truth[["user_id", "item_id"]])
    return pd.MultiIndex.from_frame(frame[["user_id", "item_id"]]).isin(keys).astype("int64")


def make_week(dataset: Path, out: Path) -> None:
    ratings, items = read_ratings(dataset), read_items(dataset)
    period = split_by_time(ratings)
    history, label, test = (ratings[period == name] for name in ("history", "label", "test"))
    known = pd.concat([history, label])
    n_users, n_items = ratings["user_id"].max(), ratings["item_id"].max()
    out.mkdir(parents=True, exist_ok=True)

    train_scores, _ = svd_scores(history, n_users, n_items)
    train = candidates(train_scores, history, items)
    train["target"] = labelled(train, label)
    inference_scores, item_factors = svd_scores(known, n_users, n_items)
    inference = candidates(inference_scores, known, items)
    popular = known.groupby("item_id").size().rename("items_cnt").sort_values(ascending=False).reset_index()

    _write(train, out / "candidates_train.parquet")
    _write(inference, out / "candidates_inference.parquet")
    _write(popular.astype("int64"), out / "top_popular.parquet")
    _write(_similar(item_factors), out / "similar.parquet")
    _write(test[["user_id", "item_id"]].astype("int64"), out / "test_interactions.parquet")


def write_events(dataset: Path, out: Path) -> None:
    """The ratings as an event stream (each rating an event at its time) and `u.item` as the items
    file, each film released on its release date."""
    ratings = read_ratings(dataset)
    (out / "events").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"user_id": pa.array(ratings["user_id"], pa.int64()),
                             "item_id": pa.array(ratings["item_id"], pa.int64()),
                             "timestamp": pa.array(ratings["ts"], pa.timestamp("s", "UTC")),
                             "event": pa.array(["rating"] * len(ratings), pa.string())}).sort_by("timestamp"),
                   out / "events" / "ratings.parquet", row_group_size=20_000)
    u_item = _u_item(dataset)
    _write(_items_of(u_item).assign(released=_release_dates(u_item)), out / "items.parquet")


def backtest(dataset: Path, folder: Path, weeks: tuple[date, date, date] = BACKTEST_WEEKS,
             database: str = "weekly_recs_movielens", seeds: list[int] | None = None) -> None:
    """The walk-forward backtest on the ratings as events, each cutoff at 00:00 UTC, every rating weighing 1."""
    from pipeline.evaluation import backtest as walk_forward

    write_events(dataset, folder / "shop")
    walk_forward.on_shop(folder / "shop", weeks, database, folder, {"cutoff": "00:00", "weights": "{}"}, seeds)


def _similar(item_factors: np.ndarray, per_item: int = 10) -> pd.DataFrame:
    norms = np.linalg.norm(item_factors, axis=1, keepdims=True)
    unit = np.divide(item_factors, norms, out=np.zeros_like(item_factors), where=norms > 0)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    cosine[0, :] = cosine[:, 0] = -np.inf
    top = np.argsort(-cosine, axis=1)[1:, :per_item]
    first = np.repeat(np.arange(1, len(cosine)), per_item)
    return pd.DataFrame({"itemid_1": first.astype("int64"), "itemid_2": top.ravel().astype("int64"),
                         "score": cosine[first, top.ravel()].astype("float32")})


def _write(frame: pd.DataFrame, path: Path) -> None:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def evaluate(ranked: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    """NDCG/P/R@10 of the ranking (`rank`, 1 = best) and of the als_score order, on the test period."""
    target = labelled(ranked, test)
    users = ranked["user_id"].to_numpy()
    model = metrics.per_user_metrics(users, -ranked["rank"].to_numpy(dtype=float), target)
    als = metrics.per_user_metrics(users, ranked["als_score"].to_numpy(), target)
    low, high = metrics.bootstrap_gain(model["ndcg"], als["ndcg"])
    return {**metrics.summary(model), **{f"als_{k}": v for k, v in metrics.summary(als).items()},
            "ndcg_gain": metrics.summary(model)["ndcg_at_10"] / metrics.summary(als)["ndcg_at_10"] - 1,
            "ndcg_gain_low": low, "ndcg_gain_high": high, "users": len(model)}


def evaluate_published(out: Path) -> dict[str, float]:
    from pipeline import db

    with db.connection() as conn:
        ranked = db.copy_out(conn, _published_query(), _RANKED_SCHEMA).to_pandas()
    return evaluate(ranked, pd.read_parquet(out / "test_interactions.parquet"))


_RANKED_SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("als_score", pa.float32()),
                            ("rank", pa.int32())])


def _published_query():
    from psycopg2 import sql

    return sql.SQL("SELECT user_id, item_id, als_score, rank FROM candidates_ranked")


def movielens_folder(path: str) -> Path:
    """A dataset argument: the folder MovieLens 100k unpacks to, which the project may not ship (its licence)."""
    folder = Path(path)
    if missing := [name for name in ("u.data", "u.item") if not (folder / name).is_file()]:
        raise argparse.ArgumentTypeError(f"{path} holds no MovieLens 100k ({' and '.join(missing)} missing): give "
                                         "the folder ml-100k.zip unpacks to (grouplens.org/datasets/movielens/100k)")
    return folder


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluation.movielens",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    writes = {"make": "the modelling stage's files and the test period", "events": "the events and items files"}
    for name, text in writes.items():
        command = commands.add_parser(name, help=f"write {text} made from the dataset")
        command.add_argument("dataset", type=movielens_folder)
        command.add_argument("outdir", type=Path)
    commands.add_parser("evaluate", help="score the published candidates_ranked").add_argument("outdir", type=Path)
    walk = commands.add_parser("backtest", help="the walk-forward backtest on the ratings as events")
    walk.add_argument("dataset", type=movielens_folder)
    walk.add_argument("folder", nargs="?", type=Path, default=config.ROOT / "var" / "movielens-backtest")
    walk.add_argument("weeks", nargs="*", type=date.fromisoformat, default=list(BACKTEST_WEEKS),
                      help="FIRST SCORED_FROM LAST (default: the README's 16 weeks)")
    from pipeline.evaluation.backtest import add_seeds_argument

    add_seeds_argument(walk)
    return parser


if __name__ == "__main__":
    parser = _parser()
    options = parser.parse_args()
    if options.command == "make":
        make_week(options.dataset, options.outdir)
        print(f"MovieLens week written to {options.outdir}/")
    elif options.command == "events":
        write_events(options.dataset, options.outdir)
        print(f"MovieLens events and items written to {options.outdir}/")
    elif options.command == "backtest":
        if len(options.weeks) != 3:
            parser.error("backtest takes three weeks: FIRST SCORED_FROM LAST")
        backtest(options.dataset, options.folder, tuple(options.weeks), seeds=options.seeds)
    else:
        for name, value in evaluate_published(options.outdir).items():
            print(f"{name:>22}: {value:.4f}")
