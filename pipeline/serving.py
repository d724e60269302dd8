"""The reads the web service makes, as it makes them: run as a reader role (`[postgres] readers`),
against the live names only. The README shows them; the tests and `make bench` run them."""

from __future__ import annotations

# A user's top k; a user with no row of its own gets the week's most popular items.
TOP_K = """
SELECT item_id, rank FROM candidates_ranked WHERE user_id = %(user_id)s AND rank <= %(k)s
UNION ALL
(SELECT item_id, row_number() OVER (ORDER BY items_cnt DESC, item_id)::int FROM default_recs
 WHERE NOT EXISTS (SELECT FROM candidates_ranked WHERE user_id = %(user_id)s)
 ORDER BY items_cnt DESC, item_id LIMIT %(k)s)
ORDER BY rank
"""

# An item's k nearest items, for the item page.
NEIGHBOURS = """
SELECT itemid_2, score FROM online_recs WHERE itemid_1 = %(item_id)s ORDER BY score DESC, itemid_2 LIMIT %(k)s
"""


def top_k(cur, user_id: int, k: int = 10) -> list[tuple[int, int]]:
    cur.execute(TOP_K, {"user_id": user_id, "k": k})
    return cur.fetchall()


def neighbours(cur, item_id: int, k: int = 10) -> list[tuple[int, float]]:
    cur.execute(NEIGHBOURS, {"item_id": item_id, "k": k})
    return cur.fetchall()
