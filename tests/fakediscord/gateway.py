"""The gateway websocket: HELLO, IDENTIFY/READY, GUILD_CREATE, heartbeats, dispatch.

Sharding as Discord does it: IDENTIFY may carry `shard: [id, count]`; that connection then hears
only of guilds with `(guild_id >> 22) % count == id` (DMs and other events without a guild go to
shard 0). Every IDENTIFY is recorded with its time and shard so a test can check the spacing
Discord demands: `max_concurrency` IDENTIFYs per 5 s, one per bucket `shard_id % max_concurrency`.

Frames go out as text JSON (discord.py only inflates binary frames, so asking for
zlib-stream is harmless). Each connection has one writer task fed by a queue, so
events reach a client in the order the stand-in produced them, and `flush()` can wait
until everything produced so far has been written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from . import payloads

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)

GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_PRESENCES = 1 << 8
GUILD_MESSAGES = 1 << 9
MESSAGE_CONTENT = 1 << 15

# Which intent a client needs to receive an event; events absent here always arrive.
EVENT_INTENT = {
    "GUILD_CREATE": GUILDS,
    "GUILD_UPDATE": GUILDS,
    "GUILD_DELETE": GUILDS,
    "GUILD_ROLE_CREATE": GUILDS,
    "GUILD_ROLE_UPDATE": GUILDS,
    "GUILD_ROLE_DELETE": GUILDS,
    "CHANNEL_CREATE": GUILDS,
    "CHANNEL_UPDATE": GUILDS,
    "CHANNEL_DELETE": GUILDS,
    "THREAD_CREATE": GUILDS,
    "THREAD_UPDATE": GUILDS,
    "THREAD_DELETE": GUILDS,
    "THREAD_LIST_SYNC": GUILDS,
    "THREAD_MEMBER_UPDATE": GUILDS,
    "THREAD_MEMBERS_UPDATE": GUILDS,
    "GUILD_MEMBER_ADD": GUILD_MEMBERS,
    "GUILD_MEMBER_UPDATE": GUILD_MEMBERS,
    "GUILD_MEMBER_REMOVE": GUILD_MEMBERS,
    "MESSAGE_CREATE": GUILD_MESSAGES,
    "MESSAGE_UPDATE": GUILD_MESSAGES,
    "MESSAGE_DELETE": GUILD_MESSAGES,
    "MESSAGE_DELETE_BULK": GUILD_MESSAGES,
}

HEARTBEAT_INTERVAL_MS = 41250
# Guilds above which Discord closes an unsharded connection with 4011.
MAX_GUILDS_PER_SHARD = 2500
# Events about a guild that name it `id` rather than `guild_id`.
_GUILD_EVENTS = frozenset({"GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE"})

# A payload, or a function choosing one per connection (None: that client gets nothing).
Payload = dict[str, Any] | Callable[["Session"], dict[str, Any] | None]


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard Discord sends a guild's events to."""
    return (guild_id >> 22) % shard_count


@dataclass(frozen=True)
class Identify:
    """One IDENTIFY as received: when (time.monotonic()) and for which shard."""

    at: float
    shard_id: int
    shard_count: int


def _guild_of(event: str, data: dict[str, Any]) -> int | None:
    gid = data.get("guild_id")
    if gid is None and event in _GUILD_EVENTS:
        gid = data.get("id")
    return None if gid is None else int(gid)


