"""Which train rows are held out for validation: the latest outcome week's, or those of the users
a seeded hash of each user id picks; and which rows a sample capped at `max_train_rows` keeps.

A user's side depends only on its id and the seed, not on which other users the week has, so
the week's check (`CheckInputs`, before any load), the train file's cap and the ranker (after a
sample of users) agree on it, and a week rerun holds out the same users.

A week with more train rows than a fit may learn from is fitted once: its sample is `max_train_rows`
rows of learning users and a held-out share beside them, and the model validated on the held-out
users is the model that goes live. A smaller week is validated on a model of most of its users,
then fitted again on all of them.
"""

from __future__ import annotations

from datetime import date

import numpy as np

from pipeline import config

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def held_out_week(holdout: str, first_week: date | None, last_week: date | None) -> date | None:
    """The outcome week the validation holds out: the latest where asked (`holdout = latest_week`) and
    the train rows span several weeks; else None, and it holds out users."""
    return last_week if holdout == "latest_week" and first_week is not None and first_week != last_week else None


def held_out_rows(user_ids: np.ndarray, weeks: np.ndarray | None, week: date | None, seed: int,
                  share: float) -> np.ndarray:
    """True for the train rows held out: those of `week` (see `held_out_week`), or else all the rows
    of about `share` of the users."""
    return weeks == week if week is not None else held_out(user_ids, seed, share)


def held_out(user_ids: np.ndarray, seed: int, share: float) -> np.ndarray:
    """True for the users held out: about `share` of them."""
    return spread(user_ids, seed) < share


def sample_order(ids: np.ndarray, seed: int, week: int = 0) -> np.ndarray:
    """The seeded places in which a capped sample takes ids (of its `week`-th outcome week): a hash
    of its own, so that a sample's users are no likelier held out than the week's."""
    return spread(ids, seed + 7919 * (week + 1))


def spread(ids: np.ndarray, seed: int) -> np.ndarray:
    """Each id's place in [0, 1), uniform and fixed for the seed: a splitmix64 hash of id and seed."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.int64).view(np.uint64) + np.uint64(seed % (1 << 64)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def fitted_once(available: int, settings: config.pipeline) -> bool:
    """Whether the week's sample is capped beyond what its learning users alone fill: then the fit
    the validation scores is already one on `max_train_rows` rows, and a second, on the whole sample,
    would learn from no more. Not where the latest week is held out: the model that goes live learns it too."""
    share = settings.holdout_share
    return settings.holdout == "users" and 0 < share < 1 and available > settings.max_train_rows / (1 - share)


def kept_in_sample(user_ids: np.ndarray, rows: np.ndarray, places: np.ndarray, available: int,
                   settings: config.pipeline) -> np.ndarray:
    """Which groups (a user's rows, or a user-week's) a sample of a week with more than `max_train_rows`
    keeps, whole, in the order of `places`: for a week fitted once (`fitted_once`), the learning users'
    up to `max_train_rows` rows and the held-out users' up to `max_train_rows * share / (1 - share)`;
    else any up to `max_train_rows`."""
    cap, share = settings.max_train_rows, settings.holdout_share
    if fitted_once(available, settings):
        held = held_out(user_ids, settings.random_seed, share)
        budgets = [(~held, cap), (held, int(cap * share / (1 - share)))]
    else:
        budgets = [(np.ones(len(user_ids), dtype=bool), cap)]
    order, kept = np.argsort(places, kind="stable"), np.zeros(len(user_ids), dtype=bool)
    for side, budget in budgets:
        chosen = order[side[order]]
        kept[chosen[np.cumsum(rows[chosen]) <= budget]] = True
    return kept
