"""Text and numbers from Discord made safe before any statement: what reaches SQL is valid for
both databases, and what cannot be made valid is named, so it is counted rather than lost."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pytest

from retrieval.indexing import ImageRef
from retrieval.indexing.inputs import MAX_URL, clean_ref, clean_text, finite, ref_problem


def ref(**overrides) -> ImageRef:
    values = dict(
        guild_id=1,
        channel_id=10,
        message_id=1_000,
        image_key=7,
        kind="embed",
        author_id=5,
        posted_at=datetime(2026, 5, 1, tzinfo=UTC),
        url="https://media.example/external/a.png",
        source_url="https://poster.example/a.png",
        filename="a.png",
        content_type="image/png",
    )
    values.update(overrides)
    return ImageRef(**values)


def test_text_loses_nul_and_lone_surrogates_and_keeps_everything_else():
    assert clean_text("a\x00b\ud800c\udfffd.png") == "abcd.png"
    assert clean_text("héllo 🖼️ \t\x01.png") == "héllo 🖼️ \t\x01.png"
    assert clean_text("x" * 10_000, limit=255) == "x" * 255
    assert clean_text("\x00" * 300 + "y", limit=255) == "y"  # capped after cleaning


def test_a_ref_is_cleaned_field_by_field():
    dirty = ref(
        filename="a\x00" + "b" * 10_000,
        content_type="image/png\x00\ud800" + "x" * 100,
        url="https://media.example/external/a\x00.png",
        source_url="https://poster.example/a\ud800.png",
        size=2**70,
    )
    clean = clean_ref(dirty)
    assert clean.filename == ("a" + "b" * 10_000)[:255]
    assert clean.content_type == ("image/png" + "x" * 100)[:64]
    assert clean.url == "https://media.example/external/a.png"
    assert clean.source_url == "https://poster.example/a.png"
    assert clean.size is None  # out of any column's range: unknown, the download caps it
    assert ref_problem(clean) is None
    assert clean_ref(clean) == clean  # nothing left to clean
    assert clean_ref(ref(size=-1)).size is None


def test_what_asks_for_a_smaller_copy_is_left_out_when_it_cannot_be_used():
    """A bad proxy link or size costs only bytes: the picture is downloaded as it is."""
    good = dict(proxy_url="https://media.example/attachments/1/2/a.png?ex=1", width=640, height=480)
    assert clean_ref(ref(**good)) == ref(**good)
    assert (
        clean_ref(ref(**good | {"proxy_url": "https://media.example:99999/a.png"})).proxy_url
        is None
    )
    assert clean_ref(ref(**good | {"proxy_url": "https://media.example/a\x00.png"})).proxy_url == (
        "https://media.example/a.png"
    )
    for width, height in [(0, 480), (640, None), (2**31, 480), (640, -1)]:
        cleaned = clean_ref(ref(**good | {"width": width, "height": height}))
        assert (cleaned.width, cleaned.height) == (None, None)
        assert ref_problem(cleaned) is None


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (dict(message_id=2**63), "invalid_id"),
        (dict(guild_id=-1), "invalid_id"),
        (dict(parent_id=2**64), "invalid_id"),
        (dict(posted_at=datetime(1970, 1, 1, tzinfo=UTC)), "invalid_time"),
        (dict(posted_at=datetime(9999, 1, 1)), "invalid_time"),
        (dict(source_url="https://poster.example:99999/a.png"), "invalid_url"),
        (dict(url="http://[::1/a.png"), "invalid_url"),
        (dict(url="file:///etc/passwd"), "invalid_url"),
        (dict(source_url="https://poster.example/" + "a" * MAX_URL), "invalid_url"),
    ],
)
def test_what_cannot_be_made_valid_is_named(overrides, problem):
    assert ref_problem(clean_ref(ref(**overrides))) == problem


def test_the_largest_ids_and_discord_times_are_valid():
    largest = ref(guild_id=2**63 - 1, message_id=2**63 - 1, image_key=0, parent_id=2**63 - 1)
    assert ref_problem(largest) is None
    assert ref_problem(ref(posted_at=datetime(2015, 1, 1))) is None  # naive: UTC
    assert ref_problem(dataclasses.replace(largest, posted_at=datetime(2084, 1, 1))) is None


def test_only_finite_vectors_may_be_stored():
    assert finite(np.ones(4, dtype=np.float32))
    assert not finite(np.array([1.0, np.nan, 0, 0], dtype=np.float32))
    assert not finite(np.array([np.inf, 0, 0, 0], dtype=np.float32))
