"""retrieval/pictures/media_proxy.py: what to ask Discord's media proxy for, and what its answer is
worth."""

from __future__ import annotations

import io
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import discord
import numpy as np
import pytest
import skimage
from PIL import Image

from retrieval.pictures.fetch import Fetcher
from retrieval.pictures.images import PreprocessSpec, image_size, prepare, sniff_image_type
from retrieval.pictures.media_proxy import (
    SCALE,
    Answer,
    check_answer,
    plan_request,
    proxy_format,
    proxy_request_url,
    request_size,
)
from retrieval.pictures.origins import MediaOrigins
from tests.fakediscord import Attachment, FakeDiscord
from tests.fakediscord.media import Resize, fitted, render
from tests.fakediscord.tests.test_fakediscord import fd, received, world  # noqa: F401

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
CLIP = PreprocessSpec(size=224, mean=MEAN, std=STD)
LETTERBOX = PreprocessSpec(size=224, mean=MEAN, std=STD, resize_mode="longest")
SIGNED = (
    "https://media.discordapp.net/attachments/1/2/cat%20photo.jpg"
    "?ex=65d903de&is=65c68ede&hm=2481f30dd67f503f54d020ae3b5533b9987fae4e55f2b4e3926e08a3fa3ee24f&"
)


@pytest.mark.parametrize(
    ("size", "spec", "asked"),
    [
        ((4000, 3000), CLIP, (448, 336)),  # the short side at 1.5x the input, the long follows
        ((3000, 4000), CLIP, (336, 448)),
        ((1000, 449), CLIP, (749, 336)),  # rounded up
        ((2400, 1600), CLIP, (504, 336)),  # exactly, though 2400 * (336 / 1600) is not in floats
        ((4000, 3000), LETTERBOX, (336, 252)),  # letterboxing reads the long side
        ((3000, 4000), LETTERBOX, (252, 336)),
        ((1000, 1000), CLIP, (336, 336)),
        ((337, 336), CLIP, None),  # no larger than what would be asked: the original
        ((400, 300), CLIP, None),
        ((336, 100), LETTERBOX, None),
        ((None, 300), CLIP, None),  # no dimensions (the proxy would answer 415)
        ((640, None), CLIP, None),
        ((0, 0), CLIP, None),  # a link preview Discord could not measure
    ],
)
def test_request_size(size: tuple, spec: PreprocessSpec, asked: tuple | None) -> None:
    assert SCALE == 1.5  # the figures above are for the default
    assert request_size(width=size[0], height=size[1], spec=spec) == asked


def test_the_proxy_keeps_the_side_the_model_reads_at_the_target() -> None:
    """Whatever the aspect ratio, a proxy that fits the picture into the box asked (aspect
    kept, as Discord's does) answers exactly the target on the side the model reads, and
    never more than the original on either."""
    rng = random.Random(7)
    for _ in range(2000):
        w, h = rng.randint(1, 9000), rng.randint(1, 9000)
        for spec, reads in ((CLIP, min), (LETTERBOX, max)):
            scale = rng.choice((1.0, 1.5, 2.0))
            asked = request_size(width=w, height=h, spec=spec, scale=scale)
            target = int(scale * 224)
            if asked is None:
                assert reads(w, h) <= target
                continue
            copy = fitted((w, h), Resize(width=asked[0], height=asked[1]))
            assert reads(copy) == target, (w, h, asked, copy)
            assert copy[0] <= w and copy[1] <= h


def test_the_url_keeps_the_signature_byte_for_byte() -> None:
    url = proxy_request_url(SIGNED, size=(448, 336), format="webp", quality=90)
    base, query = url.split("?")
    assert base == SIGNED.split("?")[0]  # %20 stays as it was
    assert query == (
        "ex=65d903de&is=65c68ede&hm=2481f30dd67f503f54d020ae3b5533b9987fae4e55f2b4e3926e08a3fa3ee24f"
        "&width=448&height=336&format=webp&quality=90"
    )
    # Parameters of an earlier request are replaced, not repeated; None leaves one out.
    again = proxy_request_url(url, size=(300, 224), format=None, quality=None)
    assert again.endswith(
        "hm=2481f30dd67f503f54d020ae3b5533b9987fae4e55f2b4e3926e08a3fa3ee24f&width=300&height=224"
    )
    assert proxy_request_url("https://x.example/a.png", size=(2, 1), format=None, quality=None) == (
        "https://x.example/a.png?width=2&height=1"
    )


