"""FETCH_CONCURRENCY and FETCH_PER_HOST: unset, what the encoder's device needs; set, as set."""

from __future__ import annotations

import pytest

from retrieval.config import GPU_DOWNLOADS, load_settings
from retrieval.errors import ConfigError


def test_unset_downloads_follow_the_encoders_device():
    settings = load_settings(_env_file=None, fetch_concurrency="", fetch_per_host=" ")
    assert settings.downloads(gpu=False) == (8, 4)
    assert settings.downloads(gpu=True) == (GPU_DOWNLOADS, GPU_DOWNLOADS)


def test_set_downloads_hold_on_either_device():
    settings = load_settings(_env_file=None, fetch_concurrency=200, fetch_per_host=100)
    assert settings.downloads(gpu=False) == (200, 100) == settings.downloads(gpu=True)


def test_more_than_a_thousand_downloads_at_once_is_refused():
    with pytest.raises(ConfigError, match="FETCH_CONCURRENCY"):
        load_settings(_env_file=None, fetch_concurrency=5000)
