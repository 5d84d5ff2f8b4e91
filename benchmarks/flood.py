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
is a failure. The stand-in runs in a process of its own, as Discord does, and announces
``--heartbeat-ms`` (1,000 by default, against Discord's 41,250, for many samples). Reported: the
stand-in's view (time between heartbeats received, minus the interval) and discord.py's
``bot.latency`` (heartbeat sent → ACK read, through the loop).

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
import time
from multiprocessing.connection import Connection
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.harness import image_server, loop_lag, percentile, refs, sqlite_pipeline  # noqa: E402
from retrieval.encoding.clip import Encoder  # noqa: E402
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
        image_server(images) as server,
        sqlite_pipeline(encoder, source=server.base, batch_size=32) as pipe,
    ):
        baseline = rss_mb()
        peak = {"rss": baseline, "queue": 0}

        def probe() -> None:
            peak["rss"] = max(peak["rss"], rss_mb())
            peak["queue"] = max(peak["queue"], pipe.queued)

        async with loop_lag(probe) as lags:
            started = time.perf_counter()
            # One submitter per image, as one event handler per MESSAGE_CREATE would be.
            await asyncio.gather(*(pipe.submit([ref]) for ref in refs(server.base, count)))
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


def stand_in_process(conn: Connection, heartbeat_ms: int, count: int) -> None:
    """The Discord stand-in, in a process of its own (as Discord is), driven over ``conn``."""
    asyncio.run(serve_stand_in(conn, heartbeat_ms, count))


async def serve_stand_in(conn: Connection, heartbeat_ms: int, count: int) -> None:
    from tests.fakediscord import DEFAULT_BOT, Attachment, FakeDiscord

    async def receive() -> str:
        return await asyncio.to_thread(conn.recv)

    images = [image_bytes(i) for i in range(count)]
    async with FakeDiscord(message_content_enabled=True, heartbeat_interval_ms=heartbeat_ms) as fd:
        guild = fd.add_guild("Flood", bot_permissions=DEFAULT_BOT)
        channel = guild.add_text_channel("memes")
        members = [guild.add_member(f"member{i}") for i in range(50)]
        conn.send(
            dict(
                token=fd.token,
                api_base=fd.api_base,
                gateway_url=fd.gateway_url,
                cdn_origin=fd.cdn_origin,
            )
        )
        assert await receive() == "post"
        session = fd.gateway.connected()[0]
        beats_from = len(session.heartbeats)
        async with loop_lag() as lags:
            # 100 messages per turn of the loop, so that heartbeats are read as they come.
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
            assert await receive() == "done"
        conn.send(dict(beats=session.heartbeats[beats_from:], lags=lags, closed=session.ws.closed))


async def discord_flood(count: int, heartbeat_ms: int) -> dict:
    """N messages posted at once by the stand-in's members, received and indexed by the bot."""
    import multiprocessing
    from types import SimpleNamespace

    from bot.app import open_bot
    from tests.helpers import bot_settings

    context = multiprocessing.get_context("spawn")
    conn, child_end = context.Pipe()
    child = context.Process(target=stand_in_process, args=(child_end, heartbeat_ms, count))
    child.start()
    child_end.close()  # so that a stand-in that died is an EOFError here, not a wait forever
    try:
        fd = SimpleNamespace(**await asyncio.to_thread(conn.recv))
        with tempfile.TemporaryDirectory() as tmp:
            settings = bot_settings(fd, Path(tmp), backfill=False)
            async with open_bot(settings) as bot:
                task = asyncio.create_task(bot.start(fd.token))
                try:
                    await asyncio.wait_for(bot.wait_until_ready(), 60)
                    result = await flood_bot(bot, conn, count)
                finally:
                    await bot.close()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
    finally:
        child.join(30)
        if child.is_alive():
            child.terminate()
    beats = result.pop("beats")
    result["late"] = sorted(
        (b - a) * 1000 - heartbeat_ms for a, b in zip(beats, beats[1:], strict=False)
    ) or [float("nan")]
    return result


async def flood_bot(bot, conn: Connection, count: int) -> dict:
    latencies: list[float] = []
    last = bot.latency

    def probe() -> None:
        nonlocal last
        if bot.latency != last:  # a new ACK was read
            last = bot.latency
            latencies.append(last * 1000)

    async with loop_lag(probe) as lags:
        started = time.perf_counter()
        conn.send("post")
        while bot.pipeline.counters.indexed < count:  # noqa: ASYNC110 - counters have no event
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
    conn.send("done")
    stand_in = await asyncio.to_thread(conn.recv)
    latencies.sort()
    return dict(
        images=count,
        indexed=bot.pipeline.counters.indexed,
        failed=sum(bot.pipeline.counters.failed.values()),
        rate=count / elapsed,
        lags=lags,
        stand_in_lags=stand_in["lags"],
        beats=stand_in["beats"],
        latencies=latencies or [float("nan")],
        closed=stand_in["closed"],
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
