"""What the fetch workers download for a picture: the media proxy's copy when one can be asked
for and stands in for the original, the original otherwise (retrieval/indexing/resized.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from retrieval.errors import FetchError
from retrieval.indexing import ImageRef, PipelineCounters
from retrieval.indexing.resized import ResizingFetcher
from retrieval.pictures.images import PreprocessSpec
from tests.tinyclip.shapes import draw, png_bytes

# copies are asked at 336 px on the short side
SPEC = PreprocessSpec(size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
CDN = "https://cdn.example/attachments/1/2/a.png?ex=10&is=01&hm=old&"
PROXY = "https://media.example/attachments/1/2/a.png?ex=10&is=01&hm=old&"


def ref(**overrides) -> ImageRef:
    values = dict(
        guild_id=1,
        channel_id=1,
        message_id=3,
        image_key=2,
        kind="attachment",
        author_id=5,
        posted_at=datetime(2026, 1, 1, tzinfo=UTC),
        url=CDN,
        source_url=CDN.split("?")[0],
        filename="a.png",
        content_type="image/png",
        size=5_000_000,
        proxy_url=PROXY,
        width=4032,
        height=3024,
    )
    return ImageRef(**(values | overrides))


class Answers:
    """A fetcher that answers each URL as told (bytes, or a FetchError) and notes what it was
    asked for."""

    def __init__(self, answers: dict[str, bytes | FetchError]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def fetch(self, url: str, *, declared_size: int | None = None) -> bytes:
        self.asked.append(url)
        answer = self.answers[url.split("?")[0]]
        if isinstance(answer, FetchError):
            raise answer
        return answer


def picture(width: int, height: int) -> bytes:
    return png_bytes(
        draw("red", "circle", size=max(width, height), rng=1).crop((0, 0, width, height))
    )


def downloads(answers: dict[str, bytes | FetchError], **options):
    """(Downloads through `Answers`, the `Answers`, the counters they count into)."""
    fetcher, counters = Answers(answers), PipelineCounters()
    got = ResizingFetcher(fetcher, spec=SPEC, counters=counters, **options)  # type: ignore[arg-type]
    return got, fetcher, counters


def test_the_copy_asked_for_keeps_the_aspect_ratio_and_the_links_signature():
    got, _, _ = downloads({})
    plan = got.plan(ref(), CDN)
    assert (plan.width, plan.height) == (448, 336)
    assert plan.url == PROXY + "width=448&height=336&format=webp&quality=90"
    fresh = "https://cdn.example/attachments/1/2/a.png?ex=ff&is=0e&hm=new&"
    assert got.plan(ref(), fresh).url.startswith(
        "https://media.example/attachments/1/2/a.png?ex=ff&is=0e&hm=new&width=448"
    )
    preview = ref(
        kind="embed",
        url="https://media.example/external/t",
        proxy_url="https://media.example/external/t",
    )
    assert (
        got.plan(preview, preview.url).url
        == "https://media.example/external/t?width=448&height=336&format=webp&quality=90"
    )


@pytest.mark.parametrize(
    "overrides",
    [dict(proxy_url=None), dict(width=None, height=None), dict(width=300, height=200)],
    ids=["no proxy link", "no size", "no larger than the copy"],
)
def test_the_original_is_downloaded_when_no_copy_can_help(overrides):
    got, _, _ = downloads({})
    assert got.plan(ref(**overrides), CDN) is None
    off, _, _ = downloads({}, resized=False)
    assert off.plan(ref(), CDN) is None


async def test_a_usable_copy_is_read_instead_of_the_original():
    copy = picture(448, 336)
    got, fetcher, counters = downloads({PROXY.split("?")[0]: copy})
    result = await got.picture(ref(), CDN)
    assert (result.data, result.resized) == (copy, True)
    assert len(fetcher.asked) == 1
    assert counters.bytes_downloaded == len(copy)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (FetchError("HTTP 415", reason="http_415"), "http_415"),
        (FetchError("HTTP 503", reason="http_503", retryable=True), "http_503"),
        (b"<html>not a picture</html>", "unreadable"),
        (picture(160, 120), "too_small"),  # under the model's 224: it would be upscaled
    ],
    ids=["refused", "down", "unreadable", "too small"],
)
async def test_a_copy_that_cannot_stand_in_is_replaced_by_the_original(answer, reason):
    original = picture(400, 300)
    got, fetcher, counters = downloads({PROXY.split("?")[0]: answer, CDN.split("?")[0]: original})
    result = await got.picture(ref(), CDN)
    assert (result.data, result.resized) == (original, False)
    assert fetcher.asked[-1] == CDN
    assert counters.resize_fallbacks == {reason: 1}


async def test_the_originals_failure_is_the_jobs():
    gone = FetchError("HTTP 404", reason="http_404")
    got, _, _ = downloads({PROXY.split("?")[0]: gone, CDN.split("?")[0]: gone})
    with pytest.raises(FetchError) as raised:
        await got.picture(ref(), CDN)
    assert raised.value is gone
