"""Prometheus figures of one process: its own indexing work, read from the pipeline's counters
when scraped, and the cluster's queue and consumers, refreshed from the database in the
background (a scrape never queries the database).

Each process object has its own `CollectorRegistry`, not the client's global one, so several
bots (or a bot and a worker) can live in one Python process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from retrieval.runtime.health import serve, stop_serving, with_health

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from retrieval.indexing import IndexingPipeline, ReadingLane
    from retrieval.runtime.cluster import ClusterFigures
    from retrieval.supervisor import Supervisor

log = logging.getLogger(__name__)

# One batch takes ~0.05 s on a GPU and ~1-4 s on a CPU (16-64 images of ViT-B-32).
ENCODE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _PipelineCollector(Collector):
    """This process's pipeline counters, read at scrape time (plain reads of ints, no lock)."""

    def __init__(self, pipeline: IndexingPipeline) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterator:
        counters = self.pipeline.counters
        encoder = self.pipeline.encoder.counters
        yield CounterMetricFamily(
            "clipfind_images_stored",
            "Images this process stored (encoded, or reposts whose vector was reused).",
            value=counters.indexed + counters.reused,
        )
        failed = CounterMetricFamily(
            "clipfind_images_failed",
            "Images this process dropped for good, by reason.",
            labels=["reason"],
        )
        for reason, n in dict(counters.failed).items():
            failed.add_metric([reason], n)
        yield failed
        yield CounterMetricFamily(
            "clipfind_images_retried",
            "Transient failures this process sent back to the queue for a later try.",
            value=counters.retried,
        )
        yield CounterMetricFamily(
            "clipfind_images_resized",
            "Images this process read from the media proxy's smaller copy (FETCH_RESIZED).",
            value=counters.resized,
        )
        fallbacks = CounterMetricFamily(
            "clipfind_resize_fallbacks",
            "Copies asked of the media proxy for which the original was downloaded after all, "
            "by reason (an HTTP status, or what was wrong with the copy).",
            labels=["reason"],
        )
        for reason, n in dict(counters.resize_fallbacks).items():
            fallbacks.add_metric([reason], n)
        yield fallbacks
        yield CounterMetricFamily(
            "clipfind_downloaded_bytes",
            "Bytes of pictures this process downloaded, copies and originals.",
            value=counters.bytes_downloaded,
        )
        yield CounterMetricFamily(
            "clipfind_image_batches",
            "Image batches this process encoded.",
            value=encoder.image_batches,
        )
        yield GaugeMetricFamily(
            "clipfind_queue_window_jobs",
            "Jobs this process holds (claimed from the queue, not finished).",
            value=self.pipeline.queued,
        )
        yield GaugeMetricFamily(
            "clipfind_queue_window_size",
            "Jobs this process may hold at once (QUEUE_SIZE).",
            value=self.pipeline.window,
        )


class _ReadingCollector(Collector):
    """This process's OCR lane, read at scrape time."""

    def __init__(self, reading: ReadingLane) -> None:
        self.reading = reading

    def collect(self) -> Iterator:
        counters = self.reading.counters
        yield CounterMetricFamily(
            "clipfind_pictures_read",
            "Pictures whose words this process stored (read, or copied from the same bytes).",
            value=counters.indexed + counters.reused,
        )
        failed = CounterMetricFamily(
            "clipfind_readings_failed",
            "Pictures this process could not read for good, by reason.",
            labels=["reason"],
        )
        for reason, n in dict(counters.failed).items():
            failed.add_metric([reason], n)
        yield failed
        yield CounterMetricFamily(
            "clipfind_readings_retried",
            "Readings this process sent back to the queue for a later try.",
            value=counters.retried,
        )
        yield GaugeMetricFamily(
            "clipfind_reading_window_jobs",
            "Readings this process holds (claimed from the queue's OCR lane, not finished).",
            value=self.reading.held,
        )