class Session:
    def __init__(self, gateway: Gateway, ws: web.WebSocketResponse) -> None:
        self.gateway = gateway
        self.ws = ws
        self.session_id = secrets.token_hex(16)
        self.intents: int | None = None  # set by IDENTIFY
        self.shard_id, self.shard_count = 0, 1  # set by IDENTIFY
        self.ready = False  # READY and every GUILD_CREATE written
        self.seq = 0
        self.queue: asyncio.Queue[dict[str, Any] | Callable[[], None]] = asyncio.Queue()
        self.heartbeat_interval_ms = gateway.fd.heartbeat_interval_ms
        self.heartbeats: list[float] = []  # time.monotonic() of each op 1 received
        self.writer = asyncio.create_task(self._write(), name="fakediscord-gateway-writer")

    def has(self, intent: int) -> bool:
        return bool(self.intents is not None and self.intents & intent)

    def owns(self, guild_id: int | None) -> bool:
        """Whether this connection hears of the guild (None: a DM, which goes to shard 0)."""
        if guild_id is None:
            return self.shard_id == 0
        return shard_of(guild_id, self.shard_count) == self.shard_id

    def send(self, op: int, d: Any, event: str | None = None) -> None:
        self.queue.put_nowait({"op": op, "d": d, "t": event})

    async def _write(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                if callable(item):
                    item()
                    continue
                if item["op"] == 0:
                    self.seq += 1
                seq = self.seq if item["op"] == 0 else None
                frame = {"op": item["op"], "d": item["d"], "s": seq, "t": item["t"]}
                if not self.ws.closed:
                    await self.ws.send_str(json.dumps(frame))
            except (ConnectionError, RuntimeError) as exc:
                log.debug("gateway write failed: %s", exc)
            finally:
                self.queue.task_done()

    def abandon(self) -> None:
        """Stop writing; drop what is queued so nobody waits on `flush()` forever."""
        self.writer.cancel()
        while not self.queue.empty():
            self.queue.get_nowait()
            self.queue.task_done()

    async def close(self, code: int, message: str) -> None:
        # Let queued frames go out first so a close never overtakes what preceded it.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.queue.join(), 2)
        await self.ws.close(code=code, message=message.encode())


class Gateway:
    def __init__(self, fd: FakeDiscord) -> None:
        self.fd = fd
        self.sessions: list[Session] = []
        self.identify_payloads: list[dict[str, Any]] = []
        self.identifies: list[Identify] = []  # the valid ones, in order of arrival
        self.resume_payloads: list[dict[str, Any]] = []  # every RESUME, each refused
        self.ready_count = 0
        self.ready_changed = asyncio.Condition()

    def connected(self) -> list[Session]:
        return [s for s in self.sessions if s.intents is not None and not s.ws.closed]

    def for_guild(self, guild_id: int | None) -> list[Session]:
        """The connections of the shard that hears of the guild (None: a DM, shard 0)."""
        return [s for s in self.connected() if s.owns(guild_id)]

    def dispatch(self, event: str, payload: Payload) -> None:
        """Send to every connection with the event's intent, on the shard of its guild."""
        need = EVENT_INTENT.get(event, 0)
        for session in self.connected():
            if need and not session.has(need):
                continue
            data = payload(session) if callable(payload) else payload
            if data is not None and session.owns(_guild_of(event, data)):
                session.send(0, data, event)

    async def flush(self) -> None:
        await asyncio.gather(*(s.queue.join() for s in self.sessions if not s.ws.closed))

    async def close(self) -> None:
        for session in list(self.sessions):
            if not session.ws.closed:
                await session.ws.close(code=1001, message=b"stand-in shutting down")
            session.abandon()
        await asyncio.gather(*(s.writer for s in self.sessions), return_exceptions=True)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        session = Session(self, ws)
        self.sessions.append(session)
        session.send(
            10, {"heartbeat_interval": session.heartbeat_interval_ms, "_trace": ["fakediscord"]}
        )
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    await session.close(4002, "Error while decoding payload.")
                    break
                await self._receive(session, frame)
        finally:
            session.abandon()
            if session.ready:
                await self._notify_ready()
        return ws

    async def _receive(self, session: Session, frame: dict[str, Any]) -> None:
        op, d = frame.get("op"), frame.get("d")
        log.debug("gateway %s received op %s", session.session_id[:6], op)
        if op == 1:
            session.heartbeats.append(time.monotonic())
            session.send(11, None)
        elif op == 2:
            await self._identify(session, d or {})
        elif op == 6:
            # Sessions are not kept; the client re-IDENTIFYs, which is what Discord often says too.
            self.resume_payloads.append(d or {})
            session.send(9, False)
        elif session.intents is None:
            await session.close(4003, "Not authenticated.")
        elif op == 8:
            self._request_members(session, d or {})
        elif op in (3, 4):
            pass  # presence and voice updates change nothing here
        else:
            log.error("fakediscord gateway: unknown opcode %r in %r", op, frame)
            await session.close(4001, "Unknown opcode.")

    async def _identify(self, session: Session, d: dict[str, Any]) -> None:
        fd = self.fd
        self.identify_payloads.append(d)
        if session.intents is not None:
            await session.close(4005, "Already authenticated.")
            return
        if d.get("token") != fd.token:
            await session.close(4004, "Authentication failed.")
            return
        intents = d.get("intents")
        if not isinstance(intents, int):
            await session.close(4013, "Invalid intent(s).")
            return
        if (
            intents
            & ~fd.enabled_privileged_intents()
            & (GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT)
        ):
            await session.close(4014, "Disallowed intent(s).")
            return
        shard = d.get("shard", [0, 1])
        if not _valid_shard(shard):
            await session.close(4010, "Invalid shard.")
            return
        session.shard_id, session.shard_count = shard
        guilds = [g for g in fd.guilds.values() if g.bot_is_member and session.owns(g.id)]
        if len(guilds) > fd.max_guilds_per_shard:
            await session.close(4011, "Sharding required.")
            return
        session.intents = intents
        self.identifies.append(Identify(time.monotonic(), *shard))
        resume_url = fd.gateway_url
        ready = payloads.ready(fd, session.session_id, resume_url, guilds)
        if "shard" in d:
            ready["shard"] = list(shard)
        session.send(0, ready, "READY")
        if session.has(GUILDS):
            for guild in guilds:
                # Without the presences intent Discord sends only the bot's own member.
                full = session.has(GUILD_PRESENCES) and session.has(GUILD_MEMBERS)
                session.send(0, payloads.guild_create(fd, guild, all_members=full), "GUILD_CREATE")
        session.queue.put_nowait(lambda: self._mark_ready(session))

    def _mark_ready(self, session: Session) -> None:
        session.ready = True
        self.ready_count += 1
        asyncio.get_running_loop().create_task(self._notify_ready())

    async def _notify_ready(self) -> None:
        async with self.ready_changed:
            self.ready_changed.notify_all()

    def _request_members(self, session: Session, d: dict[str, Any]) -> None:
        guild = self.fd.guilds.get(int(d.get("guild_id", 0)))
        if guild is None or not guild.bot_is_member or not session.owns(guild.id):
            return
        members = list(guild.members.values())
        wanted = {int(u) for u in d.get("user_ids") or []}
        if wanted:
            members = [m for m in members if m.id in wanted]
        elif d.get("query"):
            members = [m for m in members if m.name.lower().startswith(d["query"].lower())]
        if d.get("limit"):
            members = members[: d["limit"]]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [payloads.member(m) for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if wanted:
            chunk["not_found"] = [str(u) for u in wanted - {m.id for m in members}]
        if d.get("nonce"):
            chunk["nonce"] = d["nonce"]
        if d.get("presences"):
            chunk["presences"] = []
        session.send(0, chunk, "GUILD_MEMBERS_CHUNK")


def _valid_shard(shard: Any) -> bool:
    return (
        isinstance(shard, list | tuple)
        and len(shard) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
        and 0 <= shard[0] < shard[1]
    )
