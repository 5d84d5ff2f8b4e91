"""The supervisor of a process's long-lived tasks, and the process's health that follows from them.

Every loop a process runs for its whole life (the pipeline's feeder, fetchers and batcher, lease
renewal, the policy poller, sweeps, the index keeper, backfill, the heartbeat) is started here. A
task that raises is logged with its traceback (once: a repeat of the same error is one line),
counted per task name, and started again after a backoff that doubles while it keeps failing. A
task that failed ``failing_after`` times in a row, and has not since run for as long as it last
waited, makes the process unhealthy: the heartbeat row, `/clipfind status` and ``/healthz`` say
which task and why, so an orchestrator can restart the process. A task that returns is done.

Outages are not failures: the tasks wait those out themselves (`retrieval/backoff.py`). What
reaches the supervisor is what nobody expected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

# How long a stop waits for a cancelled task to end by default.
SETTLE_S = 0.5

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """``first_s`` after a first failure, doubling with each failure in a row up to ``max_s``."""

    first_s: float = 1.0
    max_s: float = 60.0

    def delay(self, failures: int) -> float:
        return min(self.first_s * 2 ** max(failures - 1, 0), self.max_s)


@dataclass(slots=True, eq=False)
class _Watched:
    name: str
    failures: int = 0  # in a row
    running: bool = False
    started: float = 0.0  # when the current run began
    waited: float = 0.0  # the backoff before the current run
    error: str = ""
    unhealthy: bool = False  # logged as such, not yet as recovered


class Supervisor:
    """Starts and restarts one process's long-lived tasks; ``restarts`` counts them by name."""

    def __init__(
        self,
        *,
        backoff: Backoff | None = None,
        failing_after: int = 3,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.backoff = backoff or Backoff()
        self.failing_after = failing_after
        self.restarts: Counter[str] = Counter()
        self._clock = clock
        self._sleep = sleep
        self._watched: dict[asyncio.Task, _Watched] = {}

    def start(self, name: str, run: Callable[[], Awaitable[object]]) -> asyncio.Task:
        """Run ``run()`` as a task named ``name``, restarted whenever it raises, until it returns
        (the task's result is then its answer); cancel the task returned to stop it. Several
        tasks may share a name (the fetch workers): they are counted together."""
        watched = _Watched(name)
        task = asyncio.get_running_loop().create_task(self._supervise(watched, run), name=name)
        self._watched[task] = watched
        task.add_done_callback(self._watched.pop)
        return task

    def running(self, name: str) -> bool:
        """Whether a task of this name runs now (not waiting to be started again)."""
        return any(w.running for w in list(self._watched.values()) if w.name == name)

    def problem(self) -> str | None:
        """Why the process is unhealthy: the tasks that keep failing, with their last error;
        None when it is healthy."""
        now = self._clock()
        failing: dict[str, _Watched] = {}
        for watched in list(self._watched.values()):
            if self._failing(watched, now):
                failing.setdefault(watched.name, watched)
            elif watched.unhealthy:
                watched.unhealthy = False
                log.info("task %s runs again after %d failures", watched.name, watched.failures)
        if not failing:
            return None
        return "; ".join(
            f"task {w.name} keeps failing ({w.failures} times in a row, restarted "
            f"{self.restarts[w.name]} times since start): {w.error}"
            for w in failing.values()
        )

    def _failing(self, watched: _Watched, now: float) -> bool:
        if watched.failures < self.failing_after:
            return False
        # Running again for as long as it last waited, it is taken for recovered.
        return not (watched.running and now - watched.started >= watched.waited)

    async def _supervise(self, watched: _Watched, run: Callable[[], Awaitable[object]]) -> object:
        while True:
            watched.running, watched.started = True, self._clock()
            try:
                return await run()
            except Exception as exc:  # noqa: BLE001 - what the supervisor is for
                watched.running = False
                self._failed(watched, exc)
            await self._sleep(watched.waited)

    def _failed(self, watched: _Watched, exc: Exception) -> None:
        now = self._clock()
        steady = now - watched.started >= max(watched.waited, self.backoff.first_s)
        if steady:
            watched.failures, watched.unhealthy = 1, False
        else:
            watched.failures += 1
        error = f"{type(exc).__name__}: {exc}"
        repeated, watched.error = error == watched.error, error
        self.restarts[watched.name] += 1
        watched.waited = self.backoff.delay(watched.failures)
        if repeated:
            log.error(
                "task %s failed again (%d times in a row), restarting it in %.1fs: %s",
                watched.name,
                watched.failures,
                watched.waited,
                error,
            )
        else:
            log.error(
                "task %s failed, restarting it in %.1fs", watched.name, watched.waited, exc_info=exc
            )
        if watched.failures >= self.failing_after and not watched.unhealthy:
            watched.unhealthy = True
            log.critical(
                "task %s keeps failing: this process reports itself unhealthy until it runs again",
                watched.name,
            )


async def settle(tasks: Collection[asyncio.Task], *, within_s: float = SETTLE_S) -> None:
    """Cancel the tasks and let them end, waiting at most ``within_s``: one still waiting for a
    database that does not answer (SQLite's busy wait, a host gone silent) is left behind, as
    the process is stopping."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=within_s)


async def within(call: Awaitable[T], *, seconds: float) -> T:
    """``call``'s result, or TimeoutError after ``seconds`` without waiting for it to end.

    For a stop's last words to the database: `asyncio.timeout` waits for the cancelled call to
    end, and a call to a database gone silent can take a connect timeout to end (asyncpg ends a
    cancelled statement by opening a connection to ask the server to cancel it), so a stop's
    step bounded that way still outlasted its deadline. The call is cancelled and left behind."""
    task = asyncio.ensure_future(call)
    task.add_done_callback(_observed)
    try:
        done, _ = await asyncio.wait([task], timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        raise TimeoutError
    return task.result()


def _observed(task: asyncio.Future) -> None:
    """A call left behind ends with an error nobody awaits: asyncio must not log it as lost."""
    if not task.cancelled():
        task.exception()
