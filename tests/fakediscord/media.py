"""The media proxy's resized copies: what `proxy_url?width=&height=` answers, made with Pillow.

Discord's media proxy (`media.discordapp.net`, an attachment's or a link preview's `proxy_url`)
serves the thumbnails its clients ask for. What the stand-in reproduces:

- `width` and `height`: the picture scaled to fit that box, aspect ratio kept, never larger than
  the original; one of the two alone scales by that side. EXIF orientation is applied first, as
  Discord's image library (lilliput) does, so the copy is upright and carries no EXIF.
- `format=webp|png|jpeg` re-encodes (without it the copy keeps the original's format);
  `quality=1..100` for webp and jpeg, or `lossless` for webp. Discord documents no default
  quality; the stand-in uses `DEFAULT_QUALITY`.
- An attachment without width and height (not an image) answers 415 (discord-api-docs PR #5174).
- Animated GIF and WebP: lilliput resizes every frame when the output format animates and
  encodes only the first frame when it does not. So a GIF asked without `format` comes back as
  an animated GIF, every frame resized; `format=webp` gives a still WebP of the first frame unless
  `animated=true` is added (what Discord's CDN documents for animated WebP); png and jpeg give the
  first frame. Public reports agree: GIFs "redirected to WebP endpoints do not animate".
- Unknown formats or malformed numbers answer 400 (Discord's answer is not documented; strict
  here so that a bot's mistake shows in its tests).

Each variant is made once and cached, so a benchmark pays the stand-in's resizing only once.
Scaling uses Lanczos (lilliput's filter), after an integer box reduction (`reducing_gap`) that
keeps a 12 MP photo from costing the test process seconds.
"""

from __future__ import annotations

import asyncio
import io
import math
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps, ImageSequence

DEFAULT_QUALITY = 80
IS_ANIMATED = 1 << 5  # the attachment flag and the embed media flag alike
FORMATS = {"webp": "WEBP", "png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "gif": "GIF"}
CONTENT_TYPES = {"WEBP": "image/webp", "PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif"}
RESIZE_PARAMETERS = ("width", "height", "format", "quality", "animated")
_REDUCING_GAP = 3.0

Rendered = tuple[bytes, str, tuple[int, int]]  # bytes, content type, (width, height)


class BadResize(ValueError):
    """Resize parameters the proxy refuses (400)."""


@dataclass(frozen=True)
class Resize:
    """One variant a client may ask for."""

    width: int | None = None
    height: int | None = None
    format: str | None = None  # Pillow's name (WEBP, PNG, JPEG, GIF); None: the original's
    quality: int | str = DEFAULT_QUALITY  # or "lossless"
    animated: bool = False

    @classmethod
    def from_query(cls, query: Any) -> Resize | None:
        """From a request's query; None when it asks for no variant (the original bytes)."""
        if not any(name in query for name in RESIZE_PARAMETERS):
            return None
        fmt = query.get("format")
        if fmt is not None and fmt.lower() not in FORMATS:
            raise BadResize(f"unknown format {fmt!r}")
        quality: int | str = DEFAULT_QUALITY
        if "quality" in query:
            quality = query["quality"].lower()
            if quality != "lossless":
                quality = _number(query, "quality", high=100)
        return cls(
            width=_number(query, "width") if "width" in query else None,
            height=_number(query, "height") if "height" in query else None,
            format=FORMATS[fmt.lower()] if fmt is not None else None,
            quality=quality,
            animated=query.get("animated", "").lower() in ("true", "1"),
        )


def _number(query: Any, name: str, high: int = 1 << 16) -> int:
    try:
        value = int(query[name])
    except ValueError:
        raise BadResize(f"{name} must be a whole number, not {query[name]!r}") from None
    if not 1 <= value <= high:
        raise BadResize(f"{name} must be 1..{high}, not {value}")
    return value


def fitted(size: tuple[int, int], resize: Resize) -> tuple[int, int]:
    """The copy's size: inside the box, aspect ratio kept, never larger than the original."""
    w, h = size
    scale = min(
        resize.width / w if resize.width else math.inf,
        resize.height / h if resize.height else math.inf,
        1.0,
    )
    return max(1, round(w * scale)), max(1, round(h * scale))


def render(data: bytes, resize: Resize) -> Rendered:
    """(bytes, content type, size) of the variant of an image."""
    with Image.open(io.BytesIO(data)) as im:
        fmt = resize.format or {"MPO": "JPEG"}.get(im.format or "", im.format or "PNG")
        moving = getattr(im, "is_animated", False) and (
            fmt == "GIF" or (fmt == "WEBP" and resize.animated)
        )
        if moving:
            frames = [_scaled(f.convert("RGBA"), resize) for f in ImageSequence.Iterator(im)]
            out, extra = frames[0], {"save_all": True, "append_images": frames[1:], "loop": 0}
            extra["duration"] = im.info.get("duration", 100)
        else:
            im.seek(0)
            out, extra = _scaled(ImageOps.exif_transpose(im), resize), {}
    buf = io.BytesIO()
    if fmt == "JPEG":
        out.convert("RGB").save(buf, "JPEG", quality=_lossy(resize.quality), **extra)
    elif fmt == "WEBP":
        if resize.quality == "lossless":
            out.save(buf, "WEBP", lossless=True, **extra)
        else:
            out.save(buf, "WEBP", quality=resize.quality, **extra)
    else:
        out.save(buf, fmt, **extra)
    return buf.getvalue(), CONTENT_TYPES[fmt], out.size


def _lossy(quality: int | str) -> int:
    return 100 if quality == "lossless" else int(quality)


def _scaled(im: Image.Image, resize: Resize) -> Image.Image:
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA" if "transparency" in im.info or "A" in im.getbands() else "RGB")
    size = fitted(im.size, resize)
    if size == im.size:
        return im.copy()
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)


def is_animated(data: bytes) -> bool:
    """Whether the bytes are an image of more than one frame (Discord's IS_ANIMATED flag)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return bool(getattr(im, "is_animated", False))
    except Exception:
        return False


class Variants:
    """Resized copies made once per (source, variant), off the event loop; `made` counts them."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, Resize], asyncio.Future[Rendered]] = {}
        self.made = 0

    async def get(self, source: str, data: bytes, resize: Resize) -> Rendered:
        key = (source, resize)
        found = self._cache.get(key)
        if found is None:
            found = asyncio.ensure_future(asyncio.to_thread(render, data, resize))
            self._cache[key] = found
            self.made += 1
        try:
            return await asyncio.shield(found)
        except Exception:
            self._cache.pop(key, None)  # a broken picture is tried again next time
            raise
