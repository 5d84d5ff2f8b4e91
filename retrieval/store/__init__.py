"""Vector stores: one interface, a SQLite and a PostgreSQL + pgvector implementation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from retrieval.store.base import ImageRecord, SearchHit, SearchScope, VectorStore
from retrieval.store.matrix_budget import DEFAULT_MATRIX_MEMORY_MB
from retrieval.store.sqlite import SqliteVectorStore
from retrieval.store.words import PictureWords

if TYPE_CHECKING:
    from retrieval.supervisor import Supervisor


def open_store(
    engine: AsyncEngine,
    *,
    matrix_memory_mb: float = DEFAULT_MATRIX_MEMORY_MB,
    supervisor: Supervisor | None = None,
) -> VectorStore:
    """The store for the engine's database; its background tasks (PostgreSQL's index keeper)
    run under ``supervisor``."""
    if engine.dialect.name == "postgresql":
        from retrieval.store.postgres import PgVectorStore

        return PgVectorStore(engine, supervisor=supervisor)
    return SqliteVectorStore(engine, matrix_memory_mb=matrix_memory_mb)


__all__ = [
    "ImageRecord",
    "PictureWords",
    "SearchHit",
    "SearchScope",
    "VectorStore",
    "SqliteVectorStore",
    "open_store",
]