def test_plan_request() -> None:
    planned = plan_request(
        proxy_url=SIGNED, width=4000, height=3000, content_type="image/jpeg", spec=CLIP
    )
    assert planned is not None and (planned.width, planned.height) == (448, 336)
    assert planned.url == proxy_request_url(SIGNED, size=(448, 336), format="jpeg", quality=90)
    common: dict[str, Any] = dict(width=4000, height=3000, spec=CLIP)
    assert plan_request(proxy_url=None, content_type="", **common) is None  # no copy at Discord
    assert plan_request(proxy_url="", content_type="", **common) is None
    small = dict(common, width=300, height=200)
    assert plan_request(proxy_url=SIGNED, content_type="image/png", **small) is None
    # Anything but a JPEG becomes WebP: transparency kept, an animation's first frame only.
    for content_type in ("image/png", "image/gif", "image/webp", "", "image/jpeg; x=y"):
        planned = plan_request(proxy_url=SIGNED, content_type=content_type, **common)
        assert planned is not None
        assert f"format={proxy_format(content_type)}&quality=90" in planned.url
    assert proxy_format("IMAGE/JPEG; charset=binary") == "jpeg"
    assert proxy_format("image/gif") == proxy_format("") == "webp"
    lossless = plan_request(
        proxy_url=SIGNED, content_type="image/png", quality="lossless", **common
    )
    assert lossless is not None and lossless.url.endswith("format=webp&quality=lossless")


@pytest.mark.parametrize(
    ("got", "expected"),
    [
        ((448, 336), Answer("as_asked", usable=True)),
        ((447, 336), Answer("as_asked", usable=True)),  # rounding
        ((336, 448), Answer("as_asked", usable=True)),  # turned by EXIF orientation
        ((4000, 3000), Answer("full_size", usable=True)),  # saved nothing, still the picture
        ((3000, 4000), Answer("full_size", usable=True)),
        ((1200, 900), Answer("larger", usable=True)),
        ((400, 300), Answer("smaller", usable=True)),  # still over the model's input
        ((299, 224), Answer("smaller", usable=True)),
        ((160, 120), Answer("too_small", usable=False)),  # the model would upscale it
        (None, Answer("unreadable", usable=False)),
        ((0, 0), Answer("unreadable", usable=False)),
    ],
)
def test_check_answer(got: tuple | None, expected: Answer) -> None:
    assert check_answer(asked=(448, 336), original=(4000, 3000), got=got, spec=CLIP) == expected


def test_check_answer_for_a_small_original_and_letterboxing() -> None:
    # The original itself is under the input size: an answer that size lost nothing.
    assert check_answer(asked=(150, 100), original=(150, 100), got=(150, 100), spec=CLIP).usable
    assert check_answer(
        asked=(336, 252), original=(4000, 3000), got=(240, 180), spec=LETTERBOX
    ) == (Answer("smaller", usable=True))
    assert not check_answer(
        asked=(336, 252), original=(4000, 3000), got=(200, 150), spec=LETTERBOX
    ).usable


