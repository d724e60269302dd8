"""Which train rows are held out for validation: the latest outcome week's, or those of the users
a seeded hash of each user id picks.

A user's side depends only on its id and the seed, not on which other users the week has, so
the week's check (`CheckInputs`, before any load) and the ranker (after a sample of users)
agree on it, and a week rerun holds out the same users.
"""

from __future__ import annotations

from datetime import date

import numpy as np

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


def spread(ids: np.ndarray, seed: int) -> np.ndarray:
    """Each id's place in [0, 1), uniform and fixed for the seed: a splitmix64 hash of id and seed."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.int64).view(np.uint64) + np.uint64(seed % (1 << 64)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
