"""SHARD_COUNT and SHARD_IDS: read, checked against each other, and refused with the fix."""

from __future__ import annotations

import pytest

from retrieval.config import load_settings
from retrieval.errors import ConfigError


def test_unset_means_discords_recommendation_and_every_shard():
    settings = load_settings(_env_file=None, shard_count="", shard_ids="")
    assert settings.shard_count is None and settings.shard_id_list() is None


@pytest.mark.parametrize(
    ("ids", "count", "expected"),
    [
        ("0-3", 8, [0, 1, 2, 3]),
        ("0,2,5", 6, [0, 2, 5]),
        ("4-5, 0", 6, [0, 4, 5]),
        ("3", 4, [3]),
        ("1-2,2-3", 4, [1, 2, 3]),
    ],
)
def test_shard_ids_ranges_and_lists(ids, count, expected):
    settings = load_settings(_env_file=None, shard_ids=ids, shard_count=count)
    assert settings.shard_id_list() == expected and settings.shard_count == count


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"shard_ids": "0-3"}, "SHARD_IDS needs SHARD_COUNT"),
        ({"shard_ids": "0-4", "shard_count": 4}, "names shard 4, but with SHARD_COUNT 4"),
        ({"shard_ids": "zero", "shard_count": 4}, "'zero' is not a shard number or range"),
        ({"shard_ids": "3-1", "shard_count": 4}, "runs backwards"),
        ({"shard_ids": "0,,1", "shard_count": 4}, "'' is not a shard number"),
        ({"shard_ids": "-1", "shard_count": 4}, "'-1' is not a shard number"),
        ({"shard_count": 0}, "SHARD_COUNT: Input should be greater than or equal to 1"),
    ],
)
def test_bad_shard_settings_stop_start_up_with_a_clear_error(overrides, complaint):
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None, **overrides)
    assert complaint in str(refused.value)


def test_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("SHARD_COUNT", "4")
    monkeypatch.setenv("SHARD_IDS", "2-3")
    settings = load_settings(_env_file=None)
    assert (settings.shard_count, settings.shard_id_list()) == (4, [2, 3])
