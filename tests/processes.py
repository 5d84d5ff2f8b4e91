"""Real `python -m bot` processes for end-to-end tests: started with an environment of settings,
their log kept in a file, stopped by a signal or killed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

from tests.fakediscord import FakeDiscord
from tests.helpers import eventually
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH

ROOT = Path(__file__).resolve().parent.parent


def clipfind_env(fd: FakeDiscord | None, database_url: str, **settings: str) -> dict[str, str]:
    """The environment of a process on this stand-in (None: no Discord token) and database, with
    the tiny model; ``settings`` (SHOUTED names) come last. Nothing of the test's own
    environment's clipfind settings leaks in."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DATABASE_", "CLIP_", "JOB_", "DISCORD_", "METRICS_", "HEALTH_"))
    }
    env.update(
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        DATABASE_URL=database_url,
        CLIP_MODEL=str(CONFIG_PATH),
        CLIP_PRETRAINED=str(CHECKPOINT_PATH),
        CLIP_DEVICE="cpu",
        BATCH_DEADLINE_MS="10",
        OCR="off",  # see tests/e2e.py's bot_settings
    )
    if fd is not None:
        env.update(
            DISCORD_TOKEN=fd.token,
            DISCORD_API_BASE=fd.api_base,
            DISCORD_GATEWAY_URL=fd.gateway_url,
            DISCORD_MEDIA_ORIGINS=fd.cdn_origin,
        )
    env.update(settings)
    return env


class Process:
    """One `python -m bot [args]` process, its standard error and output in a log file."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log_path = log

    @classmethod
    async def start(cls, workdir: Path, env: dict[str, str], *args: str) -> Process:
        log = workdir / f"{'-'.join(args) or 'bot'}-{uuid.uuid4().hex[:6]}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", *args, cwd=workdir, env=env, stdout=out, stderr=out
            )
        return cls(process, log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def logged(self, text: str, *, within: float = 90) -> None:
        """Wait until the log holds ``text``; fails at once should the process end first."""

        async def seen() -> bool:
            log = self.log()
            assert self.alive or text in log, f"exited {self.process.returncode}:\n{log}"
            return text in log

        await eventually(seen, within=within)

    async def stop(
        self, sig: signal.Signals = signal.SIGTERM, within: float = 60
    ) -> tuple[int, float]:
        """Send ``sig``; (exit status, seconds from the signal to the exit)."""
        sent = time.monotonic()
        self.process.send_signal(sig)
        status = await asyncio.wait_for(self.process.wait(), within)
        return status, time.monotonic() - sent

    async def ensure_gone(self) -> None:
        if self.alive:
            self.process.kill()
            await self.process.wait()
