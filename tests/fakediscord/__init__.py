"""A Discord stand-in on loopback (REST API v10, gateway websocket, CDN) for end-to-end tests.

The real discord.py client talks to it after two settings::

    discord.http.Route.BASE = fd.api_base                     # http://127.0.0.1:PORT/api/v10
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fd.gateway_url)

Payloads are complete API v10 shapes; snowflakes are real (timestamp-based) and strings
in JSON; errors carry Discord's codes. Routes the stand-in lacks answer 404 and are logged
at ERROR (and listed in `fd.unknown_routes`) so a missing endpoint is obvious.

Setting up a world
------------------
::

    async with FakeDiscord(message_content_enabled=True) as fd:   # 127.0.0.1, free port
        fd.api_base, fd.gateway_url, fd.token, fd.application_id, fd.bot_user
        guild = fd.add_guild("Test guild", bot_permissions=DEFAULT_BOT)
        mods = guild.add_role("mods", permissions=discord.Permissions(manage_guild=True).value)
        memes = guild.add_text_channel("memes", nsfw=False, overwrites=[
            Overwrite(guild.everyone, deny=P.READ_MESSAGE_HISTORY),
            Overwrite(mods, allow=P.READ_MESSAGE_HISTORY)])
        alice = guild.add_member("alice", roles=[mods])       # .id, .user, .name, .mention
        thread = guild.add_thread(memes, "cats", private=True, members=[alice])

Constructor options: `message_content_enabled`, `members_enabled`, `presences_enabled`
(the portal switches; asking IDENTIFY for a disabled one closes with 4014),
`bot_name`, `initial_response_timeout` (3.0 s; None disables), `recommended_shards` and
`max_concurrency` (what GET /gateway/bot answers; 1 and 1), `max_guilds_per_shard` (2,500: more
guilds on one connection close it with 4011), `clock`, `heartbeat_interval_ms` (what HELLO
announces; Discord's 41250 by default).
`fd.add_guild(name, shard=(id, count))` gives the guild an id on that shard; without it guilds
still get ids from distinct milliseconds, so they spread over shards.
`guild.add_*` dispatch CHANNEL_CREATE/GUILD_MEMBER_ADD/... when a client is connected;
pass `dispatch=False` for changes made while the bot was offline.

Members acting
--------------
- `await fd.post_message(channel, member, content, attachments=[Attachment(name, bytes,
  "image/png")], embeds=[fd.image_embed(url)], delayed_embeds=False) -> Message`
  (stored and dispatched; `delayed_embeds=True` sends the embeds in a later MESSAGE_UPDATE,
  as Discord's link unfurling does).
- `fd.add_history_message(channel, member, content, ..., at=datetime|None) -> Message`
  (stored only).
- `fd.host_external_image(name, data, content_type) -> url`; `fd.image_embed(url, rich=False,
  proxied=True)` (`proxied=False`: no `proxy_url`). The external host shares the CDN's origin
  `fd.cdn_origin` (what a client is told media may come from), so it counts as Discord's.
  `fd.rehost_external_image(url, data, content_type)`: the site swaps its picture; an embed's
  `proxy_url` keeps serving the copy made when it was unfurled.
- Media proxy: an attachment's `proxy_url` (`/media/...`) and a preview's (`/external/...`)
  answer `?width=&height=` (`format=webp|png|jpeg`, `quality=1..100|lossless`, `animated=true`)
  with a resized copy, as `media.discordapp.net` does (see `media.py`: aspect kept, never
  larger, 415 without dimensions, first frame unless the format animates). Each variant is
  made once (`fd.cdn.variants.made`); `fd.cdn.resized` lists (path, size) per resized answer.
  Animated images carry Discord's IS_ANIMATED flag (`1 << 5`) in attachments and embeds.
- `await fd.invoke_slash(guild, channel, member, "find" | ("clipfind", "channels", "exclude"),
  {"query": "a red circle", "count": 3}) -> FakeInteraction`; option values may be
  str/int/float/bool, Member/User, Channel, Role, Attachment.
- `await fd.invoke_message_command(guild, channel, member, "Find similar images", message)`,
  `await fd.invoke_user_command(guild, channel, member, name, target_member)`.
- `await fd.click(message_or_reply_dict, custom_id, member, values=None) -> FakeInteraction`.
- `await fd.autocomplete(guild, channel, member, name, {"where": "ar"}, focused="where")
  -> list of choices` (the type-8 answer).

What the bot did
----------------
- `await inter.wait_reply(timeout=30, predicate=None) -> dict` (content, embeds, components,
  flags, attachments, ...): the message the member sees, however the bot got there
  (type 4/7 callback, or deferral then @original edit or follow-up).
- `inter.deferred`, `inter.callbacks`, `inter.messages`, `inter.response_type`,
  `await inter.wait_acknowledged(timeout=)`, `inter.expire_token()`.
- `fd.synced_commands` ({None: global, guild_id: [...]}), `fd.requests`
  (RecordedRequest(method, path, query, json, files)), `fd.identify_payloads`,
  `fd.gateway.resume_payloads` (every RESUME; each is refused with INVALID_SESSION),
  `fd.identifies` (Identify(at=time.monotonic(), shard_id, shard_count) per accepted IDENTIFY),
  `fd.messages_in(channel)`, `await fd.wait_for_message(predicate, channel=, timeout=)`,
  `fd.cdn.hits` ((path, status) per CDN request), `fd.cdn.requests_for(url)` ((monotonic
  time, status) per request for one URL), `fd.unknown_routes`,
  `fd.gateway.sessions[i].heartbeats` (`time.monotonic()` of each heartbeat received).

Lifecycle (all async, all take `dispatch=False` for offline changes)
-------------------------------------------------------------------
`delete_message`, `bulk_delete`, `edit_message`, `suppress_embeds`, `delete_channel`,
`delete_thread`, `archive_thread`, `add_thread_members`, `remove_thread_members`,
`update_channel_overwrites`, `remove_bot_from_guild`, `add_bot_to_guild`,
`remove_member`, `update_member_roles`, `update_role`; plus `expire_attachment_links()`,
`advance_clock(seconds)`, `set_cdn_fault(url, delay=, fail_first=, fail_status=,
content_type=, declared_length=, stall=, redirect_to=)`, `fd.cdn.go_down(status=503,
retry_after=None)` (every CDN request fails until `fd.cdn.recover()`),
`fd.rate_limit(method, path_regex, retry_after=)` (matching REST calls answer 429, as Discord
does, until `fd.lift_rate_limits()`), `fd.hold(method, path_regex, after=)` (matching REST
calls answered for the first `after`, then held until the returned hold's `release()`),
`fd.sent_sequences()` (the last event's sequence number written to each gateway session),
`await fd.wait_ready(timeout=)`,
`await fd.flush()`, `await fd.reconnect_clients()` (op 7; the RESUME that follows is refused,
so the client IDENTIFYs again and discord.py builds new guild objects: a new session).

Discord behaviour reproduced on purpose
---------------------------------------
- Without MESSAGE_CONTENT requested, guild MESSAGE_CREATE/UPDATE have empty content,
  attachments, embeds and components (unless the bot is mentioned or wrote it); REST
  reads are blank when the portal switch is off.
- GUILD_CREATE lists only the bot's own member unless both GUILD_MEMBERS and
  GUILD_PRESENCES were asked; discord.py then fetches the rest with op 8 (answered).
- A bare image link's embed is `type: "image"` with the picture in `thumbnail`.
- An interaction must be answered within 3 s; its token works for 15 minutes. The first
  follow-up after a type-5 deferral replaces the "thinking" message and keeps its
  ephemeral flag. Non-ephemeral responses are channel messages the bot also receives.
- Attachment URLs are signed and expire; deleting a message makes its files 404.
- A message flagged SUPPRESS_EMBEDS is sent with no embeds (REST and gateway alike).
- Sharding: IDENTIFY's `shard: [id, count]` (invalid: close 4010) picks which guilds a
  connection hears of, `(guild_id >> 22) % count == id`: READY, GUILD_CREATE, every guild event
  and interaction; DMs go to shard 0. The stand-in records IDENTIFY times but does not refuse
  fast ones: a test checks the spacing.
"""

from .cdn import Fault
from .interactions import FakeInteraction
from .models import Attachment, Channel, Guild, Member, Message, Role, StoredAttachment, User
from .permissions import ALL, DEFAULT_BOT, DEFAULT_EVERYONE, Overwrite, P, Permission
from .server import FakeDiscord, RecordedRequest

__all__ = [
    "ALL",
    "DEFAULT_BOT",
    "DEFAULT_EVERYONE",
    "Attachment",
    "Channel",
    "FakeDiscord",
    "FakeInteraction",
    "Fault",
    "Guild",
    "Member",
    "Message",
    "Overwrite",
    "P",
    "Permission",
    "RecordedRequest",
    "Role",
    "StoredAttachment",
    "User",
]
