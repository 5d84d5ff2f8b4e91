"""The soak's processes: one gateway (`python -m bot`, ENCODE_IMAGES=false) and two encoder
workers (`python -m bot worker`) on one embedded PostgreSQL, with what is done to them (the
server stopped and started again, a worker killed and started again) and what is watched in
them (memory, `/healthz`, `/metrics`)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.fakediscord import FakeDiscord
from tests.helpers import free_port
from tests.pgserver import Restartable
from tests.processes import Process, clipfind_env

READY = {"gateway": "connected as ", "worker": "encoder worker started"}
# discord.py's line for an event handler that raised; asyncio's for a task nobody awaited.
_UNHANDLED = re.compile(
    r"Ignoring exception in (\S+)"
    r"|Task exception was never retrieved\s+future: <Task \w+ name='([^']*)'"
)
_METRIC = re.compile(r'^(clipfind_[a-z_]+)(?:\{(\w+)="([^"]*)"\})? (\S+)$', re.M)


@dataclass(eq=False)
class Life:
    """One process started in a role, from its start to its end."""

    process: Process
    started: float
    ready: bool = False
    rss_kb: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, RSS)
    exit_status: int | None = None
    killed: bool = False  # by the soak, on purpose


@dataclass(eq=False)
class Role:
    """A process the soak keeps running: ``lives`` are its successive processes."""

    name: str
    args: tuple[str, ...]
    env: dict[str, str]
    port: int  # metrics and /healthz
    lives: list[Life] = field(default_factory=list)
    restarts: Counter[str] = field(default_factory=Counter)  # by task, over every life
    failed: Counter[str] = field(default_factory=Counter)  # images dropped, by reason
    stored: int = 0
    unhealthy: list[str] = field(default_factory=list)  # each 503 seen, with its reason
    silent: Counter[str] = field(default_factory=Counter)  # /healthz unanswered, by error

    @property
    def life(self) -> Life:
        return self.lives[-1]


class Cluster:
    def __init__(
        self, *, fd: FakeDiscord, url: str, postgres: Restartable, workdir: Path, **settings: str
    ) -> None:
        self.fd, self.postgres, self.workdir = fd, postgres, workdir
        self.postgres_restarts = 0
        self.postgres_down = False

        def role(name: str, *args: str, **extra: str) -> Role:
            port = free_port()
            env = clipfind_env(
                fd, url, METRICS_PORT=str(port), METRICS_ADDR="127.0.0.1", **settings, **extra
            )
            return Role(name, args, env, port)

        self.roles = [
            role("gateway", ENCODE_IMAGES="false"),
            role("worker-a", "worker"),
            role("worker-b", "worker"),
        ]
        self.gateway, self.steady_worker, self.killed_worker = self.roles
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Cluster:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for role in self.roles:
            if role.lives:
                await role.life.process.ensure_gone()
        await self._http.close()

    # -- starting and stopping -------------------------------------------------------------

    async def start(self, role: Role) -> None:
        process = await Process.start(self.workdir, role.env, *role.args)
        role.lives.append(Life(process, time.monotonic()))

    async def ready(self, role: Role, *, within: float = 180) -> None:
        kind = "gateway" if role is self.gateway else "worker"
        await role.life.process.logged(READY[kind], within=within)
        role.life.ready = True

    async def start_all(self) -> None:
        for role in self.roles:
            await self.start(role)
        await asyncio.gather(*(self.ready(role) for role in self.roles))

    async def kill_and_restart(self, role: Role, *, down_s: float) -> None:
        """SIGKILL, as the kernel's OOM killer or a lost node does; started again after
        ``down_s``. Its counters are read first: they die with it."""
        await self.scrape(role)
        life = role.life
        life.killed = True
        life.exit_status, _ = await life.process.stop(signal.SIGKILL)
        await asyncio.sleep(down_s)
        await self.start(role)
        await self.ready(role)

    async def restart_postgres(
        self, *, down_s: float, mode: str, stopped: Callable[[], None] = lambda: None
    ) -> None:
        """Stop the server (``stopped()`` is told then), start it again ``down_s`` later."""
        self.postgres_down = True
        try:
            await asyncio.to_thread(self.postgres.stop, mode=mode)
            stopped()
            await asyncio.sleep(down_s)
            await asyncio.to_thread(self.postgres.start)
        finally:
            self.postgres_down = False
        self.postgres_restarts += 1

    async def stop_all(self) -> dict[str, tuple[int, float]]:
        """SIGTERM to each live process: (exit status, seconds to exit) by role."""
        stops = {}
        for role in self.roles:
            life = role.life
            if life.process.alive:
                await self.scrape(role)
                life.exit_status, took = await life.process.stop(within=60)
                stops[role.name] = (life.exit_status, took)
        return stops

    def unhandled(self) -> Counter[str]:
        """Errors nothing handled, by what they were in, from every process's log: a Discord
        event handler that raised (discord.py logs it and drops the event) or a task whose
        exception nobody retrieved. Supervised tasks' failures are not among them: those are
        counted as restarts."""
        found: Counter[str] = Counter()
        for role in self.roles:
            for life in role.lives:
                for match in _UNHANDLED.finditer(life.process.log()):
                    found[f"{role.name}: {match[1] or match[2]}"] += 1
        return found

    def died(self) -> list[str]:
        """Processes that ended without the soak ending them."""
        return [
            f"{role.name} exited {life.process.process.returncode}"
            for role in self.roles
            for life in role.lives
            if not life.killed and not life.process.alive and life.exit_status is None
        ]

    # -- watching ----------------------------------------------------------------------------

    def sample_memory(self) -> None:
        now = time.monotonic()
        for role in self.roles:
            life = role.life
            if life.ready and life.process.alive:
                with contextlib.suppress(OSError, ValueError):
                    life.rss_kb.append((now, _rss_kb(life.process.process.pid)))

    async def check_health(self) -> None:
        for role in self.roles:
            life = role.life
            if not (life.ready and life.process.alive):
                continue
            try:
                async with self._http.get(f"http://127.0.0.1:{role.port}/healthz") as answer:
                    if answer.status != 200:
                        role.unhealthy.append(f"{answer.status} {(await answer.text()).strip()}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                if life.process.alive and not life.killed:
                    role.silent[type(exc).__name__] += 1

    async def scrape(self, role: Role) -> None:
        """Adds the figures of ``role``'s current process to its totals (call once per life,
        before it ends)."""
        async with self._http.get(f"http://127.0.0.1:{role.port}/metrics") as answer:
            text = await answer.text()
        for name, label, value, number in _METRIC.findall(text):
            if name == "clipfind_task_restarts_total" and label == "task":
                role.restarts[value] += int(float(number))
            elif name == "clipfind_images_failed_total" and label == "reason":
                role.failed[value] += int(float(number))
            elif name == "clipfind_images_stored_total":
                role.stored += int(float(number))


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"no VmRSS for {pid}")