def encoded(im: Image.Image, fmt: str, **save: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def test_image_size_reads_headers() -> None:
    im = Image.new("RGB", (37, 21), "teal")
    for fmt in ("PNG", "JPEG", "WEBP", "GIF"):
        assert image_size(encoded(im, fmt)) == (37, 21), fmt
    assert image_size(encoded(im, "WEBP", lossless=True)) == (37, 21)
    assert image_size(b"<html>not a picture</html>") is None
    assert image_size(b"") is None


def photo(name: str, size: tuple[int, int]) -> bytes:
    with Image.open(SKIMAGE_DATA / f"{name}.png") as im:
        return encoded(im.convert("RGB").resize(size, Image.Resampling.BICUBIC), "JPEG", quality=90)


@pytest.fixture
async def photo_message(fd: FakeDiscord, world: Any) -> AsyncIterator[discord.Message]:  # noqa: F811
    guild, mods, memes, alice = world
    files = [
        Attachment("coffee.jpg", photo("coffee", (2400, 1600))),
        Attachment("notes.txt", b"not a picture", "text/plain"),
    ]
    async with received(fd, memes, alice, "photos", attachments=files) as msg:
        yield msg


async def test_a_planned_request_through_the_stand_in(
    fd: FakeDiscord,  # noqa: F811
    photo_message: discord.Message,
) -> None:
    """discord.py's attachment → the plan → the real fetcher → the check, as the pipeline will."""
    photo_att, notes = photo_message.attachments
    planned = plan_request(
        proxy_url=photo_att.proxy_url,
        width=photo_att.width,
        height=photo_att.height,
        content_type=photo_att.content_type or "",
        spec=CLIP,
    )
    assert planned is not None and (planned.width, planned.height) == (504, 336)
    async with aiohttp.ClientSession() as http:
        fetcher = Fetcher(
            http, allowed=MediaOrigins.parse(fd.cdn_origin), max_bytes=10_000_000, timeout_s=10
        )
        copy = await fetcher.fetch(planned.url)
        original = await fetcher.fetch(photo_att.url)
    got = image_size(copy)
    answer = check_answer(
        asked=(planned.width, planned.height),
        original=(photo_att.width, photo_att.height),
        got=got,
        spec=CLIP,
    )
    assert answer == Answer("as_asked", usable=True) and got == (504, 336)
    assert len(copy) * 5 < len(original)
    assert sniff_image_type(copy[:16]) == "jpeg"  # a JPEG stays one
    # The model input from the copy is the one from the original, to within a few levels
    # (1.9 on average here; a copy cropped or stretched otherwise would be tens off).
    diff = (prepare(copy, CLIP) - prepare(original, CLIP)) * np.asarray(STD)[:, None, None] * 255
    assert np.abs(diff).mean() < 3 and np.abs(diff).max() < 60
    # Nothing to plan for a file without dimensions: it is downloaded as it is.
    assert (
        plan_request(
            proxy_url=notes.proxy_url,
            width=notes.width,
            height=notes.height,
            content_type="",
            spec=CLIP,
        )
        is None
    )


def test_an_animated_gifs_copy_is_the_first_frame_the_pipeline_reads_of_the_original() -> None:
    """A GIF is asked as WebP without `animated=true`: the proxy's still copy gives the model
    the input it gets from the original's first frame, not a later frame's."""
    rng = np.random.default_rng(3)
    frames = [
        # Blocks of flat colour, as GIFs hold (a palette's worth, so no dithering).
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
            (672, 504), Image.Resampling.NEAREST
        )
        for _ in range(2)
    ]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    gif = buf.getvalue()
    planned = plan_request(
        proxy_url=SIGNED, width=672, height=504, content_type="image/gif", spec=CLIP
    )
    assert planned is not None and "format=webp" in planned.url and "animated" not in planned.url
    copy, content_type, _ = render(gif, Resize(planned.width, planned.height, "WEBP", 90))
    with Image.open(io.BytesIO(copy)) as still:
        assert content_type == "image/webp" and not getattr(still, "is_animated", False)

    def levels(data: bytes) -> np.ndarray:
        return prepare(data, CLIP) * np.asarray(STD)[:, None, None] * 255

    first, second = (levels(png(frame)) for frame in frames)
    assert np.abs(levels(copy) - levels(gif)).mean() < 3
    assert np.abs(levels(gif) - first).mean() < 3  # the original's input is its first frame's
    assert np.abs(levels(copy) - second).mean() > 20


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
