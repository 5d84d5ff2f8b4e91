"""Every non-search query a member or a start-up can cause uses an index, on both databases, on a
table big enough that the planner would not scan it by choice (50,000 rows over 500 servers,
analyzed): the statements the store really sends are captured and EXPLAINed.

PostgreSQL: no Seq Scan of `images`, `author_guilds`, `index_jobs` or `failed_images` in `EXPLAIN
(FORMAT JSON)`, and an index in every plan. SQLite: no full `SCAN` of them in `EXPLAIN QUERY
PLAN`. And what a member causes names its server, as a database distributed by server needs (see
docs/scaling.md, "Running on Citus"). A large server's date-filtered search reads only the rows
of its dates.
"""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import event, text

from retrieval.database.tables import OCR_LANE
from retrieval.indexing.jobs import ImageRef, Job, JobQueue
from retrieval.indexing.reading_switch import queue_unread
from retrieval.policy.thread_parents import ThreadParents
from retrieval.store import PictureWords, SearchScope, open_store
from retrieval.store.postgres import MAX_SCAN_TUPLES, search_settings
from tests.conftest import seeded_database
from tests.plans import nodes as plan_nodes
from tests.plans import plan_of
from tests.records import MODEL

# 3,001 members (prime to 500): each posts in some 17 servers.
ROWS, GUILDS, CHANNELS, AUTHORS = 50_000, 500, 5_000, 3_001
GUILD = 1000 + 7  # a server of the made-up instance
AUTHOR = 70000 + 7  # a member with images in a handful of servers
TABLES = ("images", "author_guilds", "index_jobs", "failed_images")
_FILL = (
    "INSERT INTO images (guild_id, channel_id, message_id, image_key, kind, author_id, "
    "posted_at, filename, source_url, content_type, content_hash, model_id, embedding) "
    "SELECT 1000 + i % {guilds}, 100000 + i % {channels}, 10000000 + i, i, 'attachment', "
    "70000 + i % {authors}, {now}, 'f.png', 'https://cdn.example/f.png', 'image/png', "
    "'h' || i, CASE WHEN i % 100 = 0 THEN 'old-model' ELSE '{model}' END, {vector} FROM {series}"
)


def _counted(fill: str, *, postgres: bool) -> str:
    """``fill`` with its ``series`` of 1 to :n (SQLite has no generate_series: a recursive CTE)."""
    if postgres:
        return fill
    return (
        "WITH RECURSIVE series(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM series "
        "WHERE i < :n) " + fill
    )


async def _fill(engine) -> None:
    postgres = engine.dialect.name == "postgresql"
    fill = _FILL.format(
        guilds=GUILDS,
        channels=CHANNELS,
        authors=AUTHORS,
        model=MODEL,
        now="now()" if postgres else "'2026-01-01 00:00:00.000000'",
        vector="CAST('[1,0,0,0]' AS vector)" if postgres else "x'0000803f000000000000000000000000'",
        series="generate_series(1, :n) AS i" if postgres else "series",
    )
    fill = _counted(fill, postgres=postgres)
    async with engine.begin() as conn:
        await conn.execute(text(fill), {"n": ROWS})
        await conn.execute(
            text("INSERT INTO author_guilds SELECT DISTINCT author_id, guild_id FROM images")
        )
        # A backlog as large, of other messages: deletions and the sweep reach into it too.
        await conn.execute(
            text(
                "INSERT INTO index_jobs (guild_id, channel_id, message_id, image_key, kind, "
                "author_id, posted_at, url, source_url, filename, content_type, priority, "
                "attempts, retry_at, created_at) SELECT guild_id, channel_id, "
                "message_id + :n, image_key, kind, author_id, posted_at, source_url, "
                "source_url, filename, content_type, 1, 0, posted_at, posted_at FROM images"
            ),
            {"n": ROWS},
        )
        # As many images failed for good, of other messages again: each enqueue asks them.
        await conn.execute(
            text(
                "INSERT INTO failed_images (guild_id, message_id, image_key, lane, channel_id, "
                "author_id, reason, failed_at) SELECT guild_id, message_id + 2 * :n, "
                "image_key, 'clip', channel_id, author_id, 'not_an_image', posted_at FROM images"
            ),
            {"n": ROWS},
        )
        # Words read from a third of the pictures (migration 0013's text index).
        await conn.execute(
            text(
                "UPDATE images SET words = 'caption ' || id || ' deploy', words_model = 'ocr' "
                "WHERE id % 3 = 0"
            )
        )
        await conn.execute(text("ANALYZE"))


