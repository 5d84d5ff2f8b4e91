"""The operator view of a process: the backlog logged every interval and once when it drains,
Prometheus figures from the database on a port of its own, one registry per process object."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from sqlalchemy import delete, insert

from retrieval.config import load_settings
from retrieval.database.tables import IndexFailure, IndexJob
from retrieval.errors import ConfigError
from retrieval.runtime.operating import OperatorView, operator_view
from tests.db.test_cluster import job
from tests.helpers import free_port


async def scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


def settings(**values):
    return load_settings(_env_file=None, **values)


async def add_jobs(engine, *numbers: int, age_s: float = 600) -> None:
    created = datetime.now(UTC) - timedelta(seconds=age_s)
    async with engine.begin() as conn:
        await conn.execute(insert(IndexJob), [job(n, created=created) for n in numbers])


def backlog_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "indexing backlog" in r.getMessage()]


async def test_the_backlog_is_logged_each_interval_and_once_when_it_drains(sqlite_engine, caplog):
    caplog.set_level(logging.INFO, logger="retrieval.runtime.operating")
    view = OperatorView(
        engine=sqlite_engine, reports=[], metrics=None, report_every_s=15, log_every_s=0
    )
    await view.tick()
    assert backlog_lines(caplog) == []  # nothing queued, nothing to say

    await add_jobs(sqlite_engine, 1, 2, 3)
    await view.tick()
    await view.tick()
    first, second = backlog_lines(caplog)
    assert first.startswith("indexing backlog: 3 waiting, 0 waiting for a retry")
    assert "oldest waiting 10 min" in first
    assert "0.0 images/s across 0 consumers" in first
    assert second.startswith("indexing backlog: 3 waiting")

    async with sqlite_engine.begin() as conn:
        await conn.execute(delete(IndexJob))
    await view.tick()
    await view.tick()
    assert len(backlog_lines(caplog)) == 3
    assert backlog_lines(caplog)[-1].startswith("indexing backlog drained")


async def test_pictures_waiting_to_be_read_are_a_backlog_too(sqlite_engine, caplog):
    caplog.set_level(logging.INFO, logger="retrieval.runtime.operating")
    view = OperatorView(
        engine=sqlite_engine, reports=[], metrics=None, report_every_s=15, log_every_s=0
    )
    created = datetime.now(UTC) - timedelta(seconds=60)
    async with sqlite_engine.begin() as conn:
        await conn.execute(
            insert(IndexJob), [job(n, created=created) | {"lane": "ocr"} for n in (1, 2)]
        )
    await view.tick()
    (line,) = backlog_lines(caplog)
    assert line.startswith("indexing backlog: 0 waiting, 0 waiting for a retry")
    assert line.endswith(
        "; words to read: 2 waiting, 0 waiting for a retry, 0 being read; 0.0 pictures/s "
        "across 0 readers"
    )


async def test_the_backlog_line_waits_for_its_interval(sqlite_engine, caplog):
    caplog.set_level(logging.INFO, logger="retrieval.runtime.operating")
    await add_jobs(sqlite_engine, 1)
    view = OperatorView(
        engine=sqlite_engine, reports=[], metrics=None, report_every_s=15, log_every_s=60
    )
    await view.tick()
    await view.tick()  # 15 s later in real life: the minute is not over
    assert len(backlog_lines(caplog)) == 1


async def test_each_process_serves_its_own_figures(sqlite_engine):
    await add_jobs(sqlite_engine, 1, 2)
    async with sqlite_engine.begin() as conn:
        await conn.execute(
            insert(IndexFailure),
            [dict(guild_id=1, reason="too_large", count=4, last_at=datetime.now(UTC))],
        )
    one, two = free_port(), free_port()
    async with (
        operator_view(
            engine=sqlite_engine,
            role="bot",
            pipeline=None,
            settings=settings(metrics_port=one, metrics_addr="127.0.0.1"),
        ) as first,
        operator_view(
            engine=sqlite_engine,
            role="bot",
            pipeline=None,
            settings=settings(metrics_port=two, metrics_addr="127.0.0.1"),
        ) as second,
    ):
        await first.tick()
        text = await scrape(one)
        assert 'clipfind_queue_jobs{state="waiting"} 2.0' in text
        assert 'clipfind_queue_jobs{state="retrying"} 0.0' in text
        assert 'clipfind_cluster_images_failed{reason="too_large"} 4.0' in text
        age = next(row for row in text.splitlines() if row.startswith("clipfind_queue_oldest"))
        assert 590 < float(age.split()[1]) < 700
        # Without a pipeline the process encodes nothing and says nothing about its own work.
        assert "clipfind_images_stored" not in text
        assert second.metrics is not None and second.metrics.registry is not first.metrics.registry
    with pytest.raises(aiohttp.ClientConnectionError):
        await scrape(one)  # the server stops with the view


async def test_metrics_are_off_unless_a_port_is_set(sqlite_engine):
    assert settings().metrics_port is None
    assert settings(metrics_port="").metrics_port is None
    async with operator_view(
        engine=sqlite_engine, role="bot", pipeline=None, settings=settings()
    ) as view:
        assert view.metrics is None


async def test_a_taken_port_is_a_clear_error(sqlite_engine):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"METRICS_PORT: cannot serve metrics on .*:{port}"):
            async with operator_view(
                engine=sqlite_engine,
                role="bot",
                pipeline=None,
                settings=settings(metrics_port=port, metrics_addr="127.0.0.1"),
            ):
                pass
