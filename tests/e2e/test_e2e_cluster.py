"""The cluster as deployed: two gateway processes (`python -m bot`, shard 0 and shard 1 of 2,
ENCODE_IMAGES=false) and one encoder worker (`python -m bot worker`), real subprocesses on one
PostgreSQL and one Discord stand-in; 20 servers over both shards, 1,000 images posted live.

The tests run in order on one cluster (module scope): each leaves it as the next expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from retrieval.database.engine import create_engine, ensure_schema
from retrieval.database.tables import IndexedImage, IndexJob
from tests.conftest import postgres_url
from tests.e2e.test_e2e_privacy_commands import buttons
from tests.e2e.test_e2e_process import process_env
from tests.e2e.test_e2e_shards import command_syncs
from tests.e2e.test_e2e_status import line, status
from tests.e2e.test_worker import worker_env
from tests.fakediscord import FakeDiscord
from tests.fakediscord.models import Channel, Guild, Member
from tests.helpers import bot_settings, eventually, find, free_port, picture, result_ids
from tests.tinyclip.shapes import caption, pairs

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVERS, IMAGES, SHARDS = 20, 1_000, 2
LEASE_S = "3"
CLASSES = list(pairs())
CONNECTED = "connected as "
SWEPT = "servers for channels and threads deleted while offline"


class Process:
    """One `python -m bot ...` subprocess, its log kept in a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name, self.args, self.env, self.workdir = name, args, env, workdir
        self.log_path = workdir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                *self.args,
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=out,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def logged(self, text: str, *, times: int = 1, within: float = 90) -> None:
        async def seen() -> bool:
            if self.process.returncode is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.process.returncode}):\n{self.log()[-3000:]}"
                )
            return self.log().count(text) >= times

        await eventually(seen, within=within)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), 30)

    async def ensure_gone(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@dataclass
class Server:
    guild: Guild
    channel: Channel
    alice: Member


@dataclass
class Cluster:
    fd: FakeDiscord
    engine: object
    bots: list[Process]
    worker: Process
    servers: list[Server]
    bob: list[Member]  # one member in servers[0] (shard 0) and servers[1] (shard 1)
    kind: dict[int, tuple[str, str]] = field(default_factory=dict)  # message id -> class
    images: dict[int, int] = field(default_factory=dict)  # message id -> its attachment's id
    ready_at: float = 0.0  # when the 1,000 images were all stored


async def stored_per_image(engine, **where) -> Counter[tuple[int, int]]:
    stmt = select(IndexedImage.message_id, IndexedImage.image_key, func.count()).group_by(
        IndexedImage.message_id, IndexedImage.image_key
    )
    for column, value in where.items():
        stmt = stmt.where(getattr(IndexedImage, column) == value)
    async with engine.connect() as conn:
        return Counter({(m, k): n for m, k, n in await conn.execute(stmt)})


async def rows(engine, **where) -> int:
    return sum((await stored_per_image(engine, **where)).values())


async def jobs(engine, *, leased: bool = False) -> int:
    stmt = select(func.count()).select_from(IndexJob)
    if leased:
        stmt = stmt.where(IndexJob.claimed_until > func.now())
    async with engine.connect() as conn:
        return int(await conn.scalar(stmt))


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        m[1]: float(m[2])
        for m in re.finditer(r"^(clipfind_[a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.M)
    }


@contextlib.asynccontextmanager
async def database(postgres_server):
    name = f"test_{uuid.uuid4().hex}"
    host = str(postgres_server.get_postmaster_info().socket_dir)
    admin = await asyncpg.connect(user="postgres", database="postgres", host=host)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        engine = create_engine(postgres_url(postgres_server, name))
        try:
            await ensure_schema(engine)
            yield engine
        finally:
            await engine.dispose()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def class_of(n: int) -> tuple[str, str]:
    """The class of the n-th image: every server gets each of the 30 classes once or twice."""
    return CLASSES[(n // SERVERS) % len(CLASSES)]


async def post_image(cluster: Cluster, server: Server, member: Member, n: int):
    colour, shape = class_of(n)
    message = await cluster.fd.post_message(
        server.channel, member, "", attachments=[picture(colour, shape, n, size=96)]
    )
    cluster.kind[message.id] = (colour, shape)
    cluster.images[message.id] = message.attachments[0].id
    return message


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster(postgres_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cluster")
    async with (
        database(postgres_server) as engine,
        FakeDiscord(recommended_shards=SHARDS, max_concurrency=1) as fd,
    ):
        url = engine.url.render_as_string(hide_password=False)
        servers = []
        for i in range(SERVERS):
            guild = fd.add_guild(f"server {i}", shard=(i % SHARDS, SHARDS))
            channel, alice = guild.add_text_channel("memes"), guild.add_member("alice")
            servers.append(Server(guild, channel, alice))
        bob = [servers[0].guild.add_member("bob")]
        bob.append(servers[1].guild.add_existing_user(bob[0].user))
        settings = bot_settings(fd, workdir, database_url=url)
        bots = [
            Process(
                f"bot-{shard}",
                [],
                {
                    **process_env(fd, settings),
                    "SHARD_COUNT": str(SHARDS),
                    "SHARD_IDS": str(shard),
                    "ENCODE_IMAGES": "false",
                    "GUILD_PURGE_GRACE_HOURS": "0",
                    "LOG_LEVEL": "INFO",
                },
                workdir,
            )
            for shard in range(SHARDS)
        ]
        worker = Process(
            "worker",
            ["worker"],
            worker_env(
                url,
                fd.cdn_origin,
                JOB_LEASE_S=LEASE_S,
                METRICS_PORT=str(free_port()),
                METRICS_ADDR="127.0.0.1",
                LOG_LEVEL="INFO",
                # As deployed: the token renews expired links, over REST only.
                DISCORD_TOKEN=fd.token,
                DISCORD_API_BASE=fd.api_base,
            ),
            workdir,
        )
        cluster = Cluster(fd, engine, bots, worker, servers, bob)
        try:
            await asyncio.gather(*(p.start() for p in (*bots, worker)))
            await asyncio.gather(*(b.logged(CONNECTED, within=120) for b in bots))
            await worker.logged("encoder worker started")
            for n in range(IMAGES):
                server = servers[n % SERVERS]
                # Some of bob's images, in a server of each shard, for the opt-out to remove.
                by_bob = n < 2 * SERVERS and n % SERVERS < 2 and n % 4 < 2
                member = bob[n % SERVERS] if by_bob else server.alice
                await post_image(cluster, server, member, n)

            async def all_stored() -> bool:
                return await rows(engine) >= IMAGES and await jobs(engine) == 0

            await eventually(all_stored, within=120)
            cluster.ready_at = time.monotonic()
            yield cluster
        finally:
            started = {*bots, worker, cluster.worker}  # a test may replace the worker
            for process in started:
                await process.ensure_gone()
    for process in started:
        assert "Traceback" not in process.log(), f"{process.name}:\n{process.log()[-3000:]}"


async def test_each_image_is_stored_downloaded_and_encoded_once(cluster):
    stored = await stored_per_image(cluster.engine)
    assert len(stored) == IMAGES and set(stored.values()) == {1}
    assert set(stored) == set(cluster.images.items())
    downloads = Counter(path for path, _ in cluster.fd.cdn.hits if "/attachments/" in path)
    assert len(downloads) == IMAGES and set(downloads.values()) == {1}
    # Encoded by the worker alone, each once: no bot encodes (ENCODE_IMAGES=false).
    figures = scrape(int(cluster.worker.env["METRICS_PORT"]))
    assert figures["clipfind_images_stored_total"] == IMAGES
    assert not [k for k in figures if k.startswith("clipfind_images_failed") and figures[k]]


async def test_cluster_start_synced_commands_once_and_identified_one_shard_per_turn(cluster):
    assert command_syncs(cluster.fd) == 1
    first, second = sorted(cluster.fd.identifies, key=lambda i: i.at)[:2]
    assert {first.shard_id, second.shard_id} == {0, 1}
    assert second.at - first.at >= 5.0, "one bucket (max_concurrency 1): one IDENTIFY per 5 s"
    for shard, bot in enumerate(cluster.bots):
        assert f"shards {shard} of {SHARDS}; {SERVERS // SHARDS} guilds" in bot.log()


async def test_find_answers_in_every_server_with_the_image_it_names(cluster):
    for n, server in enumerate(cluster.servers):
        colour, shape = class_of(n + SERVERS * n)  # that image went to this server
        reply = await find(
            cluster.fd, server.guild, server.channel, server.alice, caption(colour, shape), count=3
        )
        best = result_ids(reply)[0]
        assert cluster.kind[best] == (colour, shape), (n, reply["embeds"][0]["description"])
        assert best in {m.id for m in server.channel.history()}


async def test_an_opt_out_through_shard_0_stops_writes_in_every_process_within_2s(cluster):
    fd, engine = cluster.fd, cluster.engine
    here, there = cluster.servers[0], cluster.servers[1]  # shard 0, shard 1
    bob_here, bob_there = cluster.bob
    before = await rows(engine, author_id=bob_here.id)
    assert before == 4, "bob posted two images in each of the two servers"
    asked = await (
        await fd.invoke_slash(here.guild, here.channel, bob_here, ("privacy", "opt-out"), {})
    ).wait_reply(timeout=30)
    done = await fd.click(asked, buttons(asked)["Opt out and delete my images"], bob_here)
    said = await done.wait_reply(timeout=30, predicate=lambda m: not m["components"])
    assert "4 images" in said["content"], said["content"]
    assert await rows(engine, author_id=bob_here.id) == 0, "gone in both servers"

    # Shard 1's process hears bob's new posts; nothing of his is written any more.
    for n in range(3):
        await post_image(cluster, there, bob_there, IMAGES + n)
    control = await post_image(cluster, there, there.alice, IMAGES + 3)

    async def drained() -> bool:
        return (await rows(engine, message_id=control.id)) == 1 and await jobs(engine) == 0

    await eventually(drained, within=30)
    assert await rows(engine, author_id=bob_here.id) == 0
    assert "opted out" in cluster.bots[0].log()


async def test_restarting_either_bot_deletes_nothing(cluster):
    fd, engine = cluster.fd, cluster.engine
    total = await rows(engine)
    for shard in (1, 0):
        bot = cluster.bots[shard]
        assert await bot.stop() == 0
        here = cluster.servers[shard]
        other = cluster.servers[1 - shard]
        # While it is down no other process hears of its servers (as on Discord, where their
        # interactions would fail); the other shard's are answered as before.
        reply = await find(
            fd, other.guild, other.channel, other.alice, caption(*class_of(1 - shard))
        )
        assert result_ids(reply)
        with pytest.raises(RuntimeError, match="no client is connected"):
            await find(fd, here.guild, here.channel, here.alice, "a red circle")

        await bot.start()
        await bot.logged(CONNECTED, times=2, within=120)
        # Its look at its servers after READY (departures, then channels deleted offline).
        await bot.logged(SWEPT, times=2, within=120)
        reply = await find(fd, here.guild, here.channel, here.alice, caption(*class_of(shard)))
        assert result_ids(reply)
        assert await rows(engine) == total
    assert command_syncs(fd) == 1, "a restart with the same commands syncs nothing"
    # The restarted processes took their turns through the database too.
    times = sorted(i.at for i in fd.identifies)
    assert len(times) == 4 and min(b - a for a, b in pairwise(times)) >= 5.0
    for bot in cluster.bots:
        assert "removed the bot while it was offline" not in bot.log()


async def test_the_owner_sees_the_process_that_answered_and_the_whole_cluster(cluster):
    server = cluster.servers[1]  # shard 1
    owner = server.guild.add_existing_user(cluster.fd.owner_user)
    said = await status(cluster.fd, server.guild, server.channel, owner)
    # Not "the whole bot's 10 servers": the other 10 are another process's.
    assert line(said, "Whole bot").endswith(
        "this process runs shards 1 of 2: 10 servers, other processes the rest):"
    ), said
    assert "encoder workers encode them (ENCODE_IMAGES=false)" in line(said, "This process")
    assert line(said, "Queue, whole cluster").startswith("**Queue, whole cluster:** 0 waiting")
    # The worker is the one encoder (the gateway processes encode no images); its row, written
    # every 15 s, has caught up with the 1,000 by now (the restarts took longer than that).
    encoding = line(said, "Encoding, whole cluster")
    assert re.search(
        r"from 1 process \(worker on [^:]+: [\d.]+/s, 1,00\d stored, 0 in hand\)$", encoding
    ), encoding


async def test_a_server_that_removes_the_bot_is_purged_by_its_owner_alone(cluster):
    fd, engine = cluster.fd, cluster.engine
    gone = cluster.servers[3]  # shard 1
    others = {s.guild.id: await rows(engine, guild_id=s.guild.id) for s in cluster.servers}
    assert others.pop(gone.guild.id) == IMAGES // SERVERS
    await fd.remove_bot_from_guild(gone.guild)
    owner, bystander = cluster.bots[1], cluster.bots[0]
    await owner.logged(f"purged the index of guild {gone.guild.id}", within=30)
    assert await rows(engine, guild_id=gone.guild.id) == 0
    assert {g: await rows(engine, guild_id=g) for g in others} == others
    assert f"guild {gone.guild.id}" not in bystander.log()


async def test_a_worker_killed_mid_batch_loses_nothing_after_its_lease(cluster):
    fd, engine, first = cluster.fd, cluster.engine, cluster.worker
    stalled, posted = range(10, 20), []
    for i in range(20):  # hosted links: their downloads can hang from the first request
        server = cluster.servers[i % 4 if i % 4 != 3 else 4]
        url = fd.host_external_image(
            f"late{i}.png", picture("blue", "star", 5_000 + i).data, "image/png"
        )
        if i in stalled:
            fd.set_cdn_fault(url, stall=True)
        posted.append(
            await fd.post_message(server.channel, server.alice, url, embeds=[fd.image_embed(url)])
        )
    await eventually(lambda: _is(jobs(engine), len(stalled)), within=60)
    await eventually(lambda: _is(jobs(engine, leased=True), len(stalled)), within=10)
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert await jobs(engine, leased=True) == len(stalled), "its claims outlive it"
    fd.cdn.faults.clear()

    second = Process("worker-2", ["worker"], first.env, first.workdir)
    cluster.worker = second  # stopped with the cluster
    await second.start()
    await eventually(lambda: _is(jobs(engine), 0), within=60)
    for message in posted:
        assert len(await stored_per_image(engine, message_id=message.id)) == 1
    stored = await stored_per_image(engine)
    assert set(stored.values()) == {1}, "each image stored once, the dead worker's too"
    assert await second.stop() == 0


async def _is(value, expected) -> bool:
    return await value == expected
