"""The Discord stand-in, driven by plain discord.py clients (not the project's bot)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands
from PIL import Image

from tests.fakediscord import Attachment, FakeDiscord, Overwrite, P
from tests.fakediscord.permissions import channel_permissions


def png(color: str = "red", size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
async def fd(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
        monkeypatch.setattr(
            discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url)
        )
        yield fake


@pytest.fixture
def world(fd: FakeDiscord) -> Any:
    guild = fd.add_guild("Test guild")
    mods = guild.add_role("mods", permissions=discord.Permissions(manage_messages=True).value)
    memes = guild.add_text_channel("memes")
    alice = guild.add_member("alice", roles=[mods])
    return guild, mods, memes, alice


def client_with(content: bool = True, **kwargs: Any) -> discord.Client:
    intents = discord.Intents.default()
    intents.message_content = content
    return discord.Client(intents=intents, guild_ready_timeout=0.05, **kwargs)


@contextlib.asynccontextmanager
async def running(client: discord.Client, fd: FakeDiscord) -> AsyncIterator[discord.Client]:
    task = asyncio.create_task(client.start(fd.token))
    try:
        await fd.wait_ready(timeout=5)
        await asyncio.wait_for(client.wait_until_ready(), 5)
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(task, 5)


def catch_messages(client: discord.Client) -> asyncio.Queue[discord.Message]:
    queue: asyncio.Queue[discord.Message] = asyncio.Queue()

    @client.event
    async def on_message(message: discord.Message) -> None:
        await queue.put(message)

    return queue


@contextlib.asynccontextmanager
async def received(
    fd: FakeDiscord, channel: Any, member: Any, content: str = "", **message: Any
) -> AsyncIterator[discord.Message]:
    """A message a member posts, as a plain discord.py client receives it (the client runs
    until the block ends, so the message's REST calls still work)."""
    client = client_with()
    inbox = catch_messages(client)
    async with running(client, fd):
        await fd.post_message(channel, member, content, **message)
        yield await asyncio.wait_for(inbox.get(), 5)


async def test_login_ready_and_guild_cache(fd: FakeDiscord, world: Any) -> None:
    guild, mods, memes, alice = world
    thread = guild.add_thread(memes, "cats", members=[alice])
    client = client_with()
    async with running(client, fd):
        cached = client.get_guild(guild.id)
        assert client.user.id == fd.bot_user.id and client.application_id == fd.application_id
        assert [c.name for c in cached.text_channels] == ["memes"]
        assert {r.name for r in cached.roles} == {"@everyone", "clipfind", "mods"}
        assert cached.get_thread(thread.id).parent_id == memes.id
        assert cached.me.guild_permissions.read_message_history
        assert discord.utils.snowflake_time(memes.id).year >= 2024
    assert fd.identify_payloads[0]["intents"] == client.intents.value
    assert {(q.method, q.path) for q in fd.requests} >= {
        ("GET", "/users/@me"),
        ("GET", "/oauth2/applications/@me"),
    }


async def test_heartbeats_follow_the_announced_interval_and_are_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with FakeDiscord(heartbeat_interval_ms=100) as fake:
        monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
        monkeypatch.setattr(
            discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url)
        )
        client = client_with()
        async with running(client, fake):
            session = fake.gateway.connected()[0]
            await asyncio.sleep(0.65)
            beats = list(session.heartbeats)
            assert client.latency < 1.0  # ACKs were read
    # discord.py beats once at HELLO, then every interval: 100 ms, not Discord's 41.25 s.
    assert len(beats) >= 4
    gaps = [b - a for a, b in zip(beats[1:], beats[2:], strict=False)]
    assert all(0.09 <= gap <= 0.5 for gap in gaps), gaps


async def test_bad_token_is_refused(fd: FakeDiscord) -> None:
    client = client_with()
    with pytest.raises(discord.LoginFailure):
        await client.login("not-the-token")
    await client.close()


