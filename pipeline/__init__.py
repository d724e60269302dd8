"""weekly-recs: the week's recommendation tables, loaded, ranked and published by Luigi.

`luigi --module pipeline WeeklyRecs` imports this package; the tasks below are the graph.
"""

import logging

from pipeline import db, notify  # noqa: F401 - notify registers the Telegram event handlers
from pipeline.backfill import WeeklyRecsRange
from pipeline.load import DefaultRecs, InferenceCandidates, OnlineRecs, TrainCandidates
from pipeline.rank import RankCandidates, ScoreShard, TrainRanker
from pipeline.wrapper import WeeklyRecs

logging.getLogger("luigi-interface").addFilter(db.Redacted())  # Luigi's own lines, in every process of ours

__all__ = ["DefaultRecs", "InferenceCandidates", "OnlineRecs", "RankCandidates", "ScoreShard",
           "TrainCandidates", "TrainRanker", "WeeklyRecs", "WeeklyRecsRange"]
