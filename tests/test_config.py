"""A number setting out of its range is refused as Luigi reads the config, naming the section, the key
and the range, before any task: found at first use, it failed a week after its loads, or deep in
CatBoost or PostgreSQL in words that name no setting."""

from __future__ import annotations

import pytest

from pipeline import config
from tests.conftest import SCHEDULING_FAILED, WEEK, apply_settings, query, run_luigi

OUT_OF_RANGE = [  # (section, key, value, the range Luigi names)
    ("postgres", "port", "0", "int in [1, 65535]"),
    ("postgres", "read_streams", "0", "int in [1, inf]"),
    ("pipeline", "iterations", "0", "int in [1, inf]"),
    ("pipeline", "holdout_share", "1", "float in (0, 1)"),
    ("pipeline", "max_row_drop", "1.5", "float in [0, 1]"),
    ("pipeline", "max_row_drop", "-0.1", "float in [0, 1]"),
    ("pipeline", "rows_per_shard", "0", "int in [1, inf]"),
    ("pipeline", "lock_timeout", "-1", "float in [0, inf]"),
    ("events", "label_days", "8", "int in [1, 7]"),
    ("events", "candidates_per_user", "0", "int in [1, inf]"),
    ("events", "alpha", "0", "float in (0, inf)"),
    ("telegram", "timeout", "0", "float in (0, inf)"),
]
SECTIONS = {"postgres": config.postgres, "pipeline": config.pipeline, "events": config.events,
            "telegram": config.telegram}


@pytest.mark.parametrize(("section", "key", "value", "permitted"), OUT_OF_RANGE,
                         ids=[f"{section}.{key}={value}" for section, key, value, _ in OUT_OF_RANGE])
def test_a_number_setting_out_of_range_is_refused_naming_the_section_the_key_and_the_range(
        section, key, value, permitted, settings):
    apply_settings({section: {key: value}})

    parsing = rf"^{section}\[.*\]: Error when parsing the default value of '{key}'$"
    with pytest.raises(ValueError, match=parsing) as refused:
        SECTIONS[section]()

    assert str(refused.value.__cause__) == f"{value} is not in the set of {permitted}"


def test_the_bounds_a_setting_allows_are_taken(settings):
    apply_settings({"pipeline": {"shards": "0", "retention": "0", "max_row_drop": "1", "lock_timeout": "0"},
                    "events": {"label_days": "7", "new_days": "0"}})

    assert (config.pipeline().shards, config.pipeline().retention, config.pipeline().least_rows_kept()) == (0, 0, 0)
    assert (config.pipeline().lock_timeout, config.events().label_days, config.events().new_days) == (0, 7, 0)


@pytest.mark.parametrize("where", ["config file", "command line"])
def test_a_week_with_a_setting_out_of_range_stops_before_any_task_and_makes_nothing(where, settings, config_file, conn):
    flags = ["--pipeline-max-row-drop", "1.5"] if where == "command line" else []
    if where == "config file":
        settings["pipeline"]["max_row_drop"] = "1.5"
        apply_settings(settings, config_file)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", WEEK.isoformat(), *flags)

    assert refused.returncode == SCHEDULING_FAILED
    assert "ValueError: 1.5 is not in the set of float in [0, 1]" in refused.stderr
    assert "Error when parsing the default value of 'max_row_drop'" in refused.stderr
    assert query(conn, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == [(0,)]


def test_a_negative_cap_on_the_tasks_at_work_in_postgresql_stops_the_week_naming_it(settings, config_file, conn):
    """Luigi's scheduler would take it for a cap no task fits under, and the week would wait for ever."""
    settings["resources"] = {"postgres": "-1"}
    apply_settings(settings, config_file)

    refused = run_luigi(config_file, "WeeklyRecs", "--local-scheduler", "--week", WEEK.isoformat(), timeout=60)

    assert refused.returncode == SCHEDULING_FAILED
    assert "[resources] postgres = -1: a whole number of tasks at once, at least 1" in refused.stderr
    assert query(conn, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == [(0,)]