def reads(statement: str) -> bool:
    """Whether the statement reads a table: an INSERT of VALUES (its conflict checked on the
    primary key) has no plan to look at."""
    words = statement.upper()
    return not (words.lstrip().startswith("INSERT") and "SELECT" not in words)


@contextlib.contextmanager
def _captured(engine):
    """The statements sent to the database (and their parameters) while the block runs."""
    sent: list[tuple[str, object]] = []

    def note(conn, cursor, statement, parameters, context, executemany):
        if (
            not executemany
            and reads(statement)
            and any(re.search(rf"\b{t}\b", statement) for t in TABLES)
        ):
            sent.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", note)


async def _plan_problems(engine, statement: str, parameters, *, routed: bool) -> list[str]:
    """What is wrong with the statement's plan: a full scan of a table, or no index at all;
    with ``routed``, an images table read that the server's id does not narrow (what a
    distributed database needs to send it to one machine)."""
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            nodes = list(plan_nodes(await plan_of(conn, statement, parameters)))
            scans = [
                n["Relation Name"]
                for n in nodes
                if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in TABLES
            ]
            indexed = [n for n in nodes if "Index Name" in n]
            problems = [f"Seq Scan on {table}" for table in scans]
            on_images = [n for n in nodes if n.get("Relation Name") == "images"]
            unrouted = [
                n["Node Type"]
                for n in on_images
                if n["Node Type"] != "ModifyTable"  # it deletes what the scan below found
                and not any(
                    "guild_id" in c.get(k, "")
                    for c in plan_nodes(n)
                    for k in ("Index Cond", "Recheck Cond", "Filter")
                )
            ]
            if routed and unrouted:
                problems.append(f"not narrowed to one server: {unrouted}")
            return problems + ([] if indexed else ["no index used"])
        rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)).all()
        details = [row[-1] for row in rows]
        scans = [d for d in details if re.match(rf"SCAN ({'|'.join(TABLES)})\b", d)]
        indexed = [d for d in details if "INDEX" in d or "PRIMARY KEY" in d]
        problems = scans + ([] if indexed else [f"no index used: {details}"])
        # SQLite's plan names only the index's columns: the statement itself must.
        if routed and " images" in statement and "images.guild_id" not in statement:
            problems.append("not narrowed to one server")
        return problems


@pytest.fixture(params=["sqlite", "postgres"])
async def store_engine(request):
    """Both databases, filled once per test process and copied for each test."""
    async with seeded_database(request, request.param, _fill) as engine:
        yield engine


@pytest.fixture
async def big(store_engine):
    store = open_store(store_engine)
    yield store
    await store.close()


def _posted() -> ImageRef:
    return ImageRef(
        guild_id=GUILD,
        channel_id=100_007,
        message_id=10_000_007,
        image_key=7,
        kind="attachment",
        author_id=AUTHOR,
        posted_at=datetime(2026, 1, 1, tzinfo=UTC),
        url="https://cdn.example/f.png",
        source_url="https://cdn.example/f.png",
        filename="f.png",
    )


