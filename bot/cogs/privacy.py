"""Privacy: a member opts out of indexing (erasing what is stored), opts back in, or asks what
is stored about them. An opt-out is the person's wish, so it covers every server."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.error_replies import on_view_error
from retrieval.errors import StoreUnavailable

if TYPE_CHECKING:
    from bot.client import ClipfindBot

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_S = 120.0

ASK = (
    "**Opt out of clipfind?** I'll stop indexing the images you post, in every server I share "
    "with you (an opt-out is yours, not a server's), and delete what I've indexed of yours "
    "({images}). Your messages and images on Discord stay as they are. "
    "`/privacy opt-in` lets me index your new images again later; what is deleted now stays "
    "deleted."
)
OPTED_OUT = (
    "Done: you're opted out in every server, and I deleted {images} of yours from the index. "
    "`/privacy opt-in` undoes the opt-out for images you post from then on."
)
OPTED_OUT_DELETING = (
    "Done: you're opted out in every server, so I won't index or show your images. My database "
    "is unavailable right now, so deleting what I've indexed of yours waits for it: it happens "
    "as soon as it is back, you needn't ask again."
)
ALREADY_OUT = (
    "You're already opted out: I don't index your images in any server, and none are stored. "
    "`/privacy opt-in` lets me index the images you post from now on."
)
CANCELLED = "Nothing changed: I'll keep indexing your images."
EXPIRED = "This question expired and nothing changed. Run `/privacy opt-out` again if you like."
NOT_YOURS = "Only the member who ran `/privacy opt-out` can answer this."
OPTED_IN = (
    "Done: I'll index the images you post from now on, in every server I share with you. "
    "Images deleted when you opted out aren't restored."
)
NOT_OUT = "You're not opted out: I already index the images you post."


def images(n: int) -> str:
    return "no images" if n == 0 else "1 image" if n == 1 else f"{n} images"


class ConfirmOptOut(discord.ui.View):
    """Asks once, answers only its member, and tidies itself away when it expires."""

    def __init__(self, cog: Privacy, member_id: int) -> None:
        super().__init__(timeout=cog.confirm_timeout_s)
        self.cog = cog
        self.member_id = member_id
        self.prompt: discord.WebhookMessage | None = None  # set once sent; edited on expiry

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id == self.member_id:
            return True
        await interaction.response.send_message(NOT_YOURS, ephemeral=True)
        return False

    @discord.ui.button(label="Opt out and delete my images", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        await interaction.response.defer()  # deleting many images can outlast Discord's 3 s
        removed = await self.cog.opt_out(self.member_id)
        self.stop()  # only now: after a failure, pressing again retries
        said = OPTED_OUT_DELETING if removed is None else OPTED_OUT.format(images=images(removed))
        await interaction.edit_original_response(content=said, view=None)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        self.stop()
        await interaction.response.edit_message(content=CANCELLED, view=None)

    async def on_timeout(self) -> None:
        if self.prompt is None:
            return
        try:
            await self.prompt.edit(content=EXPIRED, view=None)
        except discord.HTTPException as exc:  # dismissed by the member, or the token expired
            log.debug("could not mark the opt-out question expired: %s", exc)

    async def on_error(
        self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item
    ) -> None:
        await on_view_error(interaction, error, item)


class Privacy(commands.Cog):
    privacy = app_commands.Group(
        name="privacy", description="Control whether clipfind indexes the images you post"
    )

    def __init__(self, bot: ClipfindBot) -> None:
        self.bot = bot
        self.confirm_timeout_s = CONFIRM_TIMEOUT_S

    async def opt_out(self, user_id: int) -> int | None:
        """Stop indexing the member first, so nothing new slips in, then erase everywhere.
        None: opted out, but the database went away before the deletion, which is made as soon
        as it is back (a member asking again would only find the opt-out recorded)."""
        await self.bot.policy.opt_out(user_id)
        erase = {
            "delete": lambda: self.bot.store.delete_author(guild_id=None, author_id=user_id),
            "what": f"member {user_id}'s images",
            "still": lambda: self.bot.policy.is_opted_out(user_id),
        }
        try:
            removed = await self.bot.eraser.erase(**erase)
        except StoreUnavailable as exc:
            if exc.refused:
                raise
            log.warning("user %s opted out; deleting their images waits for the database", user_id)
            self.bot.eraser.erase_when_back(**erase)
            return None
        await self.bot.confirm_saved()
        log.info("user %s opted out; %d images deleted", user_id, removed)
        return removed

    @privacy.command(name="opt-out")
    async def opt_out_command(self, interaction: discord.Interaction) -> None:
        """Stop indexing your images in every server and delete the ones already indexed."""
        user_id = interaction.user.id
        if self.bot.policy.is_opted_out(user_id):
            await interaction.response.send_message(ALREADY_OUT, ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        count = await self.bot.store.count_author(author_id=user_id)
        view = ConfirmOptOut(self, user_id)
        view.prompt = await interaction.followup.send(
            ASK.format(images=images(count)), view=view, ephemeral=True, wait=True
        )

    @privacy.command(name="opt-in")
    async def opt_in_command(self, interaction: discord.Interaction) -> None:
        """Let clipfind index the images you post again, in every server."""
        user_id = interaction.user.id
        if not self.bot.policy.is_opted_out(user_id):
            await interaction.response.send_message(NOT_OUT, ephemeral=True)
            return
        await self.bot.policy.opt_in(user_id)
        await self.bot.confirm_saved()
        log.info("user %s opted back in", user_id)
        await interaction.response.send_message(OPTED_IN, ephemeral=True)

    @privacy.command(name="status")
    async def status_command(self, interaction: discord.Interaction) -> None:
        """See what clipfind stores about you and whether you're opted out."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.followup.send(await self.status_text(interaction))

    async def status_text(self, interaction: discord.Interaction) -> str:
        user_id = interaction.user.id
        total = await self.bot.store.count_author(author_id=user_id)
        where = "across all servers"
        if interaction.guild is not None:
            guild_id = interaction.guild.id
            here = await self.bot.store.count_author(author_id=user_id, guild_id=guild_id)
            where = f"across all servers, {here} of them in this one"
        worded = await self.bot.store.count_words(author_id=user_id)
        if self.bot.policy.is_opted_out(user_id):
            state = "**You're opted out:** I don't index the images you post, in any server."
            hint = "`/privacy opt-in` undoes that."
        else:
            state = "**You're not opted out:** I index the images you post where I can read them."
            hint = "`/privacy opt-out` stops that and deletes what is stored."
        return (
            f"{state}\n**Stored:** {images(total)} of yours {where}. For each: the ids of the "
            "server, channel, message, image and you, when it was posted, its file name and link, "
            "a hash of its bytes and a vector the search compares; and which servers you have "
            "images in, so an opt-out looks there. Never the image itself.\n"
            f"**Words read from your pictures:** {images(worded)} of yours have text I read in "
            "them (OCR), kept so a search finds them by what they say; deleted with the image."
            f"\n{hint}"
        )


async def setup(bot: ClipfindBot) -> None:
    await bot.add_cog(Privacy(bot))
