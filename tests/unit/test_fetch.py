"""The fetcher downloads only from the allowed origins, hop by hop, against loopback servers."""

from __future__ import annotations

import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from retrieval.errors import FetchError
from retrieval.pictures.fetch import Fetcher
from retrieval.pictures.origins import MediaOrigins
from tests.helpers import loopback_server

BODY = b"picture bytes"


class Host:
    """A loopback server counting every request it gets; /img answers bytes, /go/{n} redirects."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.redirects: dict[str, str] = {}
        self.busy: dict[str, str] = {}  # path -> Retry-After of its 429
        self.port = 0

    def url(self, path: str, *, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        if request.path in self.busy:
            return web.Response(status=429, headers={"Retry-After": self.busy[request.path]})
        if request.path in self.redirects:
            return web.Response(status=302, headers={"Location": self.redirects[request.path]})
        if request.path.startswith("/loop/"):
            hop = int(request.path.rsplit("/", 1)[1])
            return web.Response(status=302, headers={"Location": f"/loop/{hop + 1}"})
        return web.Response(body=BODY, content_type="image/png")


class Loopback(AbstractResolver):
    """Every name resolves to 127.0.0.1, so origins with real-looking names can be tested."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
async def hosts() -> AsyncIterator[tuple[Host, Host]]:
    """Two servers on 127.0.0.1, different ports: one allowed, one that must never be asked."""
    pair = (Host(), Host())
    async with contextlib.AsyncExitStack() as stack:
        for host in pair:
            host.port = await stack.enter_async_context(loopback_server(host.handle))
        yield pair


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=Loopback())) as s:
        yield s


def fetcher(http: aiohttp.ClientSession, origins: str) -> Fetcher:
    return Fetcher(
        http,
        allowed=MediaOrigins.parse(origins),
        max_bytes=1000,
        timeout_s=5,
        retries=2,
        backoff_s=0.01,
    )


async def refused(fetch: Fetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as caught:
        await fetch.fetch(url)
    assert not caught.value.retryable
    return caught.value


async def test_an_allowed_origin_is_fetched_and_another_port_is_not(hosts, http):
    cdn, poster = hosts
    fetch = fetcher(http, cdn.url(""))
    assert await fetch.fetch(cdn.url("/img/a.png?ex=1&hm=sig")) == BODY

    error = await refused(fetch, poster.url("/img/a.png?ex=1&hm=sig"))
    assert error.reason == "off_discord"
    assert str(error) == (
        f"http://127.0.0.1:{poster.port} is off the allowed media origins (DISCORD_MEDIA_ORIGINS)"
    )
    assert not poster.hits


async def test_a_wildcard_opens_one_label_only(hosts, http):
    cdn, _ = hosts
    fetch = fetcher(http, f"http://*.media.test:{cdn.port}")
    assert await fetch.fetch(cdn.url("/img/1", host="images-ext-1.media.test")) == BODY
    for host in ("media.test", "a.b.media.test", "evilmedia.test", "media.test.evil"):
        assert (await refused(fetch, cdn.url("/img/2", host=host))).reason == "off_discord"
    assert cdn.hits == {"/img/1": 1}


async def test_redirects_are_followed_while_they_stay_on_allowed_origins(hosts, http):
    cdn, media = hosts
    cdn.redirects["/relative"] = "/img/here"
    cdn.redirects["/across"] = media.url("/img/there")
    fetch = fetcher(http, f"{cdn.url('')},{media.url('')}")
    assert await fetch.fetch(cdn.url("/relative")) == BODY
    assert await fetch.fetch(cdn.url("/across")) == BODY
    assert cdn.hits == {"/relative": 1, "/img/here": 1, "/across": 1}
    assert media.hits == {"/img/there": 1}


async def test_a_redirect_off_the_allowed_origins_is_refused_without_following(hosts, http):
    cdn, poster = hosts
    cdn.redirects["/proxy/pic"] = poster.url("/pic.png")
    fetch = fetcher(http, cdn.url(""))
    error = await refused(fetch, cdn.url("/proxy/pic"))
    assert error.reason == "off_discord" and "a redirect to http://127.0.0.1" in str(error)
    assert cdn.hits == {"/proxy/pic": 1}, "a permanent failure: not retried"
    assert not poster.hits


async def test_too_many_redirects_are_a_permanent_failure(hosts, http):
    cdn, _ = hosts
    fetch = fetcher(http, cdn.url(""))
    assert (await refused(fetch, cdn.url("/loop/0"))).reason == "too_many_redirects"
    assert sorted(cdn.hits) == ["/loop/0", "/loop/1", "/loop/2", "/loop/3"]  # 3 hops, no retry


async def test_a_429_with_retry_after_pauses_its_host_for_every_download(hosts, http):
    cdn, other = hosts
    cdn.busy["/img/busy.png"] = "30"
    fetch = fetcher(http, f"{cdn.url('')},{other.url('')}")
    with pytest.raises(FetchError) as first:
        await fetch.fetch(cdn.url("/img/busy.png"))
    assert first.value.retry_after == 30 and first.value.reason == "http_429"
    for n in range(3):  # the other downloads from that host are not sent, and say for how long
        with pytest.raises(FetchError) as paused:
            await fetch.fetch(cdn.url(f"/img/{n}.png"))
        assert paused.value.retryable and paused.value.reason == "http_429"
        assert 25 < paused.value.retry_after <= 30
    assert cdn.hits == {"/img/busy.png": 1}
    # Another host is not held up.
    assert await fetch.fetch(other.url("/img/a.png")) == BODY
