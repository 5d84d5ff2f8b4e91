"""What an operator watches, run alongside any process (a bot, an encoder worker): its heartbeat
in ``index_consumers`` (with its health; a row for each lane of the queue it takes), a log line
every minute while the queue has a backlog (and one when it drains), with ``METRICS_PORT`` set
Prometheus figures on ``/metrics``, and ``/healthz`` there or on ``HEALTH_PORT``.

Everything runs in one supervised background task; the database is read every ~15 s there,
never on a scrape, a probe or a command. A database outage costs a warning, never the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from retrieval.database.tables import OCR_LANE
from retrieval.errors import ConfigError, StoreUnavailable
from retrieval.runtime.cluster import COUNT_CAP, ClusterFigures, ConsumerReport, read_figures
from retrieval.runtime.health import serve, stop_serving, with_health
from retrieval.runtime.metrics import Metrics
from retrieval.supervisor import Supervisor, settle, within

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from retrieval.config import Settings
    from retrieval.indexing import IndexingPipeline, ReadingLane

log = logging.getLogger(__name__)

REPORT_EVERY_S = 15.0
LOG_EVERY_S = 60.0
# A clean stop's last word to the database waits no longer: with the database away, the row
# simply goes stale.
_LEAVE_S = 1.0


class OperatorView:
    """The running view of one process; ``figures`` are the cluster's as last read."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        reports: list[ConsumerReport],
        metrics: Metrics | None,
        report_every_s: float,
        log_every_s: float,
    ) -> None:
        self.engine = engine
        self.reports = reports  # one per lane the process takes
        self.metrics = metrics
        self.figures: ClusterFigures | None = None
        self._report_every_s = report_every_s
        self._log_every_s = log_every_s
        self._logged_at: float | None = None
        self._backlog = False
        self._failing = False

    async def run(self) -> None:
        while True:  # a bug in here is the supervisor's to log, count and restart
            await self.tick()
            await asyncio.sleep(self._report_every_s)

    async def tick(self) -> None:
        """Report this process, then read the cluster's figures when a gauge or the log wants
        them."""
        log_due = self._logged_at is None or time.monotonic() - self._logged_at >= self._log_every_s
        try:
            for report in self.reports:
                await report.report()
            if self.metrics is not None or log_due:
                self.figures = await read_figures(self.engine)
        except StoreUnavailable as exc:
            if not self._failing:
                log.warning("cannot report to the database or read the queue's figures: %s", exc)
            self._failing = True
            return
        if self._failing:
            log.info("reporting to the database again")
            self._failing = False
        if self.metrics is not None:
            self.metrics.update(self.figures)
        if log_due:
            self._logged_at = time.monotonic()
            self._log_backlog(self.figures)

    def _log_backlog(self, figures: ClusterFigures) -> None:
        # Jobs waiting for a later retry are no backlog: nothing could take them now.
        if figures.waiting or figures.reading_waiting:
            self._backlog = True
            log.info("indexing backlog: %s", backlog_summary(figures))
        elif self._backlog:
            self._backlog = False
            log.info(
                "indexing backlog drained: nothing waits for a first try (%s waiting for a "
                "retry); %.1f images/s across %d consumers",
                counted(figures.retrying),
                figures.rate,
                len(figures.consumers),
            )


def counted(n: int) -> str:
    return f"{n:,}+" if n >= COUNT_CAP else f"{n:,}"


def age(seconds: float | None) -> str:
    """A duration as an operator reads it: 45 s, 12 min, 3.5 h, 2.0 days."""
    if seconds is None:
        return "none"
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def backlog_summary(figures: ClusterFigures) -> str:
    return (
        f"{counted(figures.waiting)} waiting, {counted(figures.retrying)} waiting for a retry, "
        f"{figures.claimed:,} being worked on; oldest waiting {age(figures.oldest_waiting_s)}; "
        f"{figures.rate:.1f} images/s across {len(figures.consumers)} consumers; words to "
        f"read: {counted(figures.reading_waiting)} waiting, {counted(figures.reading_retrying)} "
        f"waiting for a retry, {figures.reading_claimed:,} being read; "
        f"{figures.reading_rate:.1f} pictures/s across {len(figures.readers)} readers"
    )


