"""Discord API v10 JSON shapes, complete enough that discord.py never misses a key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .ids import iso, snowflake_seconds
from .media import IS_ANIMATED
from .models import (
    CATEGORY,
    STAGE,
    VOICE,
    Channel,
    Guild,
    Member,
    Message,
    Role,
    StoredAttachment,
    User,
)
from .permissions import channel_permissions

if TYPE_CHECKING:
    from .server import FakeDiscord

LOADING = 1 << 7
EPHEMERAL = 1 << 6
SUPPRESS_EMBEDS = 1 << 2


def user(u: User) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(u.id),
        "username": u.name,
        "discriminator": u.discriminator,
        "global_name": u.global_name,
        "avatar": None,
        "avatar_decoration_data": None,
        "banner": None,
        "accent_color": None,
        "public_flags": 0,
        "flags": 0,
        "collectibles": None,
        "display_name_styles": None,
        "primary_guild": None,
        "clan": None,
    }
    if u.bot:
        data["bot"] = True
    return data


def member(m: Member, *, with_user: bool = True, permissions: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "roles": [str(r.id) for r in m.roles],
        "nick": m.nick,
        "avatar": None,
        "banner": None,
        "joined_at": iso(m.joined_at),
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "pending": False,
        "flags": 0,
        "communication_disabled_until": None,
        "avatar_decoration_data": None,
        "unusual_dm_activity_until": None,
    }
    if with_user:
        data["user"] = user(m.user)
    if permissions is not None:
        data["permissions"] = str(permissions)
    return data


def role(r: Role) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(r.id),
        "name": r.name,
        "description": None,
        "permissions": str(r.permissions),
        "position": r.position,
        "color": r.color,
        "colors": {"primary_color": r.color, "secondary_color": None, "tertiary_color": None},
        "hoist": r.hoist,
        "managed": r.bot_id is not None,
        "mentionable": r.mentionable,
        "icon": None,
        "unicode_emoji": None,
        "flags": 0,
    }
    if r.bot_id is not None:
        data["tags"] = {"bot_id": str(r.bot_id)}
    return data


def thread_metadata(t: Channel) -> dict[str, Any]:
    data = {
        "archived": t.archived,
        "auto_archive_duration": 1440,
        "archive_timestamp": iso(t.archive_timestamp),
        "locked": t.locked,
        "create_timestamp": iso(t.created_at),
    }
    if t.private:
        data["invitable"] = True
    return data


def thread_member(t: Channel, user_id: int) -> dict[str, Any]:
    return {
        "id": str(t.id),
        "user_id": str(user_id),
        "join_timestamp": iso(t.member_ids[user_id]),
        "flags": 0,
        "muted": False,
        "mute_config": None,
    }


def channel(
    c: Channel, *, bot_id: int | None = None, permissions: int | None = None
) -> dict[str, Any]:
    """A guild channel or thread; `bot_id` adds the thread `member` entry when the bot joined."""
    last = c.last_message_id
    data: dict[str, Any] = {
        "id": str(c.id),
        "type": c.type,
        "guild_id": str(c.guild.id),
        "name": c.name,
        "parent_id": str(c.parent.id) if c.parent else None,
        "flags": 0,
        "rate_limit_per_user": 0,
    }
    if c.is_thread:
        data.update(
            {
                "owner_id": str(c.owner_id),
                "last_message_id": str(last) if last else None,
                "message_count": len(c.history()),
                "total_message_sent": len(c.messages),
                "member_count": min(len(c.member_ids), 50),
                "thread_metadata": thread_metadata(c),
                "applied_tags": [],
            }
        )
        if bot_id is not None and bot_id in c.member_ids:
            data["member"] = {
                "id": str(c.id),
                "user_id": str(bot_id),
                "join_timestamp": iso(c.member_ids[bot_id]),
                "flags": 0,
            }
    else:
        data.update(
            {
                "position": c.position,
                "nsfw": c.nsfw,
                "permission_overwrites": [o.payload() for o in c.overwrites],
            }
        )
        if c.type in (VOICE, STAGE):
            data.update(
                {
                    "last_message_id": str(last) if last else None,
                    "bitrate": 64000,
                    "user_limit": 0,
                    "rtc_region": None,
                    "video_quality_mode": 1,
                }
            )
            if c.type == STAGE:
                data["topic"] = c.topic
        elif c.type != CATEGORY:
            data.update(
                {
                    "topic": c.topic,
                    "last_message_id": str(last) if last else None,
                    "last_pin_timestamp": None,
                    "default_auto_archive_duration": 1440,
                    "default_thread_rate_limit_per_user": 0,
                    "icon_emoji": None,
                    "theme_color": None,
                }
            )
    if permissions is not None:
        data["permissions"] = str(permissions)
    return data


def guild(g: Guild) -> dict[str, Any]:
    """The guild object as GET /guilds/{id} returns it (no channels or members)."""
    return {
        "id": str(g.id),
        "name": g.name,
        "icon": None,
        "icon_hash": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": str(g.owner_id),
        "region": "deprecated",
        "afk_channel_id": None,
        "afk_timeout": 300,
        "widget_enabled": False,
        "widget_channel_id": None,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "roles": [role(r) for r in g.roles.values()],
        "emojis": [],
        "stickers": [],
        "features": [],
        "mfa_level": 0,
        "application_id": None,
        "system_channel_id": None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "safety_alerts_channel_id": None,
        "max_presences": None,
        "max_members": 500000,
        "vanity_url_code": None,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": "en-US",
        "max_video_channel_users": 25,
        "max_stage_video_channel_users": 50,
        "nsfw_level": 0,
        "nsfw": False,
        "premium_progress_bar_enabled": False,
        "welcome_screen": None,
        "incidents_data": None,
        "hub_type": None,
        "latest_onboarding_question_id": None,
        "home_header": None,
        "inventory_settings": None,
    }


def guild_create(
    fd: FakeDiscord, g: Guild, *, all_members: bool, joined: bool = False
) -> dict[str, Any]:
    """GUILD_CREATE; `joined` for a guild the bot just joined, which carries no
    `unavailable` key (discord.py then fires on_guild_join, not on_guild_available)."""
    bot = fd.bot_user
    bot_member = g.bot_member
    members = list(g.members.values()) if all_members else [bot_member]
    threads = [
        t for t in g.threads.values() if not t.deleted and not t.archived and fd.bot_can_view(t)
    ]
    data = guild(g)
    data.update(
        {
            "joined_at": iso(bot_member.joined_at),
            "large": len(g.members) >= 250,
            "member_count": len(g.members),
            "lazy": True,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "embedded_activities": [],
            "activity_instances": [],
            "application_command_counts": {},
            "members": [member(m) for m in members],
            "channels": [channel(c) for c in g.channels.values() if not c.deleted],
            "threads": [channel(t, bot_id=bot.id) for t in threads],
        }
    )
    if not joined:
        data["unavailable"] = False
    return data


def attachment(a: StoredAttachment) -> dict[str, Any]:
    url = a.url
    data: dict[str, Any] = {
        "id": str(a.id),
        "filename": a.filename,
        "size": a.size,
        "url": url,
        "proxy_url": a.cdn.proxy_url(url),
        "content_type": a.content_type,
        "flags": IS_ANIMATED if a.animated else 0,
    }
    if a.width is not None:
        data.update(
            {"width": a.width, "height": a.height, "placeholder": "", "placeholder_version": 1}
        )
    if a.description is not None:
        data["description"] = a.description
    if a.ephemeral:
        data["ephemeral"] = True
    return data


def message(
    fd: FakeDiscord, m: Message, *, content: bool = True, gateway: bool = False
) -> dict[str, Any]:
    """A message; `content=False` blanks what the message-content intent guards."""
    data: dict[str, Any] = {
        "id": str(m.id),
        "channel_id": str(m.channel.id),
        "type": m.type,
        "author": user(m.author),
        "content": m.content if content else "",
        "timestamp": iso(snowflake_seconds(m.id)),
        "edited_timestamp": iso(m.edited_at),
        "tts": m.tts,
        "mention_everyone": m.mention_everyone,
        "mentions": [user(u) for u in m.mentions],
        "mention_roles": [str(r) for r in m.mention_roles],
        "attachments": [attachment(a) for a in m.attachments] if content else [],
        # A member (or the bot) hiding the previews: Discord then sends none at all.
        "embeds": [dict(e) for e in m.embeds] if content and not m.flags & SUPPRESS_EMBEDS else [],
        "components": list(m.components) if content else [],
        "pinned": False,
        "flags": m.flags,
        "reactions": [],
    }
    if m.webhook_id is not None:
        data["webhook_id"] = str(m.webhook_id)
    if m.application_id is not None:
        data["application_id"] = str(m.application_id)
    if m.interaction is not None:
        data["interaction_metadata"] = m.interaction
        data["interaction"] = {
            "id": m.interaction["id"],
            "type": m.interaction["type"],
            "name": m.interaction.get("name", ""),
            "user": m.interaction["user"],
        }
    if m.message_reference is not None:
        data["message_reference"] = m.message_reference
    if m.channel.is_thread:
        data["position"] = len([x for x in m.channel.messages if x < m.id])
    if gateway:
        data["guild_id"] = str(m.guild.id)
        author_member = m.guild.members.get(m.author.id)
        # Plain webhook messages have no member; interaction responses carry the bot's.
        if author_member is not None and (m.webhook_id is None or m.interaction is not None):
            data["member"] = member(author_member, with_user=False)
    return data


def application(fd: FakeDiscord) -> dict[str, Any]:
    owner = user(fd.owner_user)
    return {
        "id": str(fd.application_id),
        "name": fd.bot_user.name,
        "icon": None,
        "description": "",
        "summary": "",
        "type": None,
        "hook": True,
        "bot": user(fd.bot_user),
        "bot_public": True,
        "bot_require_code_grant": False,
        "verify_key": "0" * 64,
        "flags": fd.application_flags,
        "owner": owner,
        "team": None,
        "is_monetized": False,
        "is_verified": False,
        "is_discoverable": False,
        "rpc_origins": [],
        "redirect_uris": [],
        "interactions_endpoint_url": None,
        "role_connections_verification_url": None,
        "tags": [],
        "install_params": None,
        "integration_types_config": {"0": {}},
        "approximate_guild_count": len(fd.guilds),
        "approximate_user_install_count": 0,
        "guild_id": None,
        "primary_sku_id": None,
        "slug": None,
        "cover_image": None,
        "custom_install_url": None,
        "terms_of_service_url": None,
        "privacy_policy_url": None,
    }


def me(fd: FakeDiscord) -> dict[str, Any]:
    data = user(fd.bot_user)
    data.update(
        {
            "mfa_enabled": True,
            "locale": "en-US",
            "premium_type": 0,
            "verified": True,
            "email": None,
            "bio": "",
            "banner_color": None,
        }
    )
    return data


def ready(fd: FakeDiscord, session_id: str, resume_url: str, guilds: list[Guild]) -> dict[str, Any]:
    return {
        "v": 10,
        "user": me(fd),
        "user_settings": {},
        "session_type": "normal",
        "session_id": session_id,
        "resume_gateway_url": resume_url,
        "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
        "private_channels": [],
        "presences": [],
        "relationships": [],
        "guild_join_requests": [],
        "geo_ordered_rtc_regions": ["rotterdam"],
        "auth": {},
        "application": {"id": str(fd.application_id), "flags": fd.application_flags},
        "_trace": ['["fakediscord-gateway",{"micros":0}]'],
    }


def interaction_channel(fd: FakeDiscord, c: Channel, m: Member) -> dict[str, Any]:
    return channel(c, bot_id=fd.bot_user.id, permissions=channel_permissions(c, m))
