"""The stand-in's media proxy: resized copies for `proxy_url?width=&height=`, as Discord serves."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yarl
from PIL import Image

from tests.fakediscord import Attachment, FakeDiscord
from tests.fakediscord.tests.test_fakediscord import fd, received, world  # noqa: F401


def photo(size: tuple[int, int] = (640, 480), fmt: str = "JPEG", **save: Any) -> bytes:
    """A picture with detail in both directions, so a wrong crop or stretch shows."""
    im = Image.linear_gradient("L").resize(size).convert("RGB")
    im.paste((200, 30, 30), (0, 0, size[0] // 4, size[1] // 4))
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def animated_gif(size: tuple[int, int] = (120, 90)) -> bytes:
    frames = [Image.new("RGB", size, colour) for colour in ("red", "lime", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


async def get(url: str, **params: object) -> tuple[int, str, bytes]:
    target = yarl.URL(url).update_query({k: str(v) for k, v in params.items()})
    async with aiohttp.ClientSession() as http, http.get(target) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


def opened(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


@pytest.fixture
async def posted(fd: FakeDiscord, world: Any) -> AsyncIterator[dict[str, Any]]:  # noqa: F811
    """The attachments of one message, as the discord.py client received them."""
    guild, mods, memes, alice = world
    files = [
        Attachment("photo.jpg", photo()),
        Attachment("notes.txt", b"not a picture", "text/plain"),
        Attachment("dance.gif", animated_gif()),
    ]
    async with received(fd, memes, alice, "files", attachments=files) as msg:
        yield {a.filename: a for a in msg.attachments}


async def test_attachments_carry_dimensions_and_the_animated_flag(posted: dict) -> None:
    jpg, txt, gif = posted["photo.jpg"], posted["notes.txt"], posted["dance.gif"]
    assert (jpg.width, jpg.height, gif.width, gif.height) == (640, 480, 120, 90)
    assert txt.width is None and txt.height is None
    assert gif.flags.animated and not jpg.flags.animated and not txt.flags.animated
    assert jpg.proxy_url != jpg.url


async def test_proxy_resizes_keeping_the_aspect_ratio_and_never_upscales(
    fd: FakeDiscord,  # noqa: F811
    posted: dict,
) -> None:
    jpg = posted["photo.jpg"]
    status, content_type, data = await get(jpg.proxy_url, width=224, height=168)
    assert (status, content_type, opened(data).size) == (200, "image/jpeg", (224, 168))
    assert len(data) < jpg.size
    # A box of another shape: the picture fits inside it, not stretched to it.
    assert opened((await get(jpg.proxy_url, width=100, height=100))[2]).size == (100, 75)
    assert opened((await get(jpg.proxy_url, width=320))[2]).size == (320, 240)
    assert opened((await get(jpg.proxy_url, height=120))[2]).size == (160, 120)
    status, _, data = await get(jpg.proxy_url, width=2000, height=1500)
    assert status == 200 and opened(data).size == (640, 480)
    # Without resize parameters the proxy hands out the stored bytes.
    assert (await get(jpg.proxy_url))[2] == await jpg.read()
    paths = {path for path, _ in fd.cdn.resized}
    assert len(paths) == 1 and [size for _, size in fd.cdn.resized][:2] == [(224, 168), (100, 75)]


async def test_proxy_reencodes_and_caches_each_variant(fd: FakeDiscord, posted: dict) -> None:  # noqa: F811
    jpg = posted["photo.jpg"]
    made = fd.cdn.variants.made
    webp = await get(jpg.proxy_url, width=224, height=168, format="webp", quality=70)
    assert webp[:2] == (200, "image/webp") and opened(webp[2]).format == "WEBP"
    lossless = await get(jpg.proxy_url, width=224, height=168, format="webp", quality="lossless")
    assert len(lossless[2]) > len(webp[2])
    png = await get(jpg.proxy_url, width=224, height=168, format="png")
    assert png[1] == "image/png" and opened(png[2]).size == (224, 168)
    assert fd.cdn.variants.made == made + 3
    # The same variant again (with a freshly signed URL) is served from the cache.
    again = await get(jpg.proxy_url, width=224, height=168, format="webp", quality=70)
    assert again[2] == webp[2] and fd.cdn.variants.made == made + 3


async def test_proxy_refuses_what_it_cannot_resize(posted: dict) -> None:
    txt, jpg = posted["notes.txt"], posted["photo.jpg"]
    # Discord: the proxy serves only attachments with a width and height (PR #5174).
    assert (await get(txt.proxy_url, width=100, height=100))[0] == 415
    assert (await get(txt.proxy_url))[0] == 415
    assert (await get(txt.url))[0] == 200  # the CDN link still serves the file itself
    for bad in ({"width": "wide"}, {"width": 0}, {"format": "bmp"}, {"quality": 101}):
        assert (await get(jpg.proxy_url, **bad))[0] == 400, bad


async def test_animated_images_keep_their_frames_only_in_an_animated_format(
    posted: dict,
) -> None:
    gif = posted["dance.gif"]
    same = opened((await get(gif.proxy_url, width=60, height=45))[2])
    assert (same.format, same.size, same.n_frames) == ("GIF", (60, 45), 3)
    still = opened((await get(gif.proxy_url, width=60, height=45, format="webp"))[2])
    assert (still.format, still.size, getattr(still, "n_frames", 1)) == ("WEBP", (60, 45), 1)
    red = still.convert("RGB").getpixel((30, 22))
    assert red[0] > 200 and red[1] < 40 and red[2] < 40  # the first frame
    moving = opened(
        (await get(gif.proxy_url, width=60, height=45, format="webp", animated="true"))[2]
    )
    assert moving.n_frames == 3
    first = opened((await get(gif.proxy_url, width=60, height=45, format="png"))[2])
    assert getattr(first, "n_frames", 1) == 1


async def test_exif_orientation_is_applied_before_fitting(fd: FakeDiscord, world: Any) -> None:  # noqa: F811
    guild, mods, memes, alice = world
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    msg = fd.add_history_message(
        memes, alice, attachments=[Attachment("turned.jpg", photo((64, 48), exif=exif))]
    )
    proxy = fd.cdn.proxy_url(msg.attachments[0].url)
    status, _, data = await get(proxy, width=48, height=64)
    assert status == 200 and opened(data).size == (48, 64)


async def test_link_previews_are_resized_and_faults_still_apply(fd: FakeDiscord) -> None:  # noqa: F811
    linked = fd.host_external_image("big.jpg", photo((800, 600)), "image/jpeg")
    media = fd.image_embed(linked)["thumbnail"]
    assert (media["width"], media["height"], media["flags"]) == (800, 600, 0)
    status, _, data = await get(media["proxy_url"], width=400, height=300, format="webp")
    assert status == 200 and opened(data).size == (400, 300)
    moving = fd.image_embed(fd.host_external_image("d.gif", animated_gif(), "image/gif"))
    assert moving["thumbnail"]["flags"] == 1 << 5
    fd.set_cdn_fault(linked, fail_first=1, fail_status=503)
    statuses = [(await get(media["proxy_url"], width=40, height=30))[0] for _ in range(2)]
    assert statuses == [503, 200]
    hosted = fd.host_external_image("page.html", b"<html></html>", "text/html")
    assert (await get(fd.image_embed(hosted)["thumbnail"]["proxy_url"], width=10))[0] == 415
