"""`python -m bot check`: whether this configuration can run, without starting the bot.

One line per check, each failure with its fix. Nothing is created or downloaded: a SQLite file
that does not exist yet stays absent, and the model's weights are located, not loaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.startup import check_with_discord, token_of
from retrieval.config import Settings
from retrieval.database import UPGRADE_HINT, check_schema, create_engine
from retrieval.errors import ClipfindError, ConfigError, StoreUnavailable


@dataclass(frozen=True)
class Outcome:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':4}  {self.name:8}  {self.detail}"


async def _token(settings: Settings) -> str:
    token_of(settings)
    return "present, shaped like a bot token"


async def _database(settings: Settings) -> str:
    if problem := settings.encoding_problem():
        raise ConfigError(problem)
    path = settings.sqlite_path()
    if path is not None and not path.exists():
        return f"SQLite file {path} does not exist yet: it is created on first start"
    engine = create_engine(settings.database_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        revision = await check_schema(engine)
    except StoreUnavailable as exc:
        raise StoreUnavailable(f"{exc}; check DATABASE_URL ({where})") from None
    finally:
        await engine.dispose()
    if revision is None:
        return f"{where} is empty: the schema is created on first start"
    return f"{where} at schema revision {revision} (current; `{UPGRADE_HINT}` not needed)"


async def _model(settings: Settings) -> str:
    from retrieval.encoding import locate_weights, resolve_device, resolve_precision

    def locate() -> str:
        weights = locate_weights(model=settings.clip_model, pretrained=settings.clip_pretrained)
        device = resolve_device(settings.clip_device)
        precision = resolve_precision(settings.clip_precision, device)
        return f"{weights.describe()}; runs on {device} in {precision}"

    return await asyncio.to_thread(locate)


async def _discord(settings: Settings) -> str:
    app = await check_with_discord(settings)
    said = f"token accepted for {app.name} (application {app.application_id}), Message Content "
    if app.guild_count:
        return said + f"intent on; in {app.guild_count} server(s)"
    return said + f"intent on; in no server yet: invite it with {app.invite_url}"


CHECKS: tuple[tuple[str, Callable[[Settings], Awaitable[str]]], ...] = (
    ("token", _token),
    ("database", _database),
    ("model", _model),
    ("discord", _discord),
)


async def run_checks(settings: Settings) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for name, check in CHECKS:
        if name == "discord" and not outcomes[0].ok:
            outcomes.append(Outcome(name, False, "not asked: fix DISCORD_TOKEN first"))
            continue
        try:
            outcomes.append(Outcome(name, True, await check(settings)))
        except ClipfindError as exc:
            outcomes.append(Outcome(name, False, str(exc)))
    return outcomes
