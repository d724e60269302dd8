"""The walk-forward backtest of a synthetic shop that ages (README: the synthetic ageing shop).

    python -m pipeline.evaluation.ageing_shop [FOLDER] [--seeds 42 7 1]

40 weeks of events up to the end of the last week's label window, users staying 8 weeks on
average. No setting was chosen on this shop, so all 8 weeks are scored.
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime
from pathlib import Path

from pipeline import config
from pipeline.evaluation import backtest as walk_forward
from pipeline.sample_events import write_sample_events

SHOP = {"users": 6_000, "items": 2_000, "weeks": 40, "lifetime_weeks": 8}
WEEKS = (date(2026, 10, 3), date(2026, 10, 3), date(2026, 11, 21))  # first, first scored, last


def backtest(folder: Path, database: str = "weekly_recs_ageing_shop", seeds: list[int] | None = None) -> None:
    write_sample_events(folder / "shop", datetime(2026, 11, 28, 21, tzinfo=UTC), **SHOP)
    walk_forward.on_shop(folder / "shop", WEEKS, database, folder, {}, seeds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluation.ageing_shop",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=config.ROOT / "var" / "ageing-shop-backtest",
                        help="where the shop, the weeks' files and the picture go")
    walk_forward.add_seeds_argument(parser)
    options = parser.parse_args()
    backtest(options.folder, seeds=options.seeds)