QUERIES = {
    # /privacy status and the opt-out question
    "author's servers": lambda s: s.author_guild_ids(AUTHOR),
    "count a member's images everywhere": lambda s: s.count_author(author_id=AUTHOR),
    "count a member's images here": lambda s: s.count_author(author_id=AUTHOR, guild_id=GUILD),
    # /clipfind status
    "count a server's images": lambda s: s.count(guild_id=GUILD),
    "count a server's images of the model": lambda s: s.count(guild_id=GUILD, model_id=MODEL),
    "count a member's readable images": lambda s: s.count(
        guild_id=GUILD, model_id=MODEL, channel_ids={100_007, 100_507}
    ),
    "a server's backlog": lambda s: JobQueue(s.engine, model_id=MODEL).backlog(GUILD),
    # an image posted: queued unless its server holds it for the model already
    "queue an image": lambda s: JobQueue(s.engine, model_id=MODEL).enqueue([_posted()]),
    # an image that fails for good and would again: its job goes, its ids are kept
    "an image failed for good": lambda s: JobQueue(s.engine, model_id=MODEL).fail(
        [Job(7, _posted(), 0)], "not_an_image", lasting=True
    ),
    # a search: the channels with images (threads the cache lacks), a known picture's vector
    "a server's channels": lambda s: s.channel_ids(guild_id=GUILD),
    "a query picture encoded before": lambda s: s.embedding_for("h7", MODEL, guild_id=GUILD),
    "bytes encoded before, anywhere": lambda s: s.embeddings_for(["h7", "h8"], MODEL),
    # start-up
    "servers with images": lambda s: s.guild_ids(),
    "rows of other models": lambda s: s.model_counts(other_than=MODEL),
    # a message posted, edited or found again
    "a message's keys": lambda s: s.known_keys(10_000_007, guild_id=GUILD),
    "a message's vectors": lambda s: s.message_vectors(10_000_007, MODEL, guild_id=GUILD),
    "vectors of results": lambda s: s.vectors([7, 507, 1007], guild_id=GUILD),
    # the words read from pictures: queued, kept, searched, shown, counted, forgotten
    "queue an image and its reading": lambda s: JobQueue(
        s.engine, model_id=MODEL, read_words=True
    ).enqueue([_posted()]),
    "a server's reading backlog": lambda s: (
        JobQueue(s.engine, model_id=MODEL).for_lane(OCR_LANE).backlog(GUILD)
    ),
    "is the picture stored, was it read": lambda s: s.words_source(
        guild_id=GUILD, message_id=10_000_007, image_key=7, model="ocr"
    ),
    "keep a picture's words": lambda s: s.store_words(
        [PictureWords(GUILD, 10_000_007, 7, words="deploy failed", model="ocr")]
    ),
    "search a server's words": lambda s: s.words_matching(
        scope=SearchScope(GUILD, MODEL), all_of=["caption 1"], none_of=["friday"], k=50
    ),
    "search a channel's words": lambda s: s.words_matching(
        scope=SearchScope(GUILD, MODEL, channel_ids=frozenset({100_007})), all_of=["dep"], k=50
    ),
    "words of results": lambda s: s.words_of([7, 507, 1007], guild_id=GUILD),
    "count a member's words": lambda s: s.count_words(author_id=AUTHOR),
    "forget a server's words": lambda s: s.forget_words(guild_id=GUILD),
    # deletions: a message, images edited out, a channel, an opt-out, a server
    "delete a message": lambda s: s.delete_messages([10_000_507], guild_id=GUILD),
    "delete edited-out images": lambda s: s.delete_images(10_001_007, [], guild_id=GUILD),
    "delete a channel": lambda s: s.delete_channels([100_007], guild_id=GUILD),
    "delete a member everywhere": lambda s: s.delete_author(guild_id=None, author_id=AUTHOR),
    "delete a server": lambda s: s.delete_guild(GUILD + 1),
    # start-up with reading turned on: every image not read yet gets a reading
    "queue the unread images": lambda s: queue_unread(s.engine, batch=1_000),
    # every 5 minutes: what an opt-out or exclusion forbids
    "sweep forbidden rows": lambda s: s.delete_forbidden(),
    # start-up: threads whose parent is unknown, and recording what Discord says of them
    "threads without a known parent": lambda s: ThreadParents(s.engine).unknown(),
    "record threads' parents": lambda s: ThreadParents(s.engine).record(
        {100_007: 100_507, 100_008: None}, guild_id=GUILD
    ),
}


