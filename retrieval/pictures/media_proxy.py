"""Asking Discord's media proxy for the pixels the model needs, and checking what comes back.

An attachment's (or a link preview's) `proxy_url` serves a copy scaled to `?width=&height=` and
re-encoded with `format=` and `quality=`: the thumbnails Discord's own clients load. A 12 MP phone
photo is megabytes and tens of milliseconds of decoding; the model reads 224x224 pixels of it.
Discord calls these parameters a client feature, not a contract for bots (discord-api-docs issue
#6660), so every answer is checked, and the CDN URL stays the fallback: without dimensions in the
payload (the proxy answers 415 then, PR #5174), when the proxy refuses, and when what comes back
is too small for the model.

The size and format were chosen by measurement (`python -m benchmarks.proxy_quality`, figures in
benchmarks/RESULTS.md). Pure: no Discord, no network, no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from retrieval.pictures.images import PreprocessSpec

# The side the model's resize reads (the shortest for CLIP's usual resize and crop), in model
# input sizes: 1.5 is 336 px for a 224 px model. At 2x a JPEG copy is decoded at half scale
# (retrieval/pictures/images.py drafts to the input size) and loses more than it saves.
SCALE = 1.5
QUALITY: int | str = 90  # 1..100, or "lossless" (webp only)
_RESIZE_PARAMETERS = frozenset({"width", "height", "format", "quality", "animated"})


def proxy_format(content_type: str) -> str:
    """The format to ask for: a JPEG stays JPEG (nothing to lose, and the cheapest to decode);
    anything else becomes WebP, which keeps transparency (a JPEG copy would drop it) and comes
    back as a still first frame for an animated GIF or WebP (asked without `animated=true`)."""
    return "jpeg" if content_type.split(";", 1)[0].strip().lower() == "image/jpeg" else "webp"


Verdict = Literal["as_asked", "full_size", "larger", "smaller", "too_small", "unreadable"]


@dataclass(frozen=True)
class ProxyRequest:
    """A resized copy to ask the media proxy for."""

    url: str
    width: int
    height: int


@dataclass(frozen=True)
class Answer:
    """What the proxy's answer is worth: `usable` False means download the original instead."""

    verdict: Verdict
    usable: bool


def request_size(
    *, width: int | None, height: int | None, spec: PreprocessSpec, scale: float = SCALE
) -> tuple[int, int] | None:
    """The box to ask for, or None when the original is to be downloaded as it is.

    The side the model's resize reads becomes `scale` x the model's input size, the other side
    follows the aspect ratio (rounded up, so a proxy that fits the picture into the box keeps
    that side), and nothing is larger than the original. None without both dimensions, and when
    the original is no larger than that: a resized copy would then save nothing.
    """
    if not width or not height or width < 1 or height < 1:
        return None
    target = math.ceil(scale * spec.size)
    # 'shortest' and 'squash' scale by (each of) the sides, so the short one sets the detail kept;
    # 'longest' letterboxes by the long one.
    reads_long = spec.resize_mode == "longest"
    read, other = (max, min) if reads_long else (min, max)
    if read(width, height) <= target:
        return None
    # Integer ceiling: in floats 2400 * (448 / 1600) is a hair over 672.
    follow = min(other(width, height), -(-other(width, height) * target // read(width, height)))
    if (width >= height) == reads_long:
        return target, follow
    return follow, target


def proxy_request_url(
    proxy_url: str,
    *,
    size: tuple[int, int],
    format: str | None,  # noqa: A002 - the proxy's parameter name
    quality: int | str | None = QUALITY,
) -> str:
    """`proxy_url` with the resize parameters (None leaves one out); its own (signature)
    parameters are kept byte for byte."""
    parts = urlsplit(proxy_url)
    kept = [p for p in parts.query.split("&") if p and p.split("=", 1)[0] not in _RESIZE_PARAMETERS]
    asked = [f"width={size[0]}", f"height={size[1]}"]
    if format is not None:
        asked.append(f"format={format}")
    if quality is not None:
        asked.append(f"quality={quality}")
    return urlunsplit(parts._replace(query="&".join(kept + asked)))


def plan_request(
    *,
    proxy_url: str | None,
    width: int | None,
    height: int | None,
    content_type: str,
    spec: PreprocessSpec,
    scale: float = SCALE,
    quality: int | str | None = QUALITY,
) -> ProxyRequest | None:
    """What to ask the proxy for an image, or None to download the original (`url`) instead:
    no proxy URL (a preview Discord holds no copy of), no dimensions, or nothing to save."""
    if not proxy_url:
        return None
    size = request_size(width=width, height=height, spec=spec, scale=scale)
    if size is None:
        return None
    fmt = proxy_format(content_type)
    url = proxy_request_url(proxy_url, size=size, format=fmt, quality=quality)
    return ProxyRequest(url=url, width=size[0], height=size[1])


def check_answer(
    *,
    asked: tuple[int, int],
    original: tuple[int, int],
    got: tuple[int, int] | None,
    spec: PreprocessSpec,
) -> Answer:
    """Whether a proxy answer of size `got` (from its header; None: unreadable) can stand in for
    the original.

    A full-size answer just saved nothing; one larger or smaller than asked is still a valid
    picture. Only one whose side the model reads is under the model's input size would be
    upscaled where the original would not, so the original is fetched instead. An answer turned
    by 90 degrees (EXIF orientation applied by the proxy but not in the payload's dimensions)
    is compared turned back.
    """
    if got is None or got[0] < 1 or got[1] < 1:
        return Answer("unreadable", usable=False)
    if _turned(asked, got):
        got = got[1], got[0]
    if got == original:
        return Answer("full_size", usable=True)
    if all(abs(g - a) <= 1 for g, a in zip(got, asked, strict=True)):
        return Answer("as_asked", usable=True)
    reads = max if spec.resize_mode == "longest" else min
    if reads(got) > reads(asked):
        return Answer("larger", usable=True)
    if reads(got) >= min(spec.size, reads(original)):
        return Answer("smaller", usable=True)
    return Answer("too_small", usable=False)


def _turned(asked: tuple[int, int], got: tuple[int, int]) -> bool:
    """Whether `got` has the other orientation than `asked` (a square box has none)."""
    return asked[0] != asked[1] and got[0] != got[1] and (asked[0] > asked[1]) != (got[0] > got[1])
