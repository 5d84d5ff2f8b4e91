"""The CDN half of the stand-in: signed attachment URLs, an external image host, faults.

Attachment URLs look like Discord's:
``/attachments/{channel_id}/{attachment_id}/{filename}?ex=<hex>&is=<hex>&hm=<hex>&``.
A URL stops working when `ex` has passed (by the stand-in's clock), when
`expire_attachment_links()` rotated the signing generation, or when the message was deleted;
the answer is then 404 "This content is no longer available.", as Discord gives.
Under `/media/` (an attachment's `proxy_url`) and `/external/` (a link preview's) the media
proxy also answers `?width=&height=&format=&quality=` with resized copies (media.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import logging
import mimetypes
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

from .media import BadResize, Resize, Variants, is_animated
from .models import Attachment, StoredAttachment

if TYPE_CHECKING:
    from .ids import Clock, Snowflakes

log = logging.getLogger(__name__)

LINK_TTL = 24 * 3600
GONE = "This content is no longer available."


@dataclass
class Fault:
    """How the CDN misbehaves for one URL (matched by path, whatever the signature)."""

    delay: float = 0.0  # seconds before the status line
    fail_first: int = 0  # answer this many requests with `fail_status` first
    fail_status: int = 500
    content_type: str | None = None  # serve with this Content-Type instead
    declared_length: int | None = None  # pad the body with zeros to this many bytes
    stall: bool = False  # send headers and half the body, then hang until shutdown
    redirect_to: str | None = None  # answer 302 with this Location instead of the bytes
    served: int = 0


@dataclass
class Outage:
    """The whole CDN answering `status` to every request until `Cdn.recover()`."""

    status: int = 503
    retry_after: float | None = None  # sent as Retry-After (seconds) when set


def probe_image(data: bytes) -> tuple[str | None, int | None, int | None]:
    """(content type, width, height) when Pillow recognises the bytes, else Nones."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return Image.MIME.get(im.format or ""), im.width, im.height
    except Exception:
        return None, None, None


