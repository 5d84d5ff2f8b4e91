"""JSON responses as Discord writes them.

The Content-Type must be exactly `application/json`: discord.py compares the header
verbatim and treats `application/json; charset=utf-8` (aiohttp's default) as text.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

UNKNOWN_CHANNEL = (404, 10003, "Unknown Channel")
UNKNOWN_GUILD = (404, 10004, "Unknown Guild")
UNKNOWN_MEMBER = (404, 10007, "Unknown Member")
UNKNOWN_MESSAGE = (404, 10008, "Unknown Message")
UNKNOWN_USER = (404, 10013, "Unknown User")
UNKNOWN_WEBHOOK = (404, 10015, "Unknown Webhook")
UNKNOWN_INTERACTION = (404, 10062, "Unknown interaction")
UNKNOWN_COMMAND = (404, 10063, "Unknown application command")
ALREADY_ACKNOWLEDGED = (400, 40060, "Interaction has already been acknowledged.")
MISSING_ACCESS = (403, 50001, "Missing Access")
MISSING_PERMISSIONS = (403, 50013, "Missing Permissions")
INVALID_WEBHOOK_TOKEN = (401, 50027, "Invalid Webhook Token")
UNAUTHORIZED = (401, 0, "401: Unauthorized")
NOT_FOUND = (404, 0, "404: Not Found")


def ok(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )


def no_content() -> web.Response:
    return web.Response(status=204)


def error(kind: tuple[int, int, str], detail: str | None = None) -> web.Response:
    status, code, message = kind
    body: dict[str, Any] = {"message": message, "code": code}
    if detail:
        body["errors"] = {"_errors": [{"code": "FAKEDISCORD", "message": detail}]}
    return ok(body, status)


def invalid_form(detail: str) -> web.Response:
    return ok(
        {
            "message": "Invalid Form Body",
            "code": 50035,
            "errors": {"_errors": [{"code": "BASE_TYPE_INVALID", "message": detail}]},
        },
        400,
    )


class DiscordError(Exception):
    """Raised inside a handler to answer with a Discord error body."""

    def __init__(self, kind: tuple[int, int, str], detail: str | None = None) -> None:
        super().__init__(f"{kind[2]}: {detail}" if detail else kind[2])
        self.kind = kind
        self.detail = detail

    def response(self) -> web.Response:
        return error(self.kind, self.detail)
