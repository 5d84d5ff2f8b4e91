"""Search: `/find` by description or picture, and "Find similar images" on a message."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.permissions import Access, Viewpoint, Visibility, asked_in_nsfw
from bot.refs import image_refs
from bot.render import query_problem, quoted, results_message
from bot.views import ResultsView
from retrieval.errors import FetchError
from retrieval.pictures import ImageError
from retrieval.search import (
    BadQuery,
    Question,
    ResultPager,
    Sort,
    WordsQuery,
    arranger,
    date_range,
    fit_query,
    image_vector,
    parse_words,
    push_away,
)
from retrieval.store import SearchHit, SearchScope

if TYPE_CHECKING:
    import numpy as np

    from bot.client import ClipfindBot

log = logging.getLogger(__name__)

NOTHING_INDEXED = (
    "I haven't indexed any images you can see in this server yet. Images posted from now on "
    "are indexed as they arrive; try again once a few have been posted."
)
NO_MATCH = "No images you can see in this server match that yet."
NO_MATCH_FILTERED = "No images you can see match that with these filters."
# A public answer shows only what every reader of the channel may see. The sentence is the same
# whether or not the asker alone could see matches, so it gives nothing away.
NO_MATCH_PUBLIC = (
    "No images that everyone in this channel can see match that. Search without `public` to "
    "see results only you can see."
)
EMPTY_QUERY = (
    "Tell me what to look for, e.g. `/find query: a red car`, or search with a picture: "
    "`/find query: like this image: <file>`. `/clipfind help` explains every option."
)
NO_IMAGE = "That message has no image I can search with."
ONLY_EXCLUDED = (
    "Tell me what to look for as well as what to leave out, e.g. `/find query: a dog -cat`: "
    'a word with `-` leaves out pictures that say it, `"quoted words"` must be in the picture.'
)
NOT_READING = (
    "Words inside pictures are not read on this bot (OCR is off), so quotes and `-words` "
    "only guide what the pictures look like."
)
SIMILAR = "Find similar images"
_QUERY_PROBLEMS = (BadQuery, ImageError, FetchError)


class Search(commands.Cog):
    def __init__(self, bot: ClipfindBot) -> None:
        self.bot = bot
        self.access = Access(bot, bot.store)
        self.similar_menu = app_commands.guild_only(
            app_commands.ContextMenu(name=SIMILAR, callback=self.find_similar)
        )

    async def cog_load(self) -> None:
        # Context menus cannot live inside a cog class; the cog adds and removes its own.
        self.bot.tree.add_command(self.similar_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(SIMILAR, type=discord.AppCommandType.message)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.access.forget_message(payload.message_id)

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        for message_id in payload.message_ids:
            self.access.forget_message(message_id)

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        # The images it shows may have changed: confirm them afresh.
        self.access.forget_message(payload.message_id)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        # A new gateway session: deletions during the gap were never heard of.
        self.access.forget_all()

    @app_commands.command(name="find")
    @app_commands.guild_only()
    async def find(
        self,
        interaction: discord.Interaction,
        query: app_commands.Range[str, 1, 300],
        channel: app_commands.AppCommandChannel | app_commands.AppCommandThread | None = None,
        author: discord.User | None = None,
        after: app_commands.Range[str, 1, 40] | None = None,
        before: app_commands.Range[str, 1, 40] | None = None,
        sort: Literal["relevance", "newest", "oldest"] = "relevance",
        count: app_commands.Range[int, 1, 10] | None = None,
        image: discord.Attachment | None = None,
        public: bool = False,
    ) -> None:
        """Search this server's images by describing them.

        Parameters
        ----------
        query
            What the picture shows or says; "quoted words" must be in it, -word leaves out
        channel
            Only images from this channel, category or thread (a channel includes its threads)
        author
            Only images posted by this member
        after
            Only images posted on or after: a date (2025-03-01, UTC) or 7d, 2w, 3mo, yesterday
        before
            Only images posted before: a date (2025-03-01, UTC) or 7d, 2w, 3mo, yesterday
        sort
            relevance: best match first; newest or oldest: by date among the good matches
        count
            How many images per page (1-10); up to 100 results in pages
        image
            Search with this picture instead (the query then only labels the answer)
        public
            Post the results in the channel instead of only to you
        """
        # Defer first: the encode can wait behind an image batch, past Discord's 3 s.
        await interaction.response.defer(ephemeral=not public, thinking=True)
        text = query.strip()
        if not text:
            await interaction.followup.send(EMPTY_QUERY)
            return
        notes: list[str] = []
        words: WordsQuery | None = None
        try:
            start, end = date_range(after, before, now=discord.utils.utcnow())
            if image is not None:
                vector = await self._picture_vector(image.url, image.size)
                heading = f"Images like your picture **{quoted(image.filename, 60)}**"
            else:
                words = parse_words(text)
                if not words.clip_text:
                    raise BadQuery(ONLY_EXCLUDED)
                vector, fitted = await self._text_vector(words.clip_text, notes)
                if words.excluded:  # and away from what the left-out words look like
                    encode = self.bot.encoder.encode_text
                    vector = push_away(vector, [await encode(w) for w in words.excluded])
                # The words typed, unless the model read only a part of them (then that part).
                heading = f"Images for **{quoted(text if fitted == words.clip_text else fitted)}**"
                if not self.bot.settings.ocr:
                    if not words.plain:
                        notes.append(NOT_READING)
                    words = None
        except _QUERY_PROBLEMS as exc:
            await interaction.followup.send(query_problem(exc) or str(exc))
            return
        if sort != "relevance":
            notes.append(f"{sort.capitalize()} first, among the good matches.")
        await self._answer(
            interaction,
            vector,
            heading=heading,
            notes=notes,
            sort=sort,
            page_size=count,
            public=public,
            channel_id=channel.id if channel else None,
            words=words,
            author_id=author.id if author else None,
            after=start,
            before=end,
        )

    async def find_similar(self, interaction: discord.Interaction, message: discord.Message):
        """Images that look like the one in this message."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        refs = image_refs(message)
        if not refs:
            await interaction.followup.send(NO_IMAGE)
            return
        ref = refs[0]
        model_id = self.bot.encoder.model_id
        try:
            # An indexed image already has its vector: no download, no model.
            vector = (
                await self.bot.store.message_vectors(
                    message.id, model_id, guild_id=interaction.guild_id
                )
            ).get(ref.image_key)
            if vector is None:
                vector = await self._picture_vector(ref.url, ref.size)
        except _QUERY_PROBLEMS as exc:
            await interaction.followup.send(query_problem(exc) or str(exc))
            return
        notes = [f"Using the first of its {len(refs)} images."] if len(refs) > 1 else []
        await self._answer(
            interaction,
            vector,
            heading=f"Images like [this one]({message.jump_url})",
            notes=notes,
            exclude_message_id=message.id,
        )

    async def _text_vector(self, text: str, notes: list[str]) -> tuple[np.ndarray, str]:
        encoder = self.bot.encoder
        fitted, cut = fit_query(text, encoder.count_tokens, encoder.context_length)
        if cut:
            notes.append(
                f"Your description is longer than the model reads ({encoder.context_length} "
                "tokens); I searched for the part in bold."
            )
        return await encoder.encode_text(fitted), fitted

    async def _picture_vector(self, url: str, size: int | None) -> np.ndarray:
        settings = self.bot.settings
        data = await self.bot.fetcher.fetch(url, declared_size=size)
        return await image_vector(
            data,
            encoder=self.bot.encoder,
            spec=self.bot.services.model.spec,
            max_pixels=settings.max_image_pixels,
        )

    async def _answer(
        self,
        interaction: discord.Interaction,
        vector: np.ndarray,
        *,
        heading: str,
        notes: list[str],
        sort: Sort = "relevance",
        page_size: int | None = None,
        public: bool = False,
        channel_id: int | None = None,
        words: WordsQuery | None = None,
        **filters,
    ) -> None:
        guild, member = interaction.guild, interaction.user
        assert guild is not None and isinstance(member, discord.Member)
        if words is not None:  # applied inside the store's search, as the other filters
            filters |= {"words_all": words.phrases, "words_none": words.excluded}
        asked = Question(
            self.bot.store,
            vector,
            SearchScope(guild_id=guild.id, model_id=self.bot.encoder.model_id, **filters),
            words=words,
        )

        async def probe(seen: Visibility, threads: frozenset[int]) -> list[int]:
            return await asked.channels_holding(seen.within(channel_id, among=threads))

        # A public answer is read by everyone who can view its channel, not only the asker.
        viewpoint = Viewpoint(
            self.access,
            guild_id=guild.id,
            include_nsfw=asked_in_nsfw(interaction.channel),
            audience_id=interaction.channel_id if public else None,
            probe=probe,
        )
        seen = await viewpoint.renew(member, where=interaction.channel)

        async def fetch(k: int) -> list[SearchHit]:
            # The viewpoint as renewed by the latest press: every page is searched afresh.
            assert viewpoint.seen is not None
            return await asked.search(viewpoint.seen.within(channel_id), k)

        size = page_size or self.bot.settings.find_default_count
        pager = ResultPager(
            fetch=fetch,
            confirm=viewpoint.confirm,
            screen=viewpoint.screen,
            arrange=arranger(self.bot.store, sort, self.bot.settings.find_duplicate_threshold),
            page_size=size,
        )
        groups = await pager.page(0)
        if not groups:
            await interaction.followup.send(
                await self._nothing(seen, asked.scope, channel_id, public=public)
            )
            return

        def render(shown, index: int):
            return results_message(
                heading,
                shown,
                first_rank=index * size + 1,
                total=pager.known_total,
                more=pager.more_in_store,
                notes=notes,
                picture=self.access.picture,
            )

        async def recheck(press: discord.Interaction) -> None:
            await viewpoint.renew(press.user, where=press.channel)

        view = ResultsView(
            owner_id=member.id,
            pager=pager,
            render=render,
            recheck=recheck,
            origin=interaction,
            timeout=self.bot.settings.find_page_timeout_s,
        )
        content, embeds = render(groups, 0)
        if view.needed:
            await interaction.followup.send(content, embeds=embeds, view=view, wait=True)
        else:
            view.stop()
            await interaction.followup.send(content, embeds=embeds)

    async def _nothing(
        self, seen: Visibility, scope: SearchScope, channel_id: int | None, *, public: bool
    ) -> str:
        if public:
            return NO_MATCH_PUBLIC
        filtered = channel_id or scope.author_id or scope.after or scope.before
        filtered = filtered or scope.words_all or scope.words_none
        if filtered or scope.exclude_message_id:
            return NO_MATCH_FILTERED if filtered else NO_MATCH
        # Counted in the channels the member surely reads: whether hidden ones (private
        # threads whose membership was not confirmed) hold images is not theirs to learn.
        indexed = await self.bot.store.count(
            guild_id=scope.guild_id, model_id=scope.model_id, channel_ids=seen.channel_ids
        )
        return NO_MATCH if indexed else NOTHING_INDEXED


async def setup(bot: ClipfindBot) -> None:
    await bot.add_cog(Search(bot))
