"""The cheap start-up checks: the token's shape, then Discord itself, before any heavy work.

Loading the model can mean a 600 MB download and migrating the database writes a file; a missing,
mistyped or revoked token, or a Message Content intent left off in the portal, must cost seconds
and say what to do, not surface after all that.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import discord
import yarl

from retrieval.config import Settings
from retrieval.errors import ClipfindError, ConfigError

TOKEN_REQUIRED = (
    "DISCORD_TOKEN is required: put your bot token in .env (Developer Portal → your application "
    "→ Bot → Reset Token), see .env.example"
)
TOKEN_MALFORMED = (
    "DISCORD_TOKEN is not shaped like a bot token (three parts joined by dots, about 70 "
    "characters): copy the token from the Developer Portal → your application → Bot → Reset "
    "Token, not the application id, public key or client secret"
)
TOKEN_PREFIXED = "DISCORD_TOKEN must be the token alone, without the 'Bot ' in front of it"
INTENT_REFUSED = (
    "Discord refused the Message Content intent, without which it sends no attachments. Enable "
    "it in the Discord Developer Portal: your application → Bot → Privileged Gateway Intents → "
    "Message Content Intent, then start the bot again."
)
TOKEN_REFUSED = (
    "Discord rejected DISCORD_TOKEN. Copy the bot token again from the Developer Portal."
)
# What the gateway's close codes for shards mean to the operator.
SHARD_REFUSED = {
    4010: (
        "Discord refused the shard this process asked for (close code 4010): every process "
        "must have the same SHARD_COUNT, and SHARD_IDS below it."
    ),
    4011: (
        "Discord requires more shards for this bot's servers (close code 4011): unset "
        "SHARD_COUNT to use the count Discord recommends, or raise it (on every process, with "
        "SHARD_IDS split anew)."
    ),
}

# base64(bot id) . timestamp . HMAC; the first part may come from standard or URL-safe base64.
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_\-+/=]{16,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{20,}$")
# What the bot needs in a channel: to see it and read its history. It answers through
# interactions, which need no channel permission.
PERMISSIONS = discord.Permissions(view_channel=True, read_message_history=True)
SCOPES = ("bot", "applications.commands")
LOGIN_TIMEOUT_S = 30.0


class DiscordRefused(ClipfindError):
    """Discord refused the token or the intents, or could not be asked."""

    reason = "discord_refused"


@dataclass(frozen=True)
class DiscordApp:
    """What Discord said about the application behind the token."""

    application_id: int
    name: str
    guild_count: int

    @property
    def invite_url(self) -> str:
        return invite_url(self.application_id)


def invite_url(application_id: int) -> str:
    return discord.utils.oauth_url(application_id, permissions=PERMISSIONS, scopes=SCOPES)


def apply_endpoints(settings: Settings) -> None:
    """Route Discord traffic through the configured REST base and gateway (proxies, tests)."""
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base.rstrip("/")
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def token_of(settings: Settings) -> str:
    """The token when it is present and shaped like one; ConfigError with the fix otherwise."""
    if settings.discord_token is None:
        raise ConfigError(TOKEN_REQUIRED)
    token = settings.discord_token.get_secret_value()
    if token.lower().startswith("bot "):
        raise ConfigError(TOKEN_PREFIXED)
    if not _TOKEN_SHAPE.match(token):
        raise ConfigError(TOKEN_MALFORMED)
    return token


@contextlib.asynccontextmanager
async def logging_in() -> AsyncIterator[None]:
    """A login to Discord's REST API, its refusals and silences raised as DiscordRefused with the
    sentence an operator acts on; given LOGIN_TIMEOUT_S, since a black-holed network would
    otherwise keep the operator waiting for minutes."""
    try:
        async with asyncio.timeout(LOGIN_TIMEOUT_S):
            yield
    except discord.LoginFailure:
        raise DiscordRefused(TOKEN_REFUSED) from None
    except discord.HTTPException as exc:
        raise DiscordRefused(
            f"Discord answered the login with HTTP {exc.status} ({exc.text or 'no detail'}); "
            "try again in a few minutes"
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise DiscordRefused(
            f"cannot reach Discord at {discord.http.Route.BASE}: "
            f"{str(exc) or f'no answer in {LOGIN_TIMEOUT_S:g} s'}; check this machine's "
            "network (and DISCORD_API_BASE if set)"
        ) from None


async def check_with_discord(settings: Settings) -> DiscordApp:
    """Log in over REST (two requests, no gateway) and read the application's intent flags.

    The portal's Message Content switch shows in the application's flags (the _LIMITED flag for
    bots in under 100 servers), so a refused intent is known before connecting to the gateway.
    """
    token = token_of(settings)
    apply_endpoints(settings)
    # Only REST is used; the guilds intent just keeps discord.py from warning about its absence.
    client = discord.Client(intents=discord.Intents(guilds=True))
    async with client, logging_in():
        await client.login(token)
        app = client.application
    assert app is not None  # login() fetches it
    flags = app.flags
    if not (flags.gateway_message_content or flags.gateway_message_content_limited):
        raise DiscordRefused(INTENT_REFUSED)
    return DiscordApp(application_id=app.id, name=app.name, guild_count=app.approximate_guild_count)
