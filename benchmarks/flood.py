"""A flood: N images arrive at once (N concurrent submitters, like N MESSAGE_CREATE events).

Shows that memory stays flat (bounded queues, backpressure), that nothing is dropped, and the
event-loop lag while it drains. Uses the tiny test model so 10,000 images take minutes, not
hours; the pipeline's memory bound does not depend on the model.

    python -m benchmarks.flood [--images 10000] [--images-small 1000]

``--through-discord`` floods the real bot instead: N members' messages with one image each,
posted at once through the Discord stand-in (tests/fakediscord) and received by discord.py over
its gateway websocket, and measures the gateway heartbeat meanwhile. discord.py sends a
heartbeat from its own thread but through the event loop, once the announced interval has
passed since the last one went out, so a heartbeat is late by as long as the loop was busy.
Discord closes a connection whose heartbeat does not come in time; lateness near the interval
is a failure. The stand-in runs on its own thread and event loop (Discord is not on the bot's
loop either; they still share the GIL) and announces ``--heartbeat-ms`` (1,000 by default,
against Discord's 41,250, for many samples). Reported: the stand-in's view (time between
heartbeats received, minus the interval) and discord.py's ``bot.latency`` (heartbeat sent →
ACK read, through the loop).

    python -m benchmarks.flood --through-discord [--images 10000] [--heartbeat-ms 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.harness import image_server, loop_lag, percentile, refs, sqlite_pipeline  # noqa: E402
from retrieval.encoder import Encoder  # noqa: E402
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def image_bytes(i: int, size: int = 256) -> bytes:
    """Distinct 256 px JPEGs (~10 KB): a gradient with the index written into the pixels."""
    base = np.linspace(0, 255, size * size * 3, dtype=np.float32).reshape(size, size, 3)
    base[0, :32, 0] = [(i >> b) & 1 and 255 for b in range(32)]
    buf = io.BytesIO()
    Image.fromarray(base.astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


async def flood(encoder: Encoder, count: int) -> dict:
    images = [(image_bytes(i), "image/jpeg") for i in range(count)]
    async with (
        image_server(images) as base,
        sqlite_pipeline(encoder, source=base, batch_size=32) as pipe,
    ):
        baseline = rss_mb()
        peak = {"rss": baseline, "queue": 0}

        def probe() -> None:
            peak["rss"] = max(peak["rss"], rss_mb())
            peak["queue"] = max(peak["queue"], pipe.queued)

        async with loop_lag(probe) as lags:
            started = time.perf_counter()
            # One submitter per image, as one event handler per MESSAGE_CREATE would be.
            await asyncio.gather(*(pipe.submit([ref]) for ref in refs(base, count)))
            await pipe.join()
            elapsed = time.perf_counter() - started
        return dict(
            images=count,
            indexed=pipe.counters.indexed,
            failed=sum(pipe.counters.failed.values()),
            rate=count / elapsed,
            peak_growth_mb=peak["rss"] - baseline,
            peak_queue=peak["queue"],
            lag_p50=statistics.median(lags),
            lag_p99=percentile(lags, 0.99),
            lag_max=lags[-1],
        )


# -- through Discord: the real bot, its gateway, and the heartbeat --------------------------------

T = TypeVar("T")


class StandIn:
    """The Discord stand-in on its own thread and event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="stand-in", daemon=True)
        self._thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` on the stand-in's loop; the caller's loop stays free meanwhile."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


@contextlib.asynccontextmanager
async def discord_world(heartbeat_ms: int) -> AsyncIterator[tuple[StandIn, Any, Any, Any, Any]]:
    """(stand-in, fake Discord, its channel, its members, the bot) with the bot connected."""
    from bot.app import open_bot
    from tests.e2e import bot_settings
    from tests.fakediscord import DEFAULT_BOT, FakeDiscord

    stand_in = StandIn()

    async def world():
        fd = FakeDiscord(message_content_enabled=True, heartbeat_interval_ms=heartbeat_ms)
        await fd.start()
        guild = fd.add_guild("Flood", bot_permissions=DEFAULT_BOT)
        channel = guild.add_text_channel("memes")
        members = [guild.add_member(f"member{i}") for i in range(50)]
        return fd, channel, members

    fd, channel, members = await stand_in.run(world())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = bot_settings(fd, Path(tmp), backfill=False)
            async with open_bot(settings) as bot:
                task = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
                try:
                    await asyncio.wait_for(bot.wait_until_ready(), 60)
                    yield stand_in, fd, channel, members, bot
                finally:
                    await bot.close()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
    finally:
        await stand_in.run(fd.close())
        stand_in.stop()


async def discord_flood(count: int, heartbeat_ms: int) -> dict:
    from tests.fakediscord import Attachment

    images = [image_bytes(i) for i in range(count)]
    async with discord_world(heartbeat_ms) as (stand_in, fd, channel, members, bot):
        latencies: list[float] = []
        last = bot.latency

        def probe() -> None:
            nonlocal last
            if bot.latency != last:  # a new ACK was read
                last = bot.latency
                latencies.append(last * 1000)

        async def post_all() -> list[float]:
            """Posts everything, 100 messages per turn of the stand-in's loop (so that it reads
            heartbeats in time); returns the stand-in's own loop lag meanwhile."""
            async with loop_lag() as own_lags:
                for at in range(0, count, 100):
                    await asyncio.gather(
                        *(
                            fd.post_message(
                                channel,
                                members[i % len(members)],
                                attachments=[Attachment(f"{i}.jpg", images[i], "image/jpeg")],
                            )
                            for i in range(at, min(at + 100, count))
                        )
                    )
                await stand_in_idle.wait()
            return own_lags

        session = fd.gateway.connected()[0]
        stand_in_idle = asyncio.Event()  # set on the stand-in's loop once all is indexed
        async with loop_lag(probe) as lags:
            started = time.perf_counter()
            beats_from = len(session.heartbeats)
            poster = asyncio.ensure_future(stand_in.run(post_all()))
            while bot.pipeline.counters.indexed < count:
                if poster.done() and poster.exception():
                    raise poster.exception()
                await asyncio.sleep(0.1)
            elapsed = time.perf_counter() - started
            stand_in.loop.call_soon_threadsafe(stand_in_idle.set)
            stand_in_lags = await poster
            beats = session.heartbeats[beats_from:]
        late = sorted((b - a) * 1000 - heartbeat_ms for a, b in zip(beats, beats[1:], strict=False))
        latencies.sort()
        return dict(
            images=count,
            indexed=bot.pipeline.counters.indexed,
            failed=sum(bot.pipeline.counters.failed.values()),
            rate=count / elapsed,
            lags=lags,
            stand_in_lags=stand_in_lags,
            late=late or [float("nan")],
            latencies=latencies or [float("nan")],
            closed=session.ws.closed,
        )


def report_discord(r: dict, heartbeat_ms: int) -> None:
    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.1f}/{percentile(values, 0.99):.1f}/{values[-1]:.1f}"

    print(
        f"{r['images']} images posted at once through the stand-in: {r['indexed']} indexed, "
        f"{r['failed']} failed, {r['rate']:.1f} img/s"
    )
    print(f"  bot's event-loop lag p50/p99/max ms:       {spread(r['lags'])}")
    print(f"  stand-in's event-loop lag p50/p99/max ms:  {spread(r['stand_in_lags'])}")
    print(
        f"  heartbeats received every {heartbeat_ms} ms + lateness p50/p99/max ms: "
        f"{spread(r['late'])} ({len(r['late'])} intervals; worst "
        f"{r['late'][-1] / heartbeat_ms:.0%} of the interval, "
        f"{r['late'][-1] / 41250:.1%} of Discord's 41.25 s)"
    )
    print(
        f"  bot.latency (heartbeat → ACK) p50/p99/max ms: {spread(r['latencies'])} "
        f"({len(r['latencies'])} ACKs)"
    )
    # discord.py's heartbeat thread notes the send time only once the loop has sent the frame;
    # on loopback the ACK can be read first, and the latency is then counted from the heartbeat
    # before (one interval more than it was).
    stale = sum(ms >= heartbeat_ms for ms in r["latencies"])
    if stale:
        fresh = [ms for ms in r["latencies"] if ms < heartbeat_ms] or [float("nan")]
        print(
            f"    {stale} of them ≥ the interval: counted from the heartbeat before (the ACK was "
            f"read before discord.py's thread noted the send); the others: {spread(fresh)}"
        )
    print(f"  connection {'CLOSED' if r['closed'] else 'still open'} at the end")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--images-small", type=int, default=1_000)
    parser.add_argument("--through-discord", action="store_true")
    parser.add_argument("--heartbeat-ms", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.through_discord:
        result = asyncio.run(discord_flood(args.images, args.heartbeat_ms))
        report_discord(result, args.heartbeat_ms)
        return
    encoder = Encoder.load(model=str(CONFIG_PATH), pretrained=str(CHECKPOINT_PATH), device="cpu")
    rows = [asyncio.run(flood(encoder, n)) for n in (args.images_small, args.images)]
    print(
        f"{'images':>7} {'indexed':>7} {'failed':>6} {'img/s':>7} {'RSS growth MB':>13} "
        f"{'peak queue':>10} {'lag p50/p99/max ms':>20}"
    )
    for r in rows:
        print(
            f"{r['images']:>7} {r['indexed']:>7} {r['failed']:>6} {r['rate']:>7.1f} "
            f"{r['peak_growth_mb']:>13.1f} {r['peak_queue']:>10} "
            f"{r['lag_p50']:>6.1f}/{r['lag_p99']:.1f}/{r['lag_max']:.1f}"
        )
    small, big = rows
    print(
        f"{big['images'] / small['images']:.0f}x the images → "
        f"{big['peak_growth_mb'] / max(small['peak_growth_mb'], 0.1):.2f}x the memory growth"
    )


if __name__ == "__main__":
    main()