class _SupervisorCollector(Collector):
    """Restarts of this process's tasks, and its health, read at scrape time."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator:
        restarts = CounterMetricFamily(
            "clipfind_task_restarts",
            "Times a task of this process failed and was started again, by task.",
            labels=["task"],
        )
        for task, n in dict(self.supervisor.restarts).items():
            restarts.add_metric([task], n)
        yield restarts
        yield GaugeMetricFamily(
            "clipfind_healthy",
            "1 while this process is healthy, 0 while a task of it keeps failing (/healthz).",
            value=0 if self.supervisor.problem() else 1,
        )


class Metrics:
    """The figures one process exposes; `serve()` starts the HTTP server (with /healthz)."""

    def __init__(
        self,
        *,
        pipeline: IndexingPipeline | None,
        supervisor: Supervisor | None = None,
        reading: ReadingLane | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self._server: WSGIServer | None = None
        self._supervisor = supervisor
        self.port: int | None = None
        if supervisor is not None:
            self.registry.register(_SupervisorCollector(supervisor))
        if reading is not None:
            self.registry.register(_ReadingCollector(reading))
        if pipeline is not None:
            self.registry.register(_PipelineCollector(pipeline))
            encode = Histogram(
                "clipfind_encode_seconds",
                "Time the model took per image batch.",
                buckets=ENCODE_BUCKETS,
                registry=self.registry,
            )
            pipeline.encoder.batch_observers.append(encode.observe)
        self.jobs = Gauge(
            "clipfind_queue_jobs",
            "Jobs in the queue's CLIP lane across the cluster: waiting = never tried, retrying = "
            "failed before and waiting for another try (each exact up to 100,000).",
            ["state"],
            registry=self.registry,
        )
        self.reading = Gauge(
            "clipfind_reading_jobs",
            "Pictures in the queue's OCR lane across the cluster, to be read for their words: "
            "waiting = never tried, retrying = failed before (each exact up to 100,000).",
            ["state"],
            registry=self.registry,
        )
        self.claimed = Gauge(
            "clipfind_queue_claimed_jobs",
            "Jobs live consumers hold now (part of clipfind_queue_jobs).",
            registry=self.registry,
        )
        self.oldest = Gauge(
            "clipfind_queue_oldest_job_age_seconds",
            "Age of the oldest job never tried yet; 0 when there is none.",
            registry=self.registry,
        )
        self.consumers = Gauge(
            "clipfind_cluster_consumers",
            "Processes that encode images and reported in the last few minutes, by role.",
            ["role"],
            registry=self.registry,
        )
        self.rate = Gauge(
            "clipfind_cluster_images_per_second",
            "Images stored per second by all live consumers together.",
            registry=self.registry,
        )
        self.failed = Gauge(
            "clipfind_cluster_images_failed",
            "Images failed for good in every server, by reason (kept per server in the "
            "database; a purged server's counts go with it).",
            ["reason"],
            registry=self.registry,
        )
        self.readers = Gauge(
            "clipfind_cluster_readers",
            "Processes that read the words in pictures (the queue's OCR lane) and reported in "
            "the last few minutes, by role.",
            ["role"],
            registry=self.registry,
        )
        self.reading_rate = Gauge(
            "clipfind_cluster_pictures_read_per_second",
            "Pictures whose words all live readers together stored per second.",
            registry=self.registry,
        )
        self.reading_claimed = Gauge(
            "clipfind_reading_claimed_jobs",
            "Readings live readers hold now (part of clipfind_reading_jobs).",
            registry=self.registry,
        )
        self.refreshed = Gauge(
            "clipfind_cluster_figures_timestamp_seconds",
            "When the cluster figures were last read from the database.",
            registry=self.registry,
        )

    def update(self, figures: ClusterFigures) -> None:
        self.jobs.labels("waiting").set(figures.waiting)
        self.jobs.labels("retrying").set(figures.retrying)
        self.reading.labels("waiting").set(figures.reading_waiting)
        self.reading.labels("retrying").set(figures.reading_retrying)
        self.claimed.set(figures.claimed)
        self.oldest.set(figures.oldest_waiting_s or 0.0)
        for gauge, rows in ((self.consumers, figures.consumers), (self.readers, figures.readers)):
            roles = {"bot": 0, "worker": 0}
            for row in rows:
                roles[row.role] = roles.get(row.role, 0) + 1
            for role, n in roles.items():
                gauge.labels(role).set(n)
        self.rate.set(figures.rate)
        self.reading_rate.set(figures.reading_rate)
        self.reading_claimed.set(figures.reading_claimed)
        self.failed.clear()  # a reason whose servers were all purged disappears
        for reason, n in figures.failed.items():
            self.failed.labels(reason).set(n)
        self.refreshed.set_to_current_time()

    def serve(self, *, port: int, addr: str) -> None:
        app = make_wsgi_app(self.registry)
        if (supervisor := self._supervisor) is not None:
            app = with_health(supervisor.problem, app)
        self._server = serve(app, port=port, addr=addr)
        self.port = self._server.server_port
        log.info("Prometheus metrics on http://%s:%d/metrics", addr, self.port)

    def close(self) -> None:
        if self._server is not None:
            stop_serving(self._server)
            self._server = None
