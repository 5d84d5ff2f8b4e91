"""Buttons that page through search results, for the member who searched only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
import discord

from bot.error_replies import on_view_error
from retrieval.search import ResultGroup, ResultPager

log = logging.getLogger(__name__)

NOTHING_LEFT = "None of these results can be shown here any more. Run `/find` again to search."
NOT_YOURS = "Only the member who searched can turn these pages. Run `/find` to search yourself."

Render = Callable[[Sequence[ResultGroup], int], tuple[str, list[discord.Embed]]]
# Works out afresh what the member pressing may see, before a page is worked out for them.
Recheck = Callable[[discord.Interaction], Awaitable[None]]


class ResultsView(discord.ui.View):
    """Previous / Next over a ResultPager; ``render(groups, page)`` builds the message.

    Each press is checked again (``recheck``): roles, channels and threads change while an
    answer stays open, and the page is worked out afresh, back as well as forward. Presses are
    taken one at a time, so two quick ones never interleave. ``timeout`` (FIND_PAGE_TIMEOUT_S)
    restarts at every press, which brings a fresh interaction token: the buttons are disabled
    with a token that still works.
    """

    def __init__(
        self,
        *,
        owner_id: int,
        pager: ResultPager,
        render: Render,
        recheck: Recheck,
        origin: discord.Interaction,
        timeout: float,
    ) -> None:
        super().__init__(timeout=timeout)
        self.owner_id = owner_id
        self.pager = pager
        self.render = render
        self.recheck = recheck
        self.index = 0
        self._turning = asyncio.Lock()
        self._latest = origin  # the interaction whose token edits the answer
        self.refresh()

    def refresh(self) -> None:
        self.back.disabled = self.index == 0
        self.forward.disabled = not self.pager.has_page(self.index + 1)

    @property
    def needed(self) -> bool:
        """Buttons only when there is somewhere to go."""
        return not (self.back.disabled and self.forward.disabled)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id == self.owner_id:
            return True
        await interaction.response.send_message(NOT_YOURS, ephemeral=True)
        return False

    @discord.ui.button(label="Previous", emoji="◀️", custom_id="find:previous")
    async def back(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        await self._turn(interaction, -1)

    @discord.ui.button(label="Next", emoji="▶️", custom_id="find:next")
    async def forward(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        await self._turn(interaction, +1)

    async def _turn(self, interaction: discord.Interaction, step: int) -> None:
        # Confirming a page may take a few REST reads: acknowledge first, edit after.
        await interaction.response.defer()
        async with self._turning:  # the page to go to is known only once the last turn is done
            self._latest = interaction
            await self.recheck(interaction)
            index = max(self.index + step, 0)
            groups = await self.pager.page(index)
            while not groups and index > 0:  # the rest turned out gone or hidden: step back
                last = max(self.pager.known_total - 1, 0) // self.pager.page_size
                index = min(index - 1, last)
                groups = await self.pager.page(index)
            self.index = index
            self.refresh()
            content, embeds = self.render(groups, index) if groups else (NOTHING_LEFT, [])
            await interaction.edit_original_response(content=content, embeds=embeds, view=self)

    async def on_timeout(self) -> None:
        if self._latest.client.is_closed():
            return  # stopping: the HTTP session is closed or closing, and the answer outlives us
        for item in self.children:
            if isinstance(item, discord.ui.Button):
                item.disabled = True
        try:
            await self._latest.edit_original_response(view=self)
        except (discord.HTTPException, aiohttp.ClientError) as exc:
            # The answer was dismissed or deleted, or the stop closed the session meanwhile;
            # nothing is left to disable.
            log.debug("could not disable the result buttons: %s", exc)

    async def on_error(
        self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item
    ) -> None:
        await on_view_error(interaction, error, item)
