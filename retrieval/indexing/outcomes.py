"""What becomes of a job: its vector stored in the transaction that deletes it, a later retry
(a transient failure: timeouts, 5xx, 429, connection resets, encoder errors), or a failure for
good counted by reason per server (not an image, too large, gone from Discord, refused by the
database). The database being away is waited out, never taken for a failure."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from retrieval.backoff import patiently
from retrieval.database.refusals import isolating, refusal_reason
from retrieval.errors import ClipfindError, FetchError, ModelSwitched, StoreUnavailable
from retrieval.indexing.inputs import NON_FINITE, finite
from retrieval.indexing.jobs import ImageRef, Job, JobQueue
from retrieval.indexing.waves import RetryWaves
from retrieval.indexing.window import Window
from retrieval.pictures.images import ImageError
from retrieval.store.base import ImageRecord, VectorStore

log = logging.getLogger(__name__)


@dataclass
class PipelineCounters:
    """This process's work since it started (the jobs table holds every server's backlog)."""

    submitted: int = 0
    indexed: int = 0
    reused: int = 0  # same bytes already encoded: vector copied, model skipped
    discarded: int = 0  # deleted, excluded or opted out while on their way
    retried: int = 0
    in_flight: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    resized: int = 0  # read from the media proxy's smaller copy
    # Why a copy was asked for but the original downloaded after all (an HTTP status, a verdict)
    resize_fallbacks: Counter[str] = field(default_factory=Counter)
    bytes_downloaded: int = 0
    started: float = field(default_factory=time.monotonic)

    def images_per_s(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.indexed + self.reused) / elapsed if elapsed > 0 else 0.0


# What an image's record takes from its ref as it is (the rest is what indexing found out).
_FROM_REF = tuple(
    f.name
    for f in dataclasses.fields(ImageRecord)
    if f.name in {g.name for g in dataclasses.fields(ImageRef)}
)


def record(
    ref: ImageRef, *, content_hash: str, content_type: str, model_id: str, vector: np.ndarray
) -> ImageRecord:
    return ImageRecord(
        **{name: getattr(ref, name) for name in _FROM_REF}
        | {
            "filename": ref.filename[:255],
            "content_type": content_type,
            "content_hash": content_hash,
            "model_id": model_id,
            "embedding": np.asarray(vector, dtype=np.float32),
        }
    )


class Outcomes:
    """``closing()`` says the pipeline stops: an outage is no longer waited out then."""

    def __init__(
        self,
        *,
        window: Window,
        store: VectorStore,
        jobs: JobQueue,
        counters: PipelineCounters,
        waves: RetryWaves,
        closing: Callable[[], bool],
    ) -> None:
        self._window = window
        self.store = store
        self._jobs = jobs
        self._counters = counters
        self._waves = waves
        self._closing = closing

    async def failed(
        self,
        job: Job,
        error: Exception,
        *,
        transient: bool,
        reason: str | None = None,
        lasting: bool = False,
    ) -> None:
        """``lasting``: a failure for good that would come again however often the image was
        tried; queueing it again is refused (`JobQueue.fail`)."""
        reason = reason or getattr(error, "reason", "internal")
        ref = job.ref
        where = f"{ref.filename} of message {ref.message_id} (guild {ref.guild_id})"
        if transient:
            retry_after = getattr(error, "retry_after", None)
            delay = await self.with_store(
                functools.partial(
                    self._jobs.retry, job, reason=reason, error=str(error), retry_after=retry_after
                )
            )
            if delay is not None:
                self._counters.retried += 1
                self._waves.failed(reason, delay)
                log.debug("will retry %s in %.1fs: %s: %s", where, delay, reason, error)
                return
            reason = f"gave_up_{reason}"
        else:
            await self.with_store(
                functools.partial(self._jobs.fail, lasting=lasting), [job], reason
            )
        self._counters.failed[reason] += 1
        log.warning("skipped image %s: %s: %s", where, reason, error)

    async def failed_by(self, job: Job, error: Exception, *, doing: str) -> None:
        """What becomes of a job whose work (``doing``: "indexing", "reading") raised: a
        download that may work later is retried, a picture that never will is failed for good,
        the database being away leaves the job claimed (its lease brings it back), a refusal is
        failed for good, and anything else is a bug, logged with its traceback and retried."""
        ref = job.ref
        if isinstance(error, FetchError):
            await self.failed(job, error, transient=error.retryable, lasting=error.lasting)
        elif isinstance(error, ImageError):  # the bytes: they stay what they are
            await self.failed(job, error, transient=False, lasting=True)
        elif isinstance(error, ClipfindError):
            await self.failed(job, error, transient=False)
        elif isinstance(error, StoreUnavailable):
            if error.refused:  # would be refused again each time its lease brought it back
                with contextlib.suppress(StoreUnavailable):
                    reason = refusal_reason(error)
                    await self.failed(job, error, transient=False, reason=reason)
            else:
                log.error("database unavailable while %s %s: %s", doing, ref.filename, error)
        else:
            log.exception(
                "unexpected error %s %s of message %s", doing, ref.filename, ref.message_id
            )
            await self.failed(job, error, transient=True, reason="internal")

    async def write(self, records: list[ImageRecord], jobs: list[Job]) -> int:
        """Store the records and delete their jobs in one transaction; returns how many the
        database took (not those whose job was deleted meanwhile, nor what its policy forbids).

        A vector that is not finite is failed for good before the write, and a row the database
        refuses is found by splitting the batch (retrieval/database/refusals.py) and failed for
        good: the rest is stored. When the index is built with another model by now, nothing is
        stored and the jobs go back to the queue."""
        pairs = []
        for stored, job in zip(records, jobs, strict=True):
            if finite(stored.embedding):
                pairs.append((stored, job))
            else:
                error = ValueError("the model gave a vector with NaN or infinity")
                await self.failed(job, error, transient=False, reason=NON_FINITE)
        try:
            written, refused = await isolating(pairs, self._store_pairs)
        except ModelSwitched as switched:
            await self._hand_back([job for _, job in pairs], switched)
            return 0
        for (_, job), exc in refused:
            await self.failed(job, exc, transient=False, reason=refusal_reason(exc))
        stored = sum(written)
        self._counters.discarded += len(pairs) - len(refused) - stored
        if any(job.attempts for job in jobs):
            self._waves.recovered()
        return stored

    async def _store_pairs(self, pairs: Sequence[tuple[ImageRecord, Job]]) -> int:
        records, job_ids = [stored for stored, _ in pairs], [job.id for _, job in pairs]
        return await self.with_store(functools.partial(self.store.upsert, records, job_ids=job_ids))

    async def _hand_back(self, jobs: list[Job], switched: ModelSwitched) -> None:
        """Give the jobs back unfinished, for a consumer with the index's model, and claim no
        more: this process's model is not the index's any longer."""
        first = self._window.stop_claiming(switched)
        with contextlib.suppress(StoreUnavailable):  # else their lease runs out
            await self._jobs.release([job.id for job in jobs])
        log.log(
            logging.ERROR if first else logging.INFO,
            "%s (this process's): %d images handed back to the queue for a process with the "
            "index's model%s",
            switched,
            len(jobs),
            "; this one takes no more images" if first else "",
        )

    async def with_store(self, call, *args):
        """Call the store, waiting out an outage instead of dropping the work in hand (a
        refusal is raised: see `write`)."""

        def waiting(exc: StoreUnavailable, delay: float) -> None:
            log.error("database unavailable, retrying in %.1fs: %s", delay, exc)

        return await patiently(
            functools.partial(call, *args), waiting=waiting, give_up=self._closing
        )
