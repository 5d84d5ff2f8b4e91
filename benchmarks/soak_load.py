"""The soak's mixed load: members posting pictures (attachments and link previews), editing and
deleting messages, searching, opting out and back in, and now and then a hostile input. One task
changes the stand-in and the ledger (``run``); searches are answered in tasks of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.soak_world import (
    EDITED_OUT,
    HIDDEN,
    REFUSED,
    Ledger,
    Picture,
    Posted,
    Poster,
    World,
    attachment_pictures,
    embed_pictures,
)
from bot.cogs import privacy
from tests.fakediscord import Attachment
from tests.helpers import picture, result_ids
from tests.tinyclip.shapes import caption, draw, pairs, png_bytes

# What a member does, by weight (hostile inputs replace a share of the posts: ``hostile``).
ACTIONS = {"post": 40, "link": 14, "edit": 12, "delete": 10, "find": 22, "privacy": 1}
# The members who opt out and back in (the first ones): an opt-out erases all they posted, so
# the others' pictures keep most of the index for the end's checks.
PRIVACY_MINDED = 2
# The hostile inputs, in turn: the first four are pictures with a bad name or link, which are
# cleaned and stored; the last two cannot be, and are refused and counted.
HOSTILE = ("nul-name", "nul-link", "surrogate", "long-name", "corrupt", "bad-port")
CLEANED = HOSTILE[:4]
PICTURE_PX = 64  # the tiny model's input size: no time spent drawing or scaling more
FINDS_IN_FLIGHT = 4
ANSWER_S = 30.0  # how long a member waits for an answer
PRIVACY_PATIENCE_S = 120.0  # how long a member keeps asking before the soak calls it a failure
CLASSES = list(pairs())


@dataclass
class Tally:
    """What the load did and saw."""

    actions: Counter[str] = field(default_factory=Counter)
    hostile: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)  # /find answers, by kind
    find_s: list[float] = field(default_factory=list)  # seconds to each answer with results
    shown_forbidden: list[str] = field(default_factory=list)  # a result that must not show
    privacy_failures: list[str] = field(default_factory=list)  # an opt-out/in never confirmed
    privacy_retries: int = 0
    pictures_posted: int = 0


class Load:
    def __init__(self, world: World, *, rate: float, hostile: float, seed: int) -> None:
        self.world, self.fd = world, world.fd
        self.rate, self.hostile_share = rate, hostile
        self.rng = random.Random(seed)
        self.ledger = Ledger()
        self.tally = Tally()
        self._seed = 0
        self._finds: set[asyncio.Task] = set()
        self._bursts = 0
        self._toggling: set[Poster] = set()
        self._toggles: set[asyncio.Task] = set()

    def outage(self) -> None:
        """PostgreSQL has just been stopped: the next thing done is an ``outage_burst``."""
        self._bursts += 1

    async def run(
        self, *, seconds: float, until: Callable[[], bool] = lambda: True, most_s: float = 0.0
    ) -> None:
        """Act at ``rate`` actions per second for ``seconds`` (late actions are not skipped), and
        on until ``until()`` holds, for at most ``most_s`` seconds more."""
        started = time.monotonic()
        n = 0
        while (now := time.monotonic()) - started < seconds or (
            not until() and now - started < seconds + most_s
        ):
            await asyncio.sleep(max(0.0, started + n / self.rate - now))
            n += 1
            while self._bursts:
                self._bursts -= 1
                await self.outage_burst()
            action = self.rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
            if action in ("post", "link") and self.rng.random() < self.hostile_share:
                action = "hostile"
            self.tally.actions[action] += 1
            await getattr(self, action)()

    async def finished(self) -> None:
        """Wait for the searches and privacy commands still waiting for their answer."""
        await asyncio.gather(*self._finds, *self._toggles)

    # -- posting ----------------------------------------------------------------------------

    def _picture(self, *, name: str | None = None) -> Attachment:
        self._seed += 1
        made = picture(*self.rng.choice(CLASSES), self._seed, size=PICTURE_PX)
        return Attachment(name or made.filename, made.data, made.content_type)

    def _place(self, poster: Poster):
        channel = self.rng.choice(self.world.channels)
        return channel, poster.members[channel.guild.id]

    def _poster(self) -> Poster:
        """A member to act: not one whose opt-out or opt-in is waiting for its answer (what they
        posted meanwhile would be neither in nor out)."""
        return self.rng.choice([p for p in self.world.posters if p not in self._toggling])

    async def post(self) -> None:
        poster = self._poster()
        channel, member = self._place(poster)
        count = 2 if self.rng.random() < 0.3 else 1
        message = await self.fd.post_message(
            channel, member, "", attachments=[self._picture() for _ in range(count)]
        )
        self.ledger.posted(message, poster, attachment_pictures(message))
        self.tally.pictures_posted += count

    def _hosted_link(self, name: str | None = None) -> tuple[str, dict]:
        self._seed += 1
        colour, shape = self.rng.choice(CLASSES)
        image = draw(colour, shape, size=PICTURE_PX, rng=self._seed)
        url = self.fd.host_external_image(
            name or f"{colour}-{shape}-{self._seed}.png", png_bytes(image), "image/png"
        )
        return url, self.fd.image_embed(url)

    async def link(self) -> None:
        poster = self._poster()
        channel, member = self._place(poster)
        url, embed = self._hosted_link()
        # Half unfurled later, as Discord does: the preview comes in an update.
        message = await self.fd.post_message(
            channel, member, url, embeds=[embed], delayed_embeds=self.rng.random() < 0.5
        )
        self.ledger.posted(message, poster, embed_pictures([embed]))
        self.tally.pictures_posted += 1

    async def hostile(self) -> None:
        kind = HOSTILE[sum(self.tally.hostile.values()) % len(HOSTILE)]
        self.tally.hostile[kind] += 1
        mallory = self.world.mallory
        channel, member = self._place(mallory)
        content, attachments, embeds = "", [], []
        if kind == "nul-name":
            attachments = [self._picture(name="pic\x00ture.png")]
        elif kind == "long-name":
            attachments = [self._picture(name="x" * 10_000 + ".png")]
        elif kind == "corrupt":
            whole = self._picture().data
            attachments = [Attachment("broken.png", whole[: len(whole) // 2], "image/png")]
        elif kind == "nul-link":
            content, embed = self._hosted_link("pre\x00view.png")
            embeds = [embed]
        elif kind == "surrogate":
            url, embed = self._hosted_link()
            embed["url"] = embed["thumbnail"]["url"] = url + "?q=\ud800"
            embeds = [embed]
        else:  # bad-port
            content = "https://poster.example:99999/evil.png"
            embeds = [self.fd.image_embed(content)]
        message = await self.fd.post_message(
            channel, member, content, attachments=attachments, embeds=embeds
        )
        pictures = attachment_pictures(message, hostile=kind) + embed_pictures(embeds, hostile=kind)
        if kind not in CLEANED:
            for p in pictures:
                p.fate = REFUSED
        self.ledger.posted(message, mallory, pictures)

    # -- editing and deleting ---------------------------------------------------------------

    def _alive(self, *, editable: bool = False) -> list[Posted]:
        return [
            post
            for post in self.ledger.posts.values()
            if post.alive
            and post.author is not self.world.mallory
            and post.author not in self._toggling
            and (not editable or post.epoch == post.author.epoch)
        ]

    async def edit(self) -> None:
        posts = self._alive(editable=True)
        if not posts:
            return
        post = self.rng.choice(posts)
        attachments, embeds = _kinds(post)
        choice = self.rng.random()
        if len(attachments) >= 2:
            await self._remove_attachment(post)
        elif embeds and choice < 0.5:
            await self._hide_preview(post)
        elif attachments and choice < 0.5:
            await self._add_attachment(post)
        else:
            await self.fd.edit_message(
                post.message, content=f"{post.message.content} (edited)".strip()
            )
            self.tally.actions["edit: text"] += 1

    async def _remove_attachment(self, post: Posted) -> None:
        gone = _kinds(post)[0][0].key
        kept = [a for a in post.message.attachments if a.id != gone]
        await self.fd.edit_message(post.message, attachments=kept)
        self.ledger.removed(post, {gone}, why=EDITED_OUT)
        self.tally.actions["edit: attachment removed"] += 1

    async def _hide_preview(self, post: Posted) -> None:
        await self.fd.suppress_embeds(post.message)
        self.ledger.removed(post, {p.key for p in _kinds(post)[1]}, why=HIDDEN)
        self.tally.actions["edit: preview hidden"] += 1

    async def _add_attachment(self, post: Posted) -> None:
        message = post.message
        await self.fd.edit_message(message, attachments=[*message.attachments, self._picture()])
        self.ledger.added(post, [Picture(message.attachments[-1].id, "attachment")])
        self.tally.pictures_posted += 1
        self.tally.actions["edit: attachment added"] += 1

    async def outage_burst(self) -> None:
        """One of each change a member can make, made while PostgreSQL is down (the chaos asks
        for it as it stops the server): each outage meets every kind of event, an opt-out or
        opt-in too, however the random load falls."""
        editable = self._alive(editable=True)
        for wanted, change in (
            (lambda p: len(_kinds(p)[0]) >= 2, self._remove_attachment),
            (lambda p: _kinds(p)[1], self._hide_preview),
            (lambda p: _kinds(p)[0], self._add_attachment),
        ):
            if candidates := [p for p in editable if wanted(p)]:
                post = self.rng.choice(candidates)
                editable.remove(post)
                await change(post)
        await self.delete()
        await self.post()
        await self.link()
        await self.privacy()  # asked again until the database is back to take it
        self.tally.actions["outage bursts"] += 1

    async def delete(self) -> None:
        posts = self._alive()
        if not posts:
            return
        first = self.rng.choice(posts)
        if self.rng.random() < 0.1:  # a moderator's bulk delete of a few in that channel
            channel = first.message.channel
            same = [p for p in posts if p.message.channel is channel]
            chosen = self.rng.sample(same, min(len(same), 3))
            await self.fd.bulk_delete(channel, [p.message for p in chosen])
            self.tally.actions["delete: bulk"] += 1
        else:
            chosen = [first]
            await self.fd.delete_message(first.message)
        for post in chosen:
            self.ledger.deleted(post)

    # -- searching --------------------------------------------------------------------------

    async def find(self) -> None:
        if len(self._finds) >= FINDS_IN_FLIGHT:
            self.tally.answers["not asked (4 waiting)"] += 1
            return
        # Chosen here, not in the task: the soak's choices follow from its seed alone.
        channel, member = self._place(self.rng.choice(self.world.posters))
        query = caption(*self.rng.choice(CLASSES))
        task = asyncio.create_task(self._find(channel, member, query))
        self._finds.add(task)
        task.add_done_callback(self._finds.discard)

    async def _find(self, channel, member, query: str) -> None:
        asked_seq, asked = self.ledger.seq, time.monotonic()
        try:
            interaction = await self.fd.invoke_slash(
                channel.guild, channel, member, "find", {"query": query}
            )
            reply = await interaction.wait_reply(timeout=ANSWER_S)
        except TimeoutError:
            self.tally.answers["no answer"] += 1
            return
        if not reply["embeds"]:
            self.tally.answers[reply["content"][:70]] += 1
            return
        self.tally.answers["results"] += 1
        self.tally.find_s.append(time.monotonic() - asked)
        for message_id in result_ids(reply):
            why = self.ledger.must_not_show(message_id, asked_seq=asked_seq)
            if why is not None:
                self.tally.shown_forbidden.append(f"message {message_id} ({why}) for {query!r}")

    # -- privacy ----------------------------------------------------------------------------

    async def privacy(self) -> None:
        """One of the privacy-minded members opts out, or back in, in a task of its own: through
        an outage the answer may take a while, and the others go on meanwhile."""
        minded = self.world.posters[:PRIVACY_MINDED]
        if not (ready := [p for p in minded if p not in self._toggling]):
            return
        poster = self.rng.choice(ready)
        place = self._place(poster)
        self._toggling.add(poster)
        task = asyncio.create_task(self._toggle(poster, *place))
        self._toggles.add(task)
        task.add_done_callback(self._toggles.discard)

    async def _toggle(self, poster: Poster, channel, member) -> None:
        opting_out = not poster.opted_out
        what = "opt-out" if opting_out else "opt-in"
        self.tally.actions[f"privacy: {what}"] += 1
        ask = self._opt_out if opting_out else self._opt_in
        give_up = time.monotonic() + PRIVACY_PATIENCE_S
        try:
            while not await ask(channel, member):
                if time.monotonic() > give_up:
                    self.tally.privacy_failures.append(f"{poster.name}'s {what} never confirmed")
                    return
                self.tally.privacy_retries += 1
                await asyncio.sleep(2.0)  # as a member would, after "try again shortly"
            if opting_out:
                self.ledger.opted_out(poster)
            else:
                self.ledger.opted_in(poster)
        finally:
            self._toggling.discard(poster)

    async def _opt_out(self, channel, member) -> bool:
        with contextlib.suppress(TimeoutError):
            interaction = await self.fd.invoke_slash(
                channel.guild, channel, member, "privacy opt-out"
            )
            asked = await interaction.wait_reply(timeout=ANSWER_S)
            if asked["content"] == privacy.ALREADY_OUT:
                return True  # an earlier try went through though its answer did not
            confirm = _button(asked, "Opt out and delete my images")
            if confirm is None:
                return False
            done = await self.fd.click(asked, confirm, member)
            said = await done.wait_reply(timeout=ANSWER_S, predicate=lambda m: not m["components"])
            return said["content"].startswith("Done: you're opted out")
        return False

    async def _opt_in(self, channel, member) -> bool:
        with contextlib.suppress(TimeoutError):
            interaction = await self.fd.invoke_slash(
                channel.guild, channel, member, "privacy opt-in"
            )
            said = await interaction.wait_reply(timeout=ANSWER_S)
            return said["content"] in (privacy.OPTED_IN, privacy.NOT_OUT)
        return False


def _kinds(post: Posted) -> tuple[list[Picture], list[Picture]]:
    """The attachments and the previews ``post`` still shows."""
    shown = post.shown()
    return [p for p in shown if p.kind == "attachment"], [p for p in shown if p.kind == "embed"]


def _button(reply: dict, label: str) -> str | None:
    for row in reply.get("components", []):
        for item in row.get("components", []):
            if item.get("label") == label:
                return item["custom_id"]
    return None