def _device(pipeline: IndexingPipeline) -> str:
    encoder = pipeline.encoder.encoder
    device, precision = getattr(encoder, "device", None), getattr(encoder, "precision", None)
    return " ".join(str(part) for part in (device, precision) if part) or "unknown"


@contextlib.asynccontextmanager
async def operator_view(
    *,
    engine: AsyncEngine,
    role: str,
    pipeline: IndexingPipeline | None,
    settings: Settings,
    supervisor: Supervisor | None = None,
    shards: Callable[[], str | None] = lambda: None,
    reading: ReadingLane | None = None,
    report_every_s: float = REPORT_EVERY_S,
    log_every_s: float = LOG_EVERY_S,
) -> AsyncIterator[OperatorView]:
    """Heartbeat, backlog log line, metrics and health servers for one process, stopped on exit.

    ``role`` is "bot" or "worker"; ``pipeline`` is the process's indexing pipeline, or None for
    one that encodes no images; ``reading`` is the process's OCR lane, when it reads the words
    in pictures. The process writes a heartbeat for each of the two it has (with neither, it
    still logs and serves the cluster's figures). ``supervisor`` runs the process's tasks, and
    its health is the process's; ``shards`` names the gateway shards the process runs, when it
    has any.
    """
    supervisor = supervisor or Supervisor()
    reports = []
    if pipeline is not None:
        counters = pipeline.counters
        reports.append(
            ConsumerReport(
                engine,
                role=role,
                model_id=pipeline.model_id,
                device=_device(pipeline),
                stored=lambda: counters.indexed + counters.reused,
                in_hand=lambda: pipeline.queued,
                shards=shards,
                problem=supervisor.problem,
            )
        )
    if reading is not None:
        words = reading.counters
        reports.append(
            ConsumerReport(
                engine,
                role=role,
                lane=OCR_LANE,
                model_id=reading.engine.model_id,
                device=reading.engine.device,
                stored=lambda: words.indexed + words.reused,
                in_hand=lambda: reading.held,
                shards=shards,
                problem=supervisor.problem,
            )
        )
    metrics = None
    if settings.metrics_port is not None:
        metrics = Metrics(pipeline=pipeline, supervisor=supervisor, reading=reading)
        try:
            metrics.serve(port=settings.metrics_port, addr=settings.metrics_addr)
        except OSError as exc:
            raise ConfigError(
                f"METRICS_PORT: cannot serve metrics on {settings.metrics_addr}:"
                f"{settings.metrics_port}: {exc.strerror or exc}"
            ) from None
    health = None
    if settings.health_port is not None:
        try:
            health = serve(
                with_health(supervisor.problem),
                port=settings.health_port,
                addr=settings.metrics_addr,
            )
        except OSError as exc:
            if metrics is not None:
                await asyncio.to_thread(metrics.close)
            raise ConfigError(
                f"HEALTH_PORT: cannot serve /healthz on {settings.metrics_addr}:"
                f"{settings.health_port}: {exc.strerror or exc}"
            ) from None
        log.info("health on http://%s:%d/healthz", settings.metrics_addr, health.server_port)
    view = OperatorView(
        engine=engine,
        reports=reports,
        metrics=metrics,
        report_every_s=report_every_s,
        log_every_s=log_every_s,
    )
    task = supervisor.start("clipfind-operator-view", view.run)
    try:
        yield view
    finally:
        log.debug("stopping the operator view")
        await settle([task])
        if metrics is not None:
            await asyncio.to_thread(metrics.close)
        if health is not None:
            await asyncio.to_thread(stop_serving, health)
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            await within(_leave_all(reports), seconds=_LEAVE_S)


async def _leave_all(reports: list[ConsumerReport]) -> None:
    for report in reports:
        await report.leave()
