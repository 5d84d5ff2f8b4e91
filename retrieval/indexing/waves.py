"""Retry waves: one log line when downloads (or the encoder) start failing and images are being
retried, one when every retried image is in, instead of a line per image and attempt."""

from __future__ import annotations

import logging
import time
from collections import Counter

from retrieval.errors import StoreUnavailable
from retrieval.indexing.jobs import JobQueue

log = logging.getLogger(__name__)


class RetryWaves:
    def __init__(self, jobs: JobQueue) -> None:
        self._jobs = jobs
        self._since: float | None = None
        self._reasons: Counter[str] = Counter()
        self._maybe_over = False

    def failed(self, reason: str, delay: float) -> None:
        if self._since is None:
            self._since = time.monotonic()
            log.warning(
                "indexing: images are failing (%s); they are kept and retried with backoff, the "
                "first in %.0fs",
                reason,
                delay,
            )
        self._reasons[reason] += 1

    def recovered(self) -> None:
        """A retried image got in: the wave may be over (the table says)."""
        self._maybe_over = self._since is not None

    async def check(self) -> None:
        if not self._maybe_over:
            return
        try:
            left = await self._jobs.retrying()
        except StoreUnavailable:
            return
        if left:
            self._maybe_over = False
            return
        reasons = ", ".join(f"{reason} {n}" for reason, n in self._reasons.most_common())
        log.info(
            "indexing: the retry wave is over after %.0fs; every retried image is in (%s)",
            time.monotonic() - (self._since or time.monotonic()),
            reasons,
        )
        self._since, self._reasons, self._maybe_over = None, Counter(), False
