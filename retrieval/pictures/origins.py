"""Where image bytes may be downloaded from: Discord's CDN and media proxy, never a poster's host.

A link preview names a picture on whatever host its poster chose. Connecting there would tell
that host the bot's address and when it read the message, so every download (and every redirect
on the way) must stay on the origins listed here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import yarl

DISCORD_MEDIA_ORIGINS = (
    "https://cdn.discordapp.com,https://media.discordapp.net,https://*.discordapp.net"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Origin:
    """scheme://host:port; a ``*.`` host stands for exactly one more label, as in certificates."""

    scheme: str
    host: str  # lower case; for a wildcard, what follows "*."
    port: int
    wildcard: bool = False

    def matches(self, url: yarl.URL) -> bool:
        if url.scheme.lower() != self.scheme or url.port != self.port:
            return False
        host = (url.raw_host or "").lower()
        if not self.wildcard:
            return host == self.host
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == self.host

    def __str__(self) -> str:
        host = f"*.{self.host}" if self.wildcard else self.host
        host = f"[{host}]" if ":" in host else host
        port = "" if _DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}"


def parse_origin(text: str) -> Origin:
    """One origin from ``scheme://host[:port]``; ValueError says what is wrong with it."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an origin: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{text!r} must start with https:// or http://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{text!r} must not contain a user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{text!r} must be only scheme://host[:port], without a path")
    host = (parts.hostname or "").lower()
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if not host or "*" in host:
        raise ValueError(
            f"{text!r} needs a host name; a '*.' wildcard may only open it (https://*.example.com)"
        )
    return Origin(scheme, host, port or _DEFAULT_PORTS[scheme], wildcard)


class MediaOrigins:
    """The origins downloads may reach; ``allows(url)`` says whether one URL is on them."""

    def __init__(self, origins: Iterable[Origin]) -> None:
        self.origins = tuple(origins)

    @classmethod
    def parse(cls, text: str) -> MediaOrigins:
        """Comma-separated origins; ValueError for an empty list or a malformed entry."""
        origins = [parse_origin(part.strip()) for part in text.split(",") if part.strip()]
        if not origins:
            raise ValueError("must list at least one origin, e.g. https://cdn.discordapp.com")
        return cls(origins)

    def allows(self, url: str | yarl.URL) -> bool:
        try:
            url = yarl.URL(url)
        except (TypeError, ValueError):
            return False
        return url.is_absolute() and any(origin.matches(url) for origin in self.origins)

    def __str__(self) -> str:
        return ", ".join(str(origin) for origin in self.origins)


def origin_of(url: str | yarl.URL) -> str:
    """scheme://host:port of a URL, for log lines: paths and signed queries stay out of them."""
    try:
        return str(yarl.URL(url).origin())
    except (TypeError, ValueError):
        return "an invalid URL"


def unsigned(url: str) -> str:
    """A link without its query: Discord's CDN links carry expiring signature parameters,
    which neither belong in the index nor in logs."""
    try:
        return str(yarl.URL(url).with_query(None))
    except ValueError:  # not a link at all: kept as it is, for the queue to refuse
        return url
