"""Stopping on SIGTERM (docker stop, systemd) and SIGINT, for the bot and the worker alike."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stopped_by_signals(stop: Callable[[], object]) -> Iterator[None]:
    """Call ``stop()`` on the first SIGTERM or SIGINT, on the event loop; what runs the process
    then finishes the work in hand, hands the rest back to the jobs table, and exits 0."""
    loop = asyncio.get_running_loop()

    def received(sig: signal.Signals) -> None:
        log.info("received %s: finishing the work in hand, then stopping", sig.name)
        stop()

    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, received, sig)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
