"""How the bot answers interactions: the callback, follow-ups, and @original edits.

Rules kept from Discord: one callback per interaction, within the initial-response
deadline (3 s by default); follow-ups only after the callback; webhook calls need a token
younger than 15 minutes (401 code 50027 afterwards). After a type-5 deferral the first
follow-up replaces the "thinking" message (and keeps its ephemeral flag), as on Discord.
Interaction and webhook routes carry no Authorization header, as in discord.py.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import payloads
from . import responses as r
from .interactions import APPLICATION_COMMAND, AUTOCOMPLETE, MESSAGE_COMPONENT, FakeInteraction
from .messages import EPHEMERAL, LOADING, Upload, apply_edit, new_bot_message
from .models import Message

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)

API = "/api/v10"
# Callback types Discord accepts per interaction type (9 = modal, 12 = launch activity).
ALLOWED_CALLBACKS = {
    APPLICATION_COMMAND: (4, 5, 9, 12),
    MESSAGE_COMPONENT: (4, 5, 6, 7, 9),
    AUTOCOMPLETE: (8,),
}


class WebhookRoutes:
    def __init__(self, fd: FakeDiscord) -> None:
        self.fd = fd

    def routes(self) -> list[web.AbstractRouteDef]:
        msg = API + "/webhooks/{app}/{token}/messages/{message}"
        return [
            web.post(API + "/interactions/{id}/{token}/callback", self.callback),
            web.post(API + "/webhooks/{app}/{token}", self.execute),
            web.get(msg, self.get_message),
            web.patch(msg, self.edit_message),
            web.delete(msg, self.delete_message),
        ]

    def _message(
        self, inter: FakeInteraction, data: dict[str, Any], uploads: list[Upload], flags: int = 0
    ) -> Message:
        kind = 0
        if inter.type == APPLICATION_COMMAND:
            kind = 20 if inter.data.get("type", 1) == 1 else 23
        msg = new_bot_message(
            self.fd,
            inter.channel,
            data,
            uploads,
            type=kind,
            flags=flags,
            webhook_id=self.fd.application_id,
            application_id=self.fd.application_id,
            interaction=inter.metadata(),
        )
        self.fd.store_message(msg)
        return msg

    async def callback(self, request: web.Request) -> web.Response:
        fd = self.fd
        inter = fd.interactions.get(int(request.match_info["id"]))
        if inter is None or inter.token != request.match_info["token"]:
            return r.error(r.UNKNOWN_INTERACTION)
        body, uploads = await fd.body(request)
        if inter.acknowledged:
            return r.error(r.ALREADY_ACKNOWLEDGED)
        late = fd.clock() - inter.created
        if fd.initial_response_timeout is not None and late > fd.initial_response_timeout:
            log.error(
                "fakediscord: interaction %s answered after %.1fs (limit %.1fs); Discord "
                "would already show 'The application did not respond'",
                inter.id,
                late,
                fd.initial_response_timeout,
            )
            return r.error(r.UNKNOWN_INTERACTION, f"answered after {late:.1f}s")
        kind = body.get("type")
        data = body.get("data") or {}
        if kind not in ALLOWED_CALLBACKS.get(inter.type, ()):
            return r.invalid_form(
                f"callback type {kind} is not valid for interaction type {inter.type}"
            )
        msg: Message | None = None
        if kind == 4:
            msg = inter.original = self._message(inter, data, uploads)
        elif kind == 5:
            flags = LOADING | (int(data.get("flags") or 0) & EPHEMERAL)
            msg = inter.original = self._message(inter, {}, [], flags=flags)
        elif kind in (6, 7):
            msg = inter.original = inter.source
            if kind == 7:
                apply_edit(fd, msg, data, uploads)
                fd.dispatch_message("MESSAGE_UPDATE", msg)
        inter.response_type = kind
        inter.callbacks.append({**body, "files": [u.filename for u in uploads]})
        await inter.acknowledged_now()
        if msg is not None and kind != 6:
            await inter.shown(msg)
        await fd.gateway.flush()
        if request.query.get("with_response") not in ("1", "true", "True"):
            return r.no_content()
        answer: dict[str, Any] = {
            "interaction": {"id": str(inter.id), "type": inter.type},
            "resource": {"type": kind},
        }
        if msg is not None and kind != 6:
            answer["interaction"].update(
                {
                    "response_message_id": str(msg.id),
                    "response_message_loading": bool(msg.flags & LOADING),
                    "response_message_ephemeral": bool(msg.flags & EPHEMERAL),
                }
            )
        if kind in (4, 7):
            answer["resource"]["message"] = payloads.message(fd, msg)
        return r.ok(answer)

    def _interaction(self, request: web.Request) -> FakeInteraction:
        if request.match_info["app"] != str(self.fd.application_id):
            raise r.DiscordError(r.UNKNOWN_WEBHOOK)
        inter = self.fd.interactions_by_token.get(request.match_info["token"])
        if inter is None or not inter.token_valid():
            raise r.DiscordError(r.INVALID_WEBHOOK_TOKEN)
        return inter

    def _target(self, inter: FakeInteraction, request: web.Request) -> Message:
        ref = request.match_info["message"]
        if ref == "@original":
            target = inter.original
        else:
            target = next((m for m in inter.produced if str(m.id) == ref), None)
        if target is None or target.deleted:
            raise r.DiscordError(r.UNKNOWN_MESSAGE)
        return target

    async def execute(self, request: web.Request) -> web.Response:
        inter = self._interaction(request)
        body, uploads = await self.fd.body(request)
        if not inter.acknowledged:
            return r.error(r.UNKNOWN_WEBHOOK, "follow-up sent before the interaction was answered")
        original = inter.original
        if inter.response_type == 5 and original is not None and original.flags & LOADING:
            apply_edit(self.fd, original, body, uploads)
            msg = original
            self.fd.dispatch_message("MESSAGE_UPDATE", msg)
        else:
            msg = self._message(inter, body, uploads)
            inter.followups.append(msg)
        await inter.shown(msg)
        await self.fd.gateway.flush()
        if request.query.get("wait") in ("1", "true", "True"):
            return r.ok(payloads.message(self.fd, msg))
        return r.no_content()

    async def get_message(self, request: web.Request) -> web.Response:
        inter = self._interaction(request)
        return r.ok(payloads.message(self.fd, self._target(inter, request)))

    async def edit_message(self, request: web.Request) -> web.Response:
        inter = self._interaction(request)
        target = self._target(inter, request)
        body, uploads = await self.fd.body(request)
        apply_edit(self.fd, target, body, uploads)
        self.fd.dispatch_message("MESSAGE_UPDATE", target)
        await inter.shown(target)
        await self.fd.gateway.flush()
        return r.ok(payloads.message(self.fd, target))

    async def delete_message(self, request: web.Request) -> web.Response:
        inter = self._interaction(request)
        target = self._target(inter, request)
        await self.fd.delete_message(target)
        return r.no_content()