# Work that spans servers by nature (start-up, indexing's look-up of bytes encoded anywhere,
# the policy's sweep, threads whose parent is unknown):
# may ask every server's rows, through an index.
UNROUTED = {
    "queue the unread images",
    "rows of other models",
    "bytes encoded before, anywhere",
    "sweep forbidden rows",
    "threads without a known parent",
}


async def test_user_and_startup_queries_use_indexes(big, store_engine):
    problems: dict[str, list[str]] = {}
    for name, query in QUERIES.items():
        with _captured(store_engine) as sent:
            await query(big)
        assert sent, f"{name}: no statement on {TABLES} captured"
        for statement, parameters in sent:
            routed = name not in UNROUTED
            found = await _plan_problems(store_engine, statement, parameters, routed=routed)
            for problem in found:
                problems.setdefault(name, []).append(f"{problem}: {statement[:200]}")
    assert problems == {}


async def test_the_queries_did_their_work(big):
    """The EXPLAINed statements are the real ones: they found and deleted what they should."""
    here = await big.count_author(author_id=AUTHOR, guild_id=GUILD)
    everywhere = await big.count_author(author_id=AUTHOR)
    assert 0 < here < everywhere
    assert len(await big.guild_ids()) == GUILDS
    assert await big.model_counts(other_than=MODEL) == {"old-model": ROWS // 100}
    assert await big.delete_author(guild_id=None, author_id=AUTHOR) == everywhere
    assert await big.count_author(author_id=AUTHOR) == 0
    assert np.isfinite(await big.count(guild_id=GUILD))


# A large server beside the 500 small ones, its images spread over 200 days: searched through its
# own HNSW index on PostgreSQL, from its matrix on SQLite.
LARGE, LARGE_ROWS, DAYS = 999, 20_000, 200
FIRST_DAY = datetime(2025, 1, 1, tzinfo=UTC)
_FILL_LARGE = (
    "INSERT INTO images (guild_id, channel_id, message_id, image_key, kind, author_id, "
    "posted_at, filename, source_url, content_type, content_hash, model_id, embedding) "
    "SELECT {guild}, 900000 + i % 40, 90000000 + i, i, 'attachment', 70000 + i % 300, {posted}, "
    "'f.png', 'https://cdn.example/f.png', 'image/png', 'l' || i, '{model}', {vector} "
    "FROM {series}"
)

# How SQLAlchemy stores a time in SQLite: 'YYYY-MM-DD HH:MM:SS.ffffff'.
_SQLITE_POSTED = "strftime('%Y-%m-%d %H:%M:%f000', '2025-01-01', '+' || (i * {step}) || ' seconds')"


async def _with_large(engine) -> None:
    """Over the 500 small servers (`_fill`), the large one: a third of its pictures saying
    "slide <id>" (a common word), its HNSW index built on PostgreSQL, and its pages all visible
    as autovacuum keeps them. Seeded once per test process (seconds of inserts, ANALYZE and the
    index build)."""
    postgres = engine.dialect.name == "postgresql"
    step = DAYS * 86_400 // LARGE_ROWS  # seconds between two images
    fill = _FILL_LARGE.format(
        guild=LARGE,
        model=MODEL,
        posted=(
            f"TIMESTAMPTZ '2025-01-01 00:00:00+00' + i * INTERVAL '{step} seconds'"
            if postgres
            else _SQLITE_POSTED.format(step=step)
        ),
        # Spread vectors: the index of a server whose vectors are all equal is no graph at all.
        vector="CAST(ARRAY[random(), random(), random(), random()] AS vector)"
        if postgres
        else "x'0000803f000000000000000000000000'",
        series="generate_series(1, :n) AS i" if postgres else "series",
    )
    fill = _counted(fill, postgres=postgres)
    async with engine.begin() as conn:
        await conn.execute(text(fill), {"n": LARGE_ROWS})
        await conn.execute(
            text(
                f"UPDATE images SET words = 'slide ' || id WHERE guild_id = {LARGE} AND id % 3 = 0"
            )
        )
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.execute(text("VACUUM ANALYZE" if postgres else "ANALYZE"))
    if postgres:
        store = open_store(engine)
        try:
            assert await store.indexes.check(LARGE, MODEL) == "built"
        finally:
            await store.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def large_engine(request):
    """Both databases with the large server beside the small ones, copied for each test."""
    async with seeded_database(request, request.param, _with_large, on=_fill) as engine:
        yield engine


@pytest.fixture
async def large(large_engine):
    store = open_store(large_engine)
    if large_engine.dialect.name == "postgresql":  # the seed's index, still valid in the copy
        assert await store.indexes.check(LARGE, MODEL) == "kept"
    yield store
    await store.close()


async def _rows_read(engine, statement: str, parameters) -> int:
    """How many rows of `images` the statement's plan reads, kept or filtered out (PostgreSQL)."""
    async with engine.begin() as conn:
        plan = await plan_of(conn, statement, parameters, analyze=True)
    return sum(
        (n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"]
        + n.get("Rows Removed by Index Recheck", 0)
        for n in plan_nodes(plan)
        if n.get("Relation Name") == "images"
    )


async def test_a_date_only_search_of_a_large_server_reads_its_dates(large, large_engine):
    """/find with after:/before: alone on a large server: PostgreSQL counts the matching rows
    (few: answered exactly) and ranks them, each through the server's dates in a B-tree, never
    reading the rest of the server's rows to test their dates. SQLite ranks its matrix."""
    postgres = large_engine.dialect.name == "postgresql"
    after = FIRST_DAY + timedelta(days=100)
    scope = SearchScope(LARGE, MODEL, after=after, before=after + timedelta(days=2))
    query = np.array([1, 0, 0, 0], dtype=np.float32)
    with _captured(large_engine) as sent:
        hits = await large.search(query, scope=scope, k=10)
    assert len(hits) == 10
    assert all(scope.after <= h.posted_at < scope.before for h in hits)
    # The statements that filter by date: on PostgreSQL the capped count, then the search.
    dated = [(st, params) for st, params in sent if "posted_at >=" in st]
    assert len(dated) == (2 if postgres else 0), [st[:200] for st, _ in sent]
    matching = LARGE_ROWS * 2 // DAYS
    for statement, parameters in sent:
        problems = await _plan_problems(large_engine, statement, parameters, routed=True)
        if (statement, parameters) in dated or not postgres:
            assert problems == [], statement
    for statement, parameters in dated:
        read = await _rows_read(large_engine, statement, parameters)
        assert read <= 2 * matching, f"{read} rows read: {statement[:300]}"


async def test_a_search_of_words_goes_through_the_text_index(large, large_engine):
    """The text side of /find on a large server reads the trigram index (PostgreSQL's GIN over
    guild and words, SQLite's FTS5 table), not the server's rows one by one."""
    async with large_engine.connect() as conn:
        wanted = await conn.scalar(
            text(f"SELECT max(id) FROM images WHERE guild_id = {LARGE} AND words <> ''")
        )
    scope = SearchScope(LARGE, MODEL)
    with _captured(large_engine) as sent:
        hits = await large.words_matching(scope=scope, all_of=[f"slide {wanted}"], k=50)
    assert [h.row_id for h in hits] == [wanted]
    ((statement, parameters),) = sent
    async with large_engine.connect() as conn:
        if large_engine.dialect.name == "postgresql":
            plan = await plan_of(conn, statement, parameters)
            used = {n.get("Index Name") for n in plan_nodes(plan)}
            assert "ix_images_words" in used, used
        else:
            explained = "EXPLAIN QUERY PLAN " + statement
            details = [row[-1] for row in await conn.exec_driver_sql(explained, parameters)]
            assert any(d.startswith("SCAN images_words VIRTUAL TABLE") for d in details), details


async def test_a_common_word_costs_the_rows_asked_not_every_picture_saying_it(large, large_engine):
    """The text side of /find for a word 6,667 pictures of the server say reads the k rows it
    returns: PostgreSQL stops reading the trigram index's matches at k, SQLite walks the FTS5
    matches into the images table and stops at k (no list of every match, no sort of them)."""
    scope = SearchScope(LARGE, MODEL, channel_ids=frozenset(range(900000, 900040)))
    with _captured(large_engine) as sent:
        hits = await large.words_matching(scope=scope, all_of=["slide", "lid"], k=50)
    assert len(hits) == 50 and all("slide" in h.says for h in hits)
    assert hits == sorted(hits, key=lambda h: (h.posted_at, h.row_id), reverse=True)
    ((statement, parameters),) = sent
    assert await _plan_problems(large_engine, statement, parameters, routed=True) == []
    if large_engine.dialect.name == "postgresql":
        assert await _rows_read(large_engine, statement, parameters) <= 2 * 50
        return
    async with large_engine.connect() as conn:
        explained = "EXPLAIN QUERY PLAN " + statement
        details = [row[-1] for row in await conn.exec_driver_sql(explained, parameters)]
    assert details[0].startswith("SCAN images_words VIRTUAL TABLE"), details
    assert details[1].startswith("SEARCH images USING INTEGER PRIMARY KEY"), details
    assert not [d for d in details if "TEMP B-TREE" in d or "LIST SUBQUERY" in d], details


async def test_an_excluded_word_is_tested_on_the_rows_the_search_meets(large, large_engine):
    """/find's `-word` on a large server: no statement lists the pictures saying it (SQLite
    tests the ranked rows' words, PostgreSQL each row its scan meets), and on PostgreSQL it
    does not count the server's rows first as a filter that narrows would."""
    postgres = large_engine.dialect.name == "postgresql"
    scope = SearchScope(LARGE, MODEL, words_none=("slide",))
    query = np.array([1, 0, 0, 0], dtype=np.float32)
    with _captured(large_engine) as sent:
        hits = await large.search(query, scope=scope, k=50)
    assert len(hits) == 50
    said = await large.words_of([h.row_id for h in hits], guild_id=LARGE)
    assert not [row_id for row_id, words in said.items() if "slide" in words]
    statements = [statement for statement, _ in sent]
    assert not [s for s in statements if "MATCH" in s], statements
    if postgres:  # the filter's capped count (SQLite's count sizes the server's matrix)
        assert not [s for s in statements if "count(" in s], statements
    tested = [(st, params) for st, params in sent if "instr(" in st or "strpos(" in st]
    assert len(tested) == 1, statements
    ((statement, parameters),) = tested
    # On PostgreSQL the server's own HNSW index (partial on its guild_id) names the server.
    routed = not postgres
    assert await _plan_problems(large_engine, statement, parameters, routed=routed) == []
    if postgres:
        async with large_engine.begin() as conn:
            await conn.execute(search_settings(MAX_SCAN_TUPLES))
            plan = await plan_of(conn, statement, parameters)
        used = {n.get("Index Name") for n in plan_nodes(plan)}
        assert [name for name in used if name and name.startswith("ix_images_ann_")], used


# SQLite ranks its matrix: nothing to count.
@pytest.mark.parametrize("large_engine", ["postgres"], indirect=True)
async def test_a_channel_filter_is_counted_from_the_channel_index_alone(large, large_engine):
    """PostgreSQL counts how many rows a channel filter keeps (capped) before it picks the exact
    scan or the server's HNSW index: from the (guild, channel) B-tree alone, never the table's
    rows, even when the filter keeps the whole server (every channel a member reads)."""
    scope = SearchScope(LARGE, MODEL, channel_ids=frozenset(range(900000, 900040)))
    with _captured(large_engine) as sent:
        hits = await large.search(np.array([1, 0, 0, 0], dtype=np.float32), scope=scope, k=10)
    assert len(hits) == 10
    ((statement, parameters),) = [(st, p) for st, p in sent if "count(" in st]
    async with large_engine.connect() as conn:
        plan = await plan_of(conn, statement, parameters)
    scans = {n["Node Type"] for n in plan_nodes(plan) if n.get("Relation Name") == "images"}
    used = {n.get("Index Name") for n in plan_nodes(plan)} - {None}
    assert scans == {"Index Only Scan"} and used == {"ix_images_guild_channel"}, (scans, used)
