"""Errors → one polite sentence for the user and one log line with the cause for the operator."""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from retrieval.errors import DatabaseLost, ModelUnavailable, StoreUnavailable

log = logging.getLogger(__name__)

SORRY = "Something went wrong on my side; the bot's operators can see what in the logs."
NOT_SAVED = (
    "That could not be saved: the index's database was lost while I was running, so the change "
    "is not kept. I'll stop shortly for the bot's operators to restore it; please try again "
    "once I'm back."
)


def user_message(error: Exception) -> str:
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, StoreUnavailable):
        return "The image index is unavailable right now. Please try again in a minute."
    if isinstance(error, DatabaseLost):
        return NOT_SAVED
    if isinstance(error, ModelUnavailable):
        return "The image model is not loaded right now. Please try again later."
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command works in servers only."
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down a little: try again in {error.retry_after:.0f} s."
    if isinstance(error, app_commands.MissingPermissions):
        return f"This needs the {_permission_names(error.missing_permissions)} permission."
    if isinstance(error, app_commands.CheckFailure):
        return "You can't use this command here."
    return SORRY


async def on_app_command_error(
    interaction: discord.Interaction, error: app_commands.AppCommandError
) -> None:
    original = getattr(error, "original", error)
    name = interaction.command.qualified_name if interaction.command else "?"
    if isinstance(original, StoreUnavailable | ModelUnavailable | DatabaseLost):
        log.error("/%s failed: %s", name, original)
    elif isinstance(error, app_commands.CheckFailure):
        log.info("/%s refused for user %s: %s", name, interaction.user.id, error)
    else:
        log.error("/%s failed", name, exc_info=original)
    await _tell(interaction, user_message(error))


async def on_view_error(
    interaction: discord.Interaction, error: Exception, item: discord.ui.Item
) -> None:
    """The same for buttons and menus (a view's ``on_error``)."""
    what = getattr(item, "label", None) or getattr(item, "custom_id", "?")
    if isinstance(error, StoreUnavailable | ModelUnavailable | DatabaseLost):
        log.error("button %r failed: %s", what, error)
    else:
        log.error("button %r failed", what, exc_info=error)
    await _tell(interaction, user_message(error))


async def _tell(interaction: discord.Interaction, message: str) -> None:
    try:
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not tell the user about the error: %s", exc)


def _permission_names(names: list[str]) -> str:
    # Discord's own wording: manage_guild is "Manage Server".
    return " and ".join(n.replace("_", " ").replace("guild", "server").title() for n in names)