async def test_message_attachment_and_embed_fetch_from_cdn(fd: FakeDiscord, world: Any) -> None:
    guild, mods, memes, alice = world
    data = png()
    linked = fd.host_external_image("pic.png", png("blue", (5, 5)), "image/png")
    client = client_with()
    inbox = catch_messages(client)
    async with running(client, fd):
        await fd.post_message(
            memes,
            alice,
            "look",
            attachments=[Attachment("cat.png", data)],
            embeds=[fd.image_embed(linked)],
        )
        msg = await asyncio.wait_for(inbox.get(), 5)
        att = msg.attachments[0]
        assert (msg.content, att.filename, att.width, att.height) == ("look", "cat.png", 8, 6)
        assert att.content_type == "image/png" and att.size == len(data)
        assert await att.read() == data
        assert msg.embeds[0].type == "image" and msg.embeds[0].thumbnail.width == 5
        async with aiohttp.ClientSession() as http:
            async with http.get(msg.embeds[0].thumbnail.proxy_url) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
            fd.expire_attachment_links()
            async with http.get(att.url) as resp:
                assert resp.status == 404  # an expired signed link, as Discord answers
        fresh = await msg.channel.fetch_message(msg.id)
        assert await fresh.attachments[0].read() == data


async def test_cdn_redirect_fault_and_unproxied_preview(fd: FakeDiscord) -> None:
    elsewhere = "http://127.0.0.1:9/far/away.png"  # not hosted here, and nothing listens there
    fd.set_cdn_fault(elsewhere, redirect_to=elsewhere)
    assert "proxy_url" not in fd.image_embed(elsewhere, proxied=False)["thumbnail"]
    proxied = fd.image_embed(elsewhere)["thumbnail"]["proxy_url"]
    assert proxied.startswith(fd.cdn_origin + "/")
    async with aiohttp.ClientSession() as http, http.get(proxied, allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == elsewhere
    assert fd.cdn.hits[-1] == ("/far/away.png", 302)


async def test_suppressed_previews_are_sent_without_embeds(fd: FakeDiscord, world: Any) -> None:
    guild, mods, memes, alice = world
    linked = fd.host_external_image("pic.png", png("blue", (5, 5)), "image/png")
    client = client_with()
    edits: asyncio.Queue[discord.RawMessageUpdateEvent] = asyncio.Queue()

    @client.event
    async def on_raw_message_edit(payload: discord.RawMessageUpdateEvent) -> None:
        await edits.put(payload)

    async with running(client, fd):
        posted = await fd.post_message(memes, alice, linked, embeds=[fd.image_embed(linked)])
        await fd.suppress_embeds(posted)
        edit = await asyncio.wait_for(edits.get(), 5)
        assert edit.message.flags.suppress_embeds and edit.message.embeds == []
        channel = client.get_channel(memes.id)
        assert (await channel.fetch_message(posted.id)).embeds == []
        await fd.suppress_embeds(posted, suppressed=False, dispatch=False)
        shown = await channel.fetch_message(posted.id)
        assert not shown.flags.suppress_embeds and shown.embeds[0].thumbnail.url == linked


async def test_without_content_intent_content_and_attachments_are_blank(
    fd: FakeDiscord, world: Any
) -> None:
    guild, mods, memes, alice = world
    client = client_with(content=False)
    inbox = catch_messages(client)
    async with running(client, fd):
        await fd.post_message(memes, alice, "look", attachments=[Attachment("cat.png", png())])
        blank = await asyncio.wait_for(inbox.get(), 5)
        await fd.post_message(memes, alice, f"{fd.bot_user.mention} look")
        mentioned = await asyncio.wait_for(inbox.get(), 5)
    assert (blank.content, blank.attachments, blank.embeds) == ("", [], [])
    assert mentioned.content.endswith("look")


async def test_privileged_intent_disabled_in_portal_closes_4014(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with FakeDiscord(message_content_enabled=False) as fake:
        monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
        monkeypatch.setattr(
            discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url)
        )
        client = client_with(content=True)
        with pytest.raises(discord.PrivilegedIntentsRequired):
            await asyncio.wait_for(client.start(fake.token), 5)
        await client.close()


def find_tree(client: discord.Client, mode: str) -> app_commands.CommandTree:
    tree = app_commands.CommandTree(client)

    @tree.command(name="find", description="Find images")
    async def find(
        interaction: discord.Interaction, query: str, count: app_commands.Range[int, 1, 10] = 5
    ) -> None:
        if mode == "defer":
            await interaction.response.defer()
            await interaction.followup.send(f"{count} results for {query}")
        else:
            await interaction.response.send_message(f"{count} for {query}", ephemeral=True)

    return tree


@pytest.mark.parametrize("mode", ["defer", "direct"])
async def test_slash_command_reply_seen(fd: FakeDiscord, world: Any, mode: str) -> None:
    guild, mods, memes, alice = world
    client = client_with()
    tree = find_tree(client, mode)
    async with running(client, fd):
        tree.copy_global_to(guild=discord.Object(guild.id))
        synced = await tree.sync(guild=discord.Object(guild.id))
        assert synced[0].name == "find" and synced[0].id
        inter = await fd.invoke_slash(
            guild, memes, alice, "find", {"query": "a red circle", "count": 3}
        )
        reply = await inter.wait_reply(timeout=5)
        with pytest.raises(ValueError):
            await fd.invoke_slash(guild, memes, alice, "find", {"query": "x", "count": 99})
    options = fd.synced_commands[guild.id][0]["options"]
    assert [o["name"] for o in options] == ["query", "count"]
    if mode == "defer":
        assert inter.deferred and [c["type"] for c in inter.callbacks] == [5]
        assert reply["content"] == "3 results for a red circle" and not reply["flags"] & 64
        assert fd.messages_in(memes)[-1]["content"] == reply["content"]
    else:
        assert not inter.deferred and reply["content"] == "3 for a red circle"
        assert reply["flags"] & 64 and fd.messages_in(memes) == []


async def test_button_click_and_message_command(fd: FakeDiscord, world: Any) -> None:
    guild, mods, memes, alice = world
    client = client_with()
    tree = app_commands.CommandTree(client)

    class More(discord.ui.View):
        @discord.ui.button(label="More", custom_id="more")
        async def more(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
            await interaction.response.edit_message(content="page 2", view=None)

    @tree.context_menu(name="Find similar images")
    async def similar(interaction: discord.Interaction, message: discord.Message) -> None:
        names = ",".join(a.filename for a in message.attachments)
        await interaction.response.send_message(f"like {names}", view=More())

    async with running(client, fd):
        await tree.sync()
        target = await fd.post_message(memes, alice, "", attachments=[Attachment("a.png", png())])
        inter = await fd.invoke_message_command(guild, memes, alice, "Find similar images", target)
        reply = await inter.wait_reply(timeout=5)
        assert reply["content"] == "like a.png"
        assert reply["components"][0]["components"][0]["custom_id"] == "more"
        click = await fd.click(reply, "more", alice)
        page = await click.wait_reply(timeout=5)
    assert page["id"] == reply["id"] and page["content"] == "page 2"
    assert page["components"] == [] and click.callbacks[0]["type"] == 7


async def test_history_pages_newest_first(fd: FakeDiscord, world: Any) -> None:
    guild, mods, memes, alice = world
    sent = [fd.add_history_message(memes, alice, f"m{i}") for i in range(230)]
    client = client_with()
    async with running(client, fd):
        channel = client.get_channel(memes.id)
        newest_first = [m.content async for m in channel.history(limit=None)]
        after = [
            m.content async for m in channel.history(limit=None, after=discord.Object(sent[99].id))
        ]
        around = [m.id async for m in channel.history(limit=5, around=discord.Object(sent[50].id))]
    assert newest_first == [f"m{i}" for i in reversed(range(230))]
    assert after == [f"m{i}" for i in range(100, 230)]
    assert sorted(around) == [m.id for m in sent[48:53]]
    befores = [q.query.get("before") for q in fd.requests if q.path.endswith("/messages")]
    assert len(befores) >= 3  # 230 messages take three pages of 100


async def test_permissions_match_client_computation(fd: FakeDiscord, world: Any) -> None:
    guild, mods, memes, alice = world
    secret = guild.add_text_channel(
        "secret",
        overwrites=[
            Overwrite(mods, deny=P.READ_MESSAGE_HISTORY),
            Overwrite(guild.everyone, allow=P.SEND_POLLS),
        ],
    )
    client = client_with()
    tree = app_commands.CommandTree(client)
    seen: dict[str, int] = {}

    @tree.command(name="perms", description="Show permissions")
    async def perms(interaction: discord.Interaction) -> None:
        seen["sent"] = interaction.permissions.value
        seen["client"] = interaction.channel.permissions_for(interaction.user).value
        seen["app"] = interaction.app_permissions.value
        seen["client_app"] = interaction.channel.permissions_for(interaction.guild.me).value
        await interaction.response.send_message("ok")

    async with running(client, fd):
        await tree.sync()
        inter = await fd.invoke_slash(guild, secret, alice, "perms")
        await inter.wait_reply(timeout=5)
    computed = channel_permissions(secret, alice)
    assert seen["sent"] == computed and not computed & P.READ_MESSAGE_HISTORY
    # discord.py drops voice-only bits in text channels; Discord's payload keeps them.
    voice = discord.Permissions.voice().value
    assert seen["client"] == computed & ~voice
    assert seen["client_app"] == seen["app"] & ~voice


async def test_ephemeral_deferral_followup_file_and_autocomplete(
    fd: FakeDiscord, world: Any
) -> None:
    guild, mods, memes, alice = world
    client = client_with()
    tree = app_commands.CommandTree(client)

    async def channels(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=n, value=n) for n in ("memes", "art") if current in n]

    @tree.command(name="show", description="Show a picture")
    @app_commands.autocomplete(where=channels)
    async def show(interaction: discord.Interaction, where: str, pic: discord.Attachment) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await pic.read()
        # After a deferral the first follow-up replaces "thinking...", staying ephemeral.
        await interaction.followup.send(
            f"{where}: {len(data)} bytes", file=discord.File(io.BytesIO(data), "back.png")
        )
        await interaction.followup.send("public", ephemeral=False)

    async with running(client, fd):
        await tree.sync()
        assert await fd.autocomplete(
            guild, memes, alice, "show", {"where": "ar"}, focused="where"
        ) == [{"name": "art", "value": "art"}]
        data = png()
        inter = await fd.invoke_slash(
            guild, memes, alice, "show", {"where": "art", "pic": Attachment("in.png", data)}
        )
        first = await inter.wait_reply(timeout=5, predicate=lambda m: "bytes" in m["content"])
        last = await inter.wait_reply(timeout=5, predicate=lambda m: m["content"] == "public")
        async with (
            aiohttp.ClientSession() as http,
            http.get(first["attachments"][0]["url"]) as resp,
        ):
            assert await resp.read() == data
    assert first["content"] == f"art: {len(data)} bytes" and first["flags"] & 64
    assert first["id"] == str(inter.original.id) and not last["flags"] & 64
    assert [m["content"] for m in inter.messages] == [first["content"], "public"]
    assert fd.requests[-1].files == [] and any(q.files == ["back.png"] for q in fd.requests)


async def test_members_intent_threads_and_reconnect(fd: FakeDiscord, world: Any) -> None:
    guild, mods, memes, alice = world
    archived = guild.add_thread(memes, "old", archived=True)
    intents = discord.Intents.default()
    intents.members = True
    client = discord.Client(intents=intents, guild_ready_timeout=0.05)
    events: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def no_identify_pause(shard_id: int | None, *, initial: bool = False) -> None:
        pass  # discord.py sleeps 5 s before every re-IDENTIFY; not what this test measures

    client.before_identify_hook = no_identify_pause

    @client.event
    async def on_thread_create(thread: discord.Thread) -> None:
        await events.put(("create", thread.name))

    @client.event
    async def on_thread_join(thread: discord.Thread) -> None:
        await events.put(("join", thread.name))

    @client.event
    async def on_member_update(before: discord.Member, after: discord.Member) -> None:
        await events.put(("roles", ",".join(r.name for r in after.roles[1:])))

    async with running(client, fd):
        cached = client.get_guild(guild.id)
        # GUILD_CREATE carried only the bot; the rest came through GUILD_MEMBERS_CHUNK.
        assert cached.chunked and {m.name for m in cached.members} >= {"alice", "clipfind"}
        guild.add_thread(memes, "open")
        private = guild.add_thread(memes, "hidden", private=True, members=[alice])
        await fd.add_thread_members(private, [guild.bot_member])
        # Being added to a private thread is THREAD_CREATE plus THREAD_MEMBERS_UPDATE, and
        # discord.py fires on_thread_join for each.
        assert [await asyncio.wait_for(events.get(), 5) for _ in range(3)] == [
            ("create", "open"),
            ("join", "hidden"),
            ("join", "hidden"),
        ]
        await fd.update_member_roles(guild, alice, [])
        assert await asyncio.wait_for(events.get(), 5) == ("roles", "")
        listed = [t.name async for t in client.get_channel(memes.id).archived_threads()]
        assert listed == [archived.name]
        await fd.reconnect_clients()
        await asyncio.sleep(0.2)
        await fd.wait_ready(timeout=5)
        await asyncio.wait_for(client.wait_until_ready(), 5)
        assert {t.name for t in client.get_guild(guild.id).threads} == {"open", "hidden"}
    assert fd.gateway.ready_count == 2 and len(fd.identify_payloads) == 2


async def test_lifecycle_events_and_token_expiry(fd: FakeDiscord, world: Any) -> None:
    guild, mods, memes, alice = world
    client = client_with()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    tree = app_commands.CommandTree(client)
    proceed = asyncio.Event()

    @tree.command(name="slow", description="Answers late")
    async def slow(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await proceed.wait()
        try:
            await interaction.followup.send("too late")
        except discord.HTTPException as exc:
            await events.put(("followup", exc.status))

    @client.event
    async def on_raw_message_delete(payload: discord.RawMessageDeleteEvent) -> None:
        await events.put(("delete", payload.message_id))

    @client.event
    async def on_guild_remove(removed: discord.Guild) -> None:
        await events.put(("guild_remove", removed.id))

    async with running(client, fd):
        await tree.sync()
        msg = await fd.post_message(memes, alice, "x", attachments=[Attachment("a.png", png())])
        url = msg.attachments[0].url
        await fd.delete_message(msg)
        assert await asyncio.wait_for(events.get(), 5) == ("delete", msg.id)
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 404
        inter = await fd.invoke_slash(guild, memes, alice, "slow")
        assert await inter.wait_acknowledged(timeout=5) == 5
        fd.advance_clock(16 * 60)
        proceed.set()
        assert await asyncio.wait_for(events.get(), 5) == ("followup", 401)
        assert inter.deferred
        await fd.remove_bot_from_guild(guild)
        assert await asyncio.wait_for(events.get(), 5) == ("guild_remove", guild.id)


async def test_cdn_faults_and_unknown_routes(fd: FakeDiscord, world: Any) -> None:
    guild, mods, memes, alice = world
    msg = fd.add_history_message(memes, alice, attachments=[Attachment("a.png", png())])
    url = msg.attachments[0].url
    fd.set_cdn_fault(url, fail_first=2, content_type="text/html", declared_length=1 << 20)
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(3):
            async with http.get(url) as resp:
                statuses.append(resp.status)
                body = await resp.read()
        assert statuses == [500, 500, 200]
        assert resp.headers["Content-Type"] == "text/html" and len(body) == 1 << 20
        headers = {"Authorization": f"Bot {fd.token}"}
        async with http.get(fd.api_base + "/no/such/route", headers=headers) as resp:
            assert resp.status == 404 and (await resp.json())["code"] == 0
        async with http.get(fd.api_base + "/users/@me") as resp:
            assert resp.status == 401
    assert fd.unknown_routes == ["GET /api/v10/no/such/route"]
    fd.unknown_routes.clear()  # expected here; keep the shutdown log quiet
