"""Signed attachment URLs: reading their expiry, and refreshing them in batches of 50."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from retrieval.errors import FetchError
from retrieval.indexing import ImageRef
from retrieval.indexing.signed_urls import SignedUrls, expires_at

NOW = 1_800_000_000.0
CDN = "https://cdn.discordapp.com/attachments/1/2/cat.png"


def signed(ex: float, *, path: str = CDN) -> str:
    return f"{path}?ex={int(ex):x}&is={int(ex) - 86400:x}&hm=abc123&"


def ref(url: str, *, kind: str = "attachment") -> ImageRef:
    return ImageRef(
        guild_id=1,
        channel_id=1,
        message_id=2,
        image_key=3,
        kind=kind,
        author_id=4,
        posted_at=datetime(2026, 1, 1, tzinfo=UTC),
        url=url,
        source_url=url.split("?")[0],
        filename="cat.png",
    )


class FakeDiscord:
    """Answers like `POST /attachments/refresh-urls`; `gone` URLs come back unchanged."""

    def __init__(self, gone: frozenset[str] = frozenset()) -> None:
        self.calls: list[list[str]] = []
        self.gone = gone

    async def __call__(self, urls):
        self.calls.append(list(urls))
        return {url: url if url in self.gone else url + "fresh=1" for url in urls}


def test_the_expiry_is_read_from_a_signed_url():
    assert expires_at(signed(NOW)) == NOW
    assert expires_at(f"{CDN}?ex=69a1b2c3&is=69a06143&hm=x&") == 0x69A1B2C3


@pytest.mark.parametrize(
    "url",
    [
        CDN,  # unsigned (an old attachment URL)
        f"{CDN}?ex=zz&is=1&hm=x",  # not hex
        f"{CDN}?ex=69a1b2c3&hm=x",  # part of a signature only
        "https://images-ext-1.discordapp.net/external/abc/https/example.com/cat.png",
    ],
)
def test_other_urls_have_no_expiry(url):
    assert expires_at(url) is None


def test_only_signed_attachment_urls_past_or_near_their_expiry_are_stale():
    urls = SignedUrls(FakeDiscord(), clock=lambda: NOW)
    assert urls.expired(ref(signed(NOW - 1)))
    assert urls.expired(ref(signed(NOW + 30)))  # would expire during the download
    assert not urls.expired(ref(signed(NOW + 3600)))
    # A link preview is never exchanged, whatever its URL looks like.
    assert not urls.expired(ref(signed(NOW - 1), kind="embed"))
    assert not urls.expired(ref(CDN))
    # Nothing to refresh with (no Discord client connected): used as queued.
    assert not SignedUrls(clock=lambda: NOW).expired(ref(signed(NOW - 1)))


async def test_urls_are_refreshed_fifty_per_request_and_gone_ones_are_told_apart():
    discord = FakeDiscord(gone=frozenset({signed(NOW, path=f"{CDN}7")}))
    wanted = [signed(NOW, path=f"{CDN}{i}") for i in range(120)]
    fresh = await SignedUrls(discord).renew([*wanted, wanted[0]])  # a repeat is asked once
    assert [len(call) for call in discord.calls] == [50, 50, 20]
    assert [url for call in discord.calls for url in call] == wanted
    assert fresh[wanted[7]] is None
    assert fresh[wanted[8]] == wanted[8] + "fresh=1"
    assert sum(url is None for url in fresh.values()) == 1


async def test_a_url_left_out_of_the_answer_counts_as_gone():
    async def forgetful(urls):
        return {}

    assert await SignedUrls(forgetful).renew([signed(NOW)]) == {signed(NOW): None}


async def test_a_failed_refresh_is_a_transient_failure():
    async def broken(urls):
        raise ConnectionResetError("reset by peer")

    with pytest.raises(FetchError) as caught:
        await SignedUrls(broken).renew([signed(NOW)])
    assert caught.value.retryable and caught.value.reason == "refresh_failed"
