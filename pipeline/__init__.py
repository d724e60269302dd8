"""weekly-recs: the week's recommendation tables, loaded, ranked and published by Luigi.

`luigi --module pipeline WeeklyRecs` imports this package; the tasks below are the graph.
"""

from pipeline import notify  # noqa: F401 - registers the Telegram event handlers
from pipeline.backfill import WeeklyRecsRange
from pipeline.load import DefaultRecs, InferenceCandidates, OnlineRecs, TrainCandidates
from pipeline.rank import RankCandidates, ScoreShard, TrainRanker
from pipeline.wrapper import WeeklyRecs

__all__ = ["DefaultRecs", "InferenceCandidates", "OnlineRecs", "RankCandidates", "ScoreShard",
           "TrainCandidates", "TrainRanker", "WeeklyRecs", "WeeklyRecsRange"]