class Cdn:
    def __init__(self, clock: Clock, ids: Snowflakes) -> None:
        self.base = ""  # set once the server has a port
        self._clock = clock
        self._ids = ids
        self._secret = secrets.token_bytes(16)
        self.generation = 0
        self.files: dict[tuple[int, int], StoredAttachment] = {}
        self.external: dict[str, tuple[bytes, str]] = {}
        self._proxied_urls: dict[str, str] = {}  # images-ext proxy token -> external path
        # The copy the proxy made of a picture hosted here when its link was unfurled.
        self._proxied_copies: dict[str, tuple[bytes, str]] = {}
        self.faults: dict[str, Fault] = {}
        self.hits: list[tuple[str, int]] = []  # (path, status) for every CDN request
        self.hit_times: list[float] = []  # time.monotonic() of each of `hits`
        # Bytes of the bodies answered per path (original and proxy copies alike, as `hits`)
        self.served_bytes: Counter[str] = Counter()
        self.outage: Outage | None = None
        self.closing = asyncio.Event()
        self.variants = Variants()
        # (path, (width, height)) of every resized copy the media proxy answered
        self.resized: list[tuple[str, tuple[int, int]]] = []
        # The status the media proxy answers every resize request with (None: it resizes), as
        # for a picture it cannot handle; the plain proxy URL still serves the bytes.
        self.refuse_resizing: int | None = None

    # -- attachments -------------------------------------------------------------------

    def store(
        self, channel_id: int, upload: Attachment, *, ephemeral: bool = False
    ) -> StoredAttachment:
        sniffed, width, height = probe_image(upload.data)
        if not upload.measured:
            width = height = None
        content_type = (
            upload.content_type
            or sniffed
            or mimetypes.guess_type(upload.filename)[0]
            or "application/octet-stream"
        )
        att = StoredAttachment(
            self._ids.next(),
            channel_id,
            upload.filename,
            upload.data,
            content_type,
            width,
            height,
            upload.description,
            self,
            ephemeral,
            animated=width is not None and is_animated(upload.data),
        )
        self.files[(channel_id, att.id)] = att
        return att

    def forget(self, att: StoredAttachment) -> None:
        self.files.pop((att.channel_id, att.id), None)

    def _sign(self, path: str, ex: int, issued: int) -> str:
        msg = f"{path}|{ex}|{issued}|{self.generation}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def signed_url(self, att: StoredAttachment) -> str:
        path = f"/attachments/{att.channel_id}/{att.id}/{quote(att.filename)}"
        issued = int(self._clock())
        ex = issued + LINK_TTL
        return f"{self.base}{path}?ex={ex:x}&is={issued:x}&hm={self._sign(path, ex, issued)}&"

    def proxy_url(self, url: str) -> str:
        return url.replace(f"{self.base}/", f"{self.base}/media/", 1)

    def refresh(self, url: str) -> str | None:
        """What POST /attachments/refresh-urls answers for one URL (None: not ours or gone)."""
        parts = urlsplit(url).path.split("/")
        if len(parts) < 5 or parts[-4] != "attachments":
            return None
        att = self.files.get((int(parts[-3]), int(parts[-2])))
        return None if att is None else self.signed_url(att)

    def expire_links(self) -> None:
        self.generation += 1

    # -- external image host -----------------------------------------------------------

    def host(self, name: str, data: bytes, content_type: str) -> str:
        key = f"/external-host/{secrets.token_hex(4)}/{name}"
        self.external[key] = (data, content_type)
        return self.base + quote(key)

    def rehost(self, url: str, data: bytes, content_type: str) -> None:
        """The site behind a hosted picture's URL serves other bytes from now on."""
        self.external[unquote(urlsplit(url).path)] = (data, content_type)

    def external_proxy_url(self, url: str) -> str:
        """Discord's proxied copy of a linked picture: it keeps serving the picture as it was
        when the link was unfurled, whatever the site serves since (`rehost`)."""
        token = secrets.token_hex(8)
        path = unquote(urlsplit(url).path)
        self._proxied_urls[token] = path
        if (hosted := self.external.get(path)) is not None:
            self._proxied_copies[token] = hosted
        return f"{self.base}/external/{token}"

    # -- faults ------------------------------------------------------------------------

    def go_down(self, *, status: int = 503, retry_after: float | None = None) -> Outage:
        """Answer every CDN request with ``status`` (and Retry-After) until `recover()`."""
        self.outage = Outage(status, retry_after)
        return self.outage

    def recover(self) -> None:
        self.outage = None

    def requests_for(self, url: str) -> list[tuple[float, int]]:
        """(time.monotonic(), status) of every request for one URL, whatever its signature."""
        path = _canonical(unquote(urlsplit(url).path))
        return [
            (at, status)
            for (hit, status), at in zip(self.hits, self.hit_times, strict=True)
            if hit == path
        ]

    def served_for(self, url: str) -> int:
        """Bytes answered for one URL, its original and its proxy's copies, whatever the
        signature."""
        return self.served_bytes[_canonical(unquote(urlsplit(url).path))]

    def copies_of(self, url: str) -> list[tuple[int, int]]:
        """The sizes of the resized copies of one URL's picture the media proxy answered."""
        path = _canonical(unquote(urlsplit(url).path))
        return [size for resized, size in self.resized if resized == path]

    def set_fault(self, url: str, **spec: object) -> Fault:
        fault = Fault(**spec)  # type: ignore[arg-type]
        self.faults[_canonical(unquote(urlsplit(url).path))] = fault
        return fault

    # -- HTTP --------------------------------------------------------------------------

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/attachments/{channel}/{id}/{filename}", self._attachment),
            web.get("/media/attachments/{channel}/{id}/{filename}", self._attachment),
            web.get("/external-host/{key}/{name}", self._external),
            web.get("/external/{token}", self._proxied),
        ]

    def _hit(self, path: str, status: int) -> None:
        self.hits.append((path, status))
        self.hit_times.append(time.monotonic())

    def _down(self, request: web.Request, path: str | None = None) -> web.Response | None:
        if self.outage is None:
            return None
        self._hit(path or _canonical(request.path), self.outage.status)
        headers = {}
        if self.outage.retry_after is not None:
            headers["Retry-After"] = f"{self.outage.retry_after:g}"
        return web.Response(status=self.outage.status, text="upstream error", headers=headers)

    async def _attachment(self, request: web.Request) -> web.StreamResponse:
        if (down := self._down(request)) is not None:
            return down
        m = request.match_info
        att = self.files.get((int(m["channel"]), int(m["id"])))
        if att is None or unquote(m["filename"]) != att.filename or not self._valid(request):
            return self._gone(request)
        content_type = att.content_type or "application/octet-stream"
        if not request.path.startswith("/media/"):
            return await self._serve(request, att.data, content_type)
        # The media proxy serves only what has dimensions (images and videos).
        return await self._proxy(request, att.data, content_type, image=att.width is not None)

    def _valid(self, request: web.Request) -> bool:
        q = request.query
        try:
            ex, issued = int(q["ex"], 16), int(q["is"], 16)
        except (KeyError, ValueError):
            return False
        path = _canonical(request.path)
        path = "/".join(path.split("/")[:-1] + [quote(unquote(path.split("/")[-1]))])
        good = hmac.compare_digest(q.get("hm", ""), self._sign(path, ex, issued))
        return good and self._clock() <= ex

    def _gone(self, request: web.Request) -> web.Response:
        self._hit(_canonical(request.path), 404)
        return web.Response(status=404, text=GONE)

    async def _external(self, request: web.Request) -> web.StreamResponse:
        if (down := self._down(request)) is not None:
            return down
        found = self.external.get(request.path)
        if found is None:
            return self._gone(request)
        return await self._serve(request, *found)

    async def _proxied(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        target = self._proxied_urls.get(token, "")
        if (down := self._down(request, target)) is not None:
            return down
        fault = self.faults.get(target)
        if fault is not None and fault.redirect_to:  # the picture need not be hosted here
            return self._redirect(target, fault)
        found = self._proxied_copies.get(token) or self.external.get(target)
        if found is None:
            return self._gone(request)
        # Faults set on the original URL apply to its proxy too.
        data, content_type = found
        return await self._proxy(
            request, data, content_type, image=probe_image(data)[1] is not None, path=target
        )

    async def _proxy(
        self,
        request: web.Request,
        data: bytes,
        content_type: str,
        *,
        image: bool,
        path: str | None = None,
    ) -> web.StreamResponse:
        """The media proxy's answer: the bytes, a resized copy, or its refusals."""
        path = path or _canonical(request.path)
        if not image:
            self._hit(path, 415)
            return web.Response(status=415, text="Unsupported Media Type")
        try:
            resize = Resize.from_query(request.query)
        except BadResize as exc:
            self._hit(path, 400)
            return web.Response(status=400, text=str(exc))
        if resize is not None and self.refuse_resizing is not None:
            self._hit(path, self.refuse_resizing)
            return web.Response(status=self.refuse_resizing, text="cannot resize this")
        if resize is not None:
            data, content_type, size = await self.variants.get(path, data, resize)
            self.resized.append((path, size))
        return await self._serve(request, data, content_type, path=path)

    async def _serve(
        self, request: web.Request, data: bytes, content_type: str, path: str | None = None
    ) -> web.StreamResponse:
        path = path or _canonical(request.path)
        fault = self.faults.get(path)
        if fault is None:
            self._hit(path, 200)
            self.served_bytes[path] += len(data)
            return web.Response(body=data, headers={"Content-Type": content_type})
        if fault.redirect_to:
            return self._redirect(path, fault)
        fault.served += 1
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.served <= fault.fail_first:
            self._hit(path, fault.fail_status)
            return web.Response(status=fault.fail_status, text="upstream error")
        self._hit(path, 200)
        body = data
        if fault.declared_length is not None and fault.declared_length > len(data):
            body = data + bytes(fault.declared_length - len(data))
        resp = web.StreamResponse(headers={"Content-Type": fault.content_type or content_type})
        resp.content_length = len(body)
        await resp.prepare(request)
        if fault.stall:
            await resp.write(body[: len(body) // 2])
            self.served_bytes[path] += len(body) // 2
            await self.closing.wait()
            return resp
        for start in range(0, len(body), 1 << 16):
            await resp.write(body[start : start + (1 << 16)])
        self.served_bytes[path] += len(body)
        await resp.write_eof()
        return resp

    def _redirect(self, path: str, fault: Fault) -> web.Response:
        fault.served += 1
        self._hit(path, 302)
        return web.Response(status=302, headers={"Location": fault.redirect_to or ""})


def _canonical(path: str) -> str:
    return path[len("/media") :] if path.startswith("/media/") else path
