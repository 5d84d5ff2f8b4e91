"""Stopping on SIGTERM (docker stop, systemd, Kubernetes) and SIGINT, for the bot and the worker
alike, from the process's first instruction to its last.

Before the event loop runs (imports, reading the settings) a signal exits 0 at once. While the
process starts (database, migrations, the model), a signal cancels the start-up: what was opened
is closed, and it exits 0 without having started. Once it runs, a signal calls its stop, which
finishes the work in hand and hands the rest back to the jobs table. Whatever is still running
``SHUTDOWN_DEADLINE_S`` after the signal is abandoned: the process exits 0 then, before the
orchestrator's kill, and the jobs it still held come back when their leases run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_T = TypeVar("_T")


def exit_on_signals() -> None:
    """From the process's first instruction: a signal before the event loop handles them (while
    torch imports, say) exits 0 at once, as nothing has started."""
    for sig in _SIGNALS:
        signal.signal(sig, _exit_now)


def _exit_now(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def die_on_signals() -> None:
    """For one-off commands (a schema upgrade, a check): a signal interrupts them, and the exit
    status says so, as it does by default."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


class Stop:
    """One process's stop: what a signal does depends on whether the process runs yet."""

    def __init__(self, *, deadline_s: float, task: asyncio.Task) -> None:
        self.deadline_s = deadline_s
        self.requested_at: float | None = None
        # True once a signal cancelled the start-up: the process exits 0 without having run.
        self.before_start = False
        self._task = task
        self._stop: Callable[[], object] | None = None

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def left(self) -> float:
        """Seconds left of the deadline; all of it while no stop was asked for."""
        if self.requested_at is None:
            return self.deadline_s
        return max(self.requested_at + self.deadline_s - time.monotonic(), 0.0)

    def started(self, stop: Callable[[], object]) -> None:
        """The process runs: a signal now calls ``stop()`` (at once if one came already)."""
        self._stop = stop
        if self.requested:
            stop()

    def request(self, why: str) -> None:
        if self.requested:
            log.info("received %s while stopping; the stop goes on", why)
            return
        self.requested_at = time.monotonic()
        _abandon_after(self.deadline_s)
        if self._stop is None:
            log.info("received %s while starting: stopping before anything starts", why)
            self.before_start = True
            self._task.cancel()
        else:
            log.info("received %s: finishing the work in hand, then stopping", why)
            self._stop()


@contextlib.contextmanager
def stopped_by_signals(*, deadline_s: float) -> Iterator[Stop]:
    """SIGTERM and SIGINT handled on the running loop for the whole block, which runs in the
    process's main task: until `Stop.started`, a signal cancels that task (the caller returns
    0 when `Stop.before_start`); after it, the signal calls the stop given there."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None, "stopped_by_signals runs in a task"
    stop = Stop(deadline_s=deadline_s, task=task)
    installed = []
    for sig in _SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            previous = signal.getsignal(sig)
            loop.add_signal_handler(sig, stop.request, sig.name)
            installed.append((sig, previous))
    try:
        yield stop
    finally:
        for sig, previous in installed:
            loop.remove_signal_handler(sig)
            # The loop leaves the default action (death by signal) behind: put back the one
            # from before, so a signal during the last steps of the exit still exits 0.
            if previous is not None:
                signal.signal(sig, previous)


async def stoppable(main: Callable[[Stop], Awaitable[int]], *, deadline_s: float) -> int:
    """``main(stop)``'s exit status, with SIGTERM and SIGINT handled all along (see
    `stopped_by_signals`); 0 when a signal came before ``main`` called `Stop.started`."""
    with stopped_by_signals(deadline_s=deadline_s) as stop:
        try:
            return await main(stop)
        except asyncio.CancelledError:
            if not stop.before_start:
                raise
    log.info("stopped before starting")
    return 0


def _abandon_after(deadline_s: float) -> None:
    def abandon() -> None:
        log.critical(
            "still stopping %gs after the signal (SHUTDOWN_DEADLINE_S): exiting now; the jobs "
            "this process held come back when their leases run out",
            deadline_s,
        )
        exit_now(0)

    timer = threading.Timer(deadline_s, abandon)
    timer.daemon = True
    timer.name = "clipfind-stop-deadline"
    timer.start()


def exit_now(status: int) -> None:
    """End the process with ``status`` once its logs are written, skipping the interpreter's
    teardown: after an orderly stop there is nothing left for it but waiting (thread pools still
    decoding, torch's threads) or aborting (under a model still loading on its thread)."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


async def abandonable(work: Callable[[], _T], *, name: str) -> _T:
    """``work()`` on a thread of its own that a stop does not wait for: loading a model can
    take minutes (a download), and a process stopped meanwhile exits without it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: object, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = work(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future
