"""`python -m bot`: run the bot; `python -m bot worker`: run an encoder worker (no Discord
connection); `python -m bot check`, `python -m bot db upgrade|current`, `python -m bot
citus-distribute`: operator commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path

import discord

from retrieval.config import Settings, load_settings
from retrieval.errors import ClipfindError, DatabaseInUse, SchemaError
from retrieval.runtime import die_on_signals

log = logging.getLogger("clipfind")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description="clipfind Discord bot")
    sub = parser.add_subparsers(dest="command")
    db = sub.add_parser("db", help="database schema commands")
    db.add_argument("action", choices=["upgrade", "current"])
    sub.add_parser(
        "worker",
        help="encode the images the bots queue, without a Discord connection (PostgreSQL only)",
    )
    sub.add_parser(
        "check",
        help="check the settings, database, model and Discord token without starting the bot",
    )
    sub.add_parser(
        "citus-distribute",
        help="distribute the tables over a Citus cluster by guild_id (once, after `db upgrade`)",
    )
    return parser


def _check() -> int:
    from bot.check import Outcome, run_checks

    try:
        settings = load_settings()
    except ClipfindError as exc:
        outcomes = [Outcome("settings", False, str(exc).replace("\n", " "))]
    else:
        # The verdicts are the output; discord.py's notes (no voice support…) are not.
        discord.utils.setup_logging(level=logging.ERROR)
        outcomes = [Outcome("settings", True, "read from the environment and .env")]
        outcomes += asyncio.run(run_checks(settings))
    sys.stdout.write("".join(outcome.line() + "\n" for outcome in outcomes))
    return 0 if all(outcome.ok for outcome in outcomes) else 1


async def _db(action: str, settings: Settings) -> None:
    from retrieval.database import create_engine, current_revision

    engine = create_engine(settings.database_url)
    try:
        if action == "upgrade":
            await _upgrade(engine, sqlite_path=settings.sqlite_path())
        log.info("schema revision: %s", await current_revision(engine) or "none")
    finally:
        await engine.dispose()


async def _citus_distribute(settings: Settings) -> None:
    from retrieval.database import UPGRADE_HINT, check_schema, create_engine, distribute

    engine = create_engine(settings.database_url)
    try:
        # Distributing a half-made schema would leave the missing tables plain ones.
        if await check_schema(engine) is None:
            raise SchemaError(f"the database has no clipfind schema yet; run `{UPGRADE_HINT}`")
        done = await distribute(engine)
        log.info(
            "distributed by guild_id: %s; reference tables: %s; coordinator tables added to "
            "Citus's metadata: %s; already as wanted: %s",
            ", ".join(done.distributed) or "none",
            ", ".join(done.reference) or "none",
            ", ".join(done.local) or "none",
            ", ".join(done.unchanged) or "none",
        )
    finally:
        await engine.dispose()


async def _upgrade(engine, *, sqlite_path: Path | None) -> None:
    """Reading the revision never waits for the bot; changing the schema of a SQLite database
    the bot runs on is refused (the bot checked it once, at its start), and taking its lock
    meanwhile keeps the bot from starting on a half-migrated file."""
    from retrieval.database import check_schema, sole_process, upgrade

    if sqlite_path is None:
        await upgrade(engine)
        return
    try:
        with sole_process(sqlite_path):
            await upgrade(engine)
    except DatabaseInUse as busy:
        try:
            await check_schema(engine)
        except SchemaError:
            raise DatabaseInUse(f"{busy}; stop it before upgrading the schema") from None
        log.info("the schema is current; nothing to upgrade while the bot runs")


async def _worker(settings: Settings) -> int:
    """An encoder worker, with a REST-only Discord login (when given the token) to renew expired
    attachment links; a refused token stops it as it stops the bot."""
    from bot.link_refresh import worker_refresher
    from bot.startup import DiscordRefused
    from bot.worker import check_worker_settings, run_worker
    from retrieval.runtime import Stop, stoppable

    check_worker_settings(settings)  # a worker on SQLite is told so before Discord is asked

    async def work(stop: Stop) -> int:
        try:
            async with worker_refresher(settings) as refresh:
                return await run_worker(settings, refresh=refresh, stop=stop)
        except DiscordRefused as exc:
            log.critical("%s", exc)
            return 2

    return await stoppable(work, deadline_s=settings.shutdown_deadline_s)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command not in (None, "worker"):
        die_on_signals()  # a one-off command stopped midway did not do its job
    if args.command == "check":
        return _check()
    try:
        settings = load_settings()
    except ClipfindError as exc:
        logging.basicConfig()
        log.critical("%s", exc)
        return 2
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    discord.utils.setup_logging(level=level)
    # Alembic announces each of its plugins at INFO; the migrations it runs are what matters.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # aiosqlite logs every statement with its values at DEBUG: among them the words read from
    # pictures, which are never logged.
    logging.getLogger("aiosqlite").setLevel(max(level, logging.INFO))
    try:
        if args.command == "db":
            asyncio.run(_db(args.action, settings))
            return 0
        if args.command == "citus-distribute":
            asyncio.run(_citus_distribute(settings))
            return 0
        if args.command == "worker":
            return asyncio.run(_worker(settings))
        from bot.app import run

        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(run(settings))
        return 0
    except ClipfindError as exc:
        log.critical("cannot start: %s", exc)
        return 2
