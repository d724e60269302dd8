"""The shop's events and items as inputs: their contract, and reading only a window of time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.contracts import ContractError
from pipeline.events.inputs import read_items, read_window
from tests.conftest import CUTOFF


def events_file(path: Path, **columns) -> Path:
    """Three events before CUTOFF; `columns` replace or add columns."""
    base = {"user_id": pa.array([1, 2, 3], pa.int64()), "item_id": pa.array([7, 14, 21], pa.int64()),
            "timestamp": pa.array([CUTOFF - timedelta(days=d) for d in (3, 2, 1)], pa.timestamp("s", "UTC")),
            "event": pa.array(["view", "view", "transaction"])}
    pq.write_table(pa.table({**base, **columns}), path)
    return path


# The contract


def test_an_events_file_without_a_required_column_is_refused_by_name(tmp_path):
    table = pq.read_table(events_file(tmp_path / "e.parquet")).drop_columns(["event"])
    pq.write_table(table, tmp_path / "e.parquet")
    with pytest.raises(ContractError, match=r"e\.parquet.*column 'event'.*required but missing"):
        read_window(tmp_path / "e.parquet", None, CUTOFF, {})


def test_a_timestamp_that_is_not_a_parquet_timestamp_is_refused(tmp_path):
    path = events_file(tmp_path / "e.parquet", timestamp=pa.array(["2026-11-20", "x", "y"]))
    with pytest.raises(ContractError, match=r"column 'timestamp'.*must hold a parquet timestamp, found string"):
        read_window(path, None, CUTOFF, {})


def test_a_null_id_is_refused_with_its_row(tmp_path):
    path = events_file(tmp_path / "e.parquet", user_id=pa.array([1, None, 3], pa.int64()))
    with pytest.raises(ContractError, match=r"e\.parquet.*column 'user_id'.*null at row 1"):
        read_window(path, None, CUTOFF, {})


def test_a_negative_weight_is_refused_with_its_row(tmp_path):
    path = events_file(tmp_path / "e.parquet", weight=pa.array([1.0, 2.0, -1.0]))
    with pytest.raises(ContractError, match=r"column 'weight'.*must be a finite number, 0 or more, found -1.0 at "
                                            r"row 2"):
        read_window(path, None, CUTOFF, {})


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_an_infinite_or_nan_weight_is_refused_with_its_row(tmp_path, value):
    path = events_file(tmp_path / "e.parquet", weight=pa.array([1.0, value, 1.0]))
    with pytest.raises(ContractError, match=rf"column 'weight'.*must be a finite number, 0 or more, found {value} "
                                            r"at row 1"):
        read_window(path, None, CUTOFF, {})


def test_an_empty_file_among_others_is_a_day_without_events(tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    events_file(folder / "a.parquet")
    pq.write_table(pq.read_table(folder / "a.parquet").slice(0, 0), folder / "b.parquet")

    assert len(read_window(folder, None, CUTOFF, {})) == 3


def test_an_empty_events_file_alone_is_refused(tmp_path):
    path = events_file(tmp_path / "e.parquet")
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(ContractError, match=r"e\.parquet: the file has no rows"):
        read_window(path, None, CUTOFF, {})


def test_event_weights_multiply_the_weight_column_and_unlisted_events_weigh_one(tmp_path):
    path = events_file(tmp_path / "e.parquet", weight=pa.array([2.0, 1.0, 0.5]))
    window = read_window(path, None, CUTOFF, {"transaction": 5})
    assert window.weight.tolist() == [2.0, 1.0, 2.5]


def test_an_item_listed_twice_is_refused_with_its_row(tmp_path):
    pq.write_table(pa.table({"item_id": [7, 14, 7], "category_id": [1, 1, 2], "parent_id": [1, 1, 1],
                             "available": [1, 1, 1]}), tmp_path / "items.parquet")
    with pytest.raises(ContractError, match=r"items\.parquet.*column 'item_id'.*item 7 appears twice.*row 2"):
        read_items(tmp_path / "items.parquet")


def test_items_may_say_when_each_was_released_as_a_date_or_a_timestamp_utc_when_it_has_no_zone(tmp_path):
    items = {"item_id": [7, 14, 21], "category_id": [1, 1, 2], "parent_id": [1, 1, 1], "available": [1, 1, 1]}
    released = [datetime(2026, 11, 1, 12), None, datetime(2026, 1, 1)]
    for kind in (pa.timestamp("ms"), pa.timestamp("s", "UTC"), pa.date32()):
        given = [moment.date() if moment and kind == pa.date32() else moment for moment in released]
        pq.write_table(pa.table({**items, "released": pa.array(given, kind)}), tmp_path / "items.parquet")

        seconds = read_items(tmp_path / "items.parquet")["released"]

        noon = 12 * 3600 if kind != pa.date32() else 0
        assert seconds[0] == datetime(2026, 11, 1, tzinfo=UTC).timestamp() + noon
        assert np.isnan(seconds[1]) and seconds[2] == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    pq.write_table(pa.table(items), tmp_path / "items.parquet")
    assert read_items(tmp_path / "items.parquet")["released"].isna().all()


def test_a_release_that_is_not_a_date_is_refused_naming_the_file_and_column(tmp_path):
    pq.write_table(pa.table({"item_id": [7], "category_id": [1], "parent_id": [1], "available": [1],
                             "released": ["2026-11-01"]}), tmp_path / "items.parquet")
    with pytest.raises(ContractError, match=r"items\.parquet.*column 'released'.*must be a date or a timestamp"):
        read_items(tmp_path / "items.parquet")


def test_only_events_before_the_cutoff_are_read(shop):
    window = read_window(shop / "events", None, CUTOFF, {})
    everything = pq.read_table(shop / "events").column("timestamp")
    assert window.seconds.max() < CUTOFF.timestamp()
    assert len(window) == pc.sum(pc.less(everything, pa.scalar(CUTOFF, pa.timestamp("s", "UTC")))).as_py()
    assert len(window) < len(everything)  # the sample runs past the cutoff
