"""End to end: a flood of deletions costs the database a bounded number of statements per
deletion, however long the queue stays unfinished. A gateway that leaves encoding to workers
(ENCODE_IMAGES=false, PostgreSQL) with a backlog nobody takes, and the same flood on SQLite with
the bot encoding."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator

from sqlalchemy import event

from tests.fakediscord import FakeDiscord
from tests.helpers import bot_settings, eventually, picture, running_bot

DELETIONS = 1_000
# What one message deletion costs: its jobs, its images failed for good and its images, in one
# transaction; and the same again only when images were on their way as it started (a backfill
# reading the channel, say).
STATEMENTS_PER_DELETION = 2 * 3
HANDLER = "discord.py: on_raw_message_delete"  # discord.py's task for each event


@contextlib.contextmanager
def statements_by_task(engine) -> Iterator[Counter[str]]:
    """Every statement the engine sends, counted by the name of the asyncio task that sent it
    (and, under "images deleted by <task>", its deletions of images)."""
    sent: Counter[str] = Counter()

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        task = asyncio.current_task()
        name = task.get_name() if task is not None else "?"
        sent[name] += 1
        if statement.lstrip().upper().startswith("DELETE FROM IMAGES"):
            sent[f"images deleted by {name}"] += 1

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


def deletion_work(sent: Counter[str]) -> int:
    """Statements sent for message deletions: the event handlers and their second runs."""
    return sum(n for name, n in sent.items() if name == HANDLER or name.startswith("sweep "))


def second_runs_waiting() -> int:
    return sum(
        1
        for task in asyncio.all_tasks()
        if task.get_name().startswith("sweep ") and not task.done()
    )


async def test_a_thousand_deletions_cost_a_bounded_number_of_statements(tmp_path, database_url):
    on_sqlite = database_url.startswith("sqlite")
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Busy")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        # Without a worker (PostgreSQL) the backlog stays: nothing ever drains the queue.
        settings = bot_settings(fd, tmp_path, database_url=database_url, encode_images=on_sqlite)
        async with running_bot(settings, fd) as bot:
            kept = [
                await fd.post_message(general, alice, "", attachments=[picture("red", "star", n)])
                for n in range(3)
            ]

            async def queued() -> bool:
                jobs = bot.pipeline.jobs
                return on_sqlite or await jobs.waiting(at_most=10) == len(kept)

            await eventually(queued)
            doomed = [fd.add_history_message(general, alice, f"m{n}") for n in range(DELETIONS)]

            with statements_by_task(bot.engine) as sent:
                for message in doomed:
                    await fd.delete_message(message)

                async def handled() -> bool:  # every event's first run is done
                    return sent[f"images deleted by {HANDLER}"] >= DELETIONS

                await eventually(handled, within=120)

                # Nothing is left running that could send more for them, however long one
                # waits (a second run waits for a backfill page, not for the queue to drain).
                async def done() -> bool:
                    return not second_runs_waiting()

                await eventually(done, within=60)
                cost = deletion_work(sent)

            assert cost <= STATEMENTS_PER_DELETION * DELETIONS, (cost, sent.most_common(5))
            if not on_sqlite:
                assert await bot.pipeline.jobs.waiting(at_most=10) == len(kept)
