"""Signed attachment URLs: reading their expiry, and refreshing them in batches of 50, by one
refresher whose waits are capped and which a rate limit pauses for everyone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from retrieval.errors import FetchError
from retrieval.indexing import ImageRef
from retrieval.indexing.signed_urls import SignedUrls, expires_at, signed_like

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


async def renew(links: SignedUrls, urls: list[str]) -> dict[str, str | None]:
    """What downloads asking for ``urls`` at the same moment are given."""
    answers = await asyncio.gather(*(links.fresh(url) for url in urls))
    return dict(zip(urls, answers, strict=True))


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


def test_a_proxy_link_takes_the_signature_of_its_refreshed_cdn_link():
    proxy = "https://media.example/attachments/1/2/a%20b.png?ex=10&is=01&hm=old&format=webp&"
    fresh = "https://cdn.example/attachments/1/2/a%20b.png?ex=ff&is=0e&hm=new&"
    assert signed_like(proxy, fresh) == (
        "https://media.example/attachments/1/2/a%20b.png?ex=ff&is=0e&hm=new&format=webp&"
    )
    assert signed_like(proxy, "https://cdn.example/a.png") == proxy  # nothing to take
    unsigned = "https://media.example/external/abc/x.png?width=96"
    assert signed_like(unsigned, fresh) == unsigned  # a preview's link is never signed


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
    fresh = await renew(SignedUrls(discord), [*wanted, wanted[0]])  # a repeat is asked once
    assert [len(call) for call in discord.calls] == [50, 50, 20]
    assert [url for call in discord.calls for url in call] == wanted
    assert fresh[wanted[7]] is None
    assert fresh[wanted[8]] == wanted[8] + "fresh=1"
    assert sum(url is None for url in fresh.values()) == 1


async def test_a_url_left_out_of_the_answer_counts_as_gone():
    async def forgetful(urls):
        return {}

    assert await renew(SignedUrls(forgetful), [signed(NOW)]) == {signed(NOW): None}


async def test_a_failed_refresh_is_a_transient_failure():
    async def broken(urls):
        raise ConnectionResetError("reset by peer")

    with pytest.raises(FetchError) as caught:
        await renew(SignedUrls(broken), [signed(NOW)])
    assert caught.value.retryable and caught.value.reason == "refresh_failed"


async def test_downloads_asking_at_once_share_requests_and_a_prefetch():
    discord = FakeDiscord()
    urls = SignedUrls(discord, clock=lambda: NOW)
    expired = [signed(NOW - 10, path=f"{CDN}{i}") for i in range(60)]
    urls.prefetch(ref(url) for url in expired[:40])  # claimed together: asked at once
    answers = await asyncio.gather(*(urls.fresh(url) for url in expired))
    assert answers == [url + "fresh=1" for url in expired]
    assert sum(len(call) for call in discord.calls) == 60  # each link asked for once
    assert len(discord.calls) <= 3
    assert await urls.fresh(expired[0]) == expired[0] + "fresh=1"  # kept: no request more
    assert sum(len(call) for call in discord.calls) == 60


async def test_a_link_refreshed_after_a_404_dates_the_dead_ones():
    urls = SignedUrls(FakeDiscord(), clock=lambda: NOW)
    issued = NOW - 3600  # valid for 23 hours more by its expiry...
    dead = f"{CDN}?ex={int(issued + 86400):x}&is={int(issued):x}&hm=x&"
    older = f"{CDN}2?ex={int(issued + 86390):x}&is={int(issued - 10):x}&hm=x&"
    newer = f"{CDN}3?ex={int(issued + 86410):x}&is={int(issued + 10):x}&hm=x&"
    assert not urls.expired(ref(older))
    assert await urls.fresh(dead, dead=True) == dead + "fresh=1"  # ...but the CDN said 404
    assert urls.expired(ref(older)) and not urls.expired(ref(newer))


async def test_a_long_rate_limit_pauses_every_refresh_for_its_retry_after():
    calls = []

    async def limited(wanted):
        calls.append(list(wanted))
        raise FetchError("429", reason="refresh_rate_limited", retryable=True, retry_after=3600)

    urls = SignedUrls(limited, clock=lambda: NOW)
    with pytest.raises(FetchError) as first:
        await urls.fresh(signed(NOW))
    assert first.value.retry_after == 3600
    for n in range(5):  # the others are told at once, without a request
        with pytest.raises(FetchError) as later:
            await urls.fresh(signed(NOW, path=f"{CDN}{n}"))
        assert later.value.retryable and 3500 < later.value.retry_after <= 3600
    urls.prefetch([ref(signed(NOW - 10, path=f"{CDN}9"))])
    assert len(calls) == 1


async def test_a_download_waits_for_its_link_no_longer_than_the_cap():
    answered = asyncio.Event()

    async def stuck(wanted):
        await answered.wait()
        return {url: url + "fresh=1" for url in wanted}

    urls = SignedUrls(stuck, wait_s=0.05, clock=lambda: NOW)
    with pytest.raises(FetchError) as caught:
        await urls.fresh(signed(NOW))
    assert caught.value.retryable and caught.value.reason == "refresh_slow"
    answered.set()  # the answer still comes, and the next attempt takes it
    urls.wait_s = 30.0
    assert await urls.fresh(signed(NOW)) == signed(NOW) + "fresh=1"


async def test_closing_stops_the_refresher_and_tells_the_downloads_still_waiting():
    async def stuck(wanted):
        await asyncio.Event().wait()

    urls = SignedUrls(stuck, clock=lambda: NOW)
    urls.prefetch([ref(signed(NOW))])  # in flight
    waiting = asyncio.create_task(urls.fresh(signed(NOW)))
    await asyncio.sleep(0)  # the download is waiting for it
    await urls.close()
    with pytest.raises(FetchError) as caught:
        await waiting
    assert caught.value.retryable
