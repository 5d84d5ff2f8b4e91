"""Indexing: the durable jobs table (`jobs`), the pipeline that drains it (fetch, decode,
encode, store), backfill's cursors (`cursors`), adopting a new model (`model_switch`), and input
made safe at the edge (`inputs`)."""

from __future__ import annotations

from retrieval.indexing.cursors import BackfillCursors, BackfillProgress, Cursor, snowflake_at
from retrieval.indexing.inputs import clean_ref
from retrieval.indexing.jobs import (
    HISTORY,
    JOBS_CHANNEL,
    LIVE,
    Backlog,
    ImageRef,
    Job,
    JobQueue,
    RetryPolicy,
)
from retrieval.indexing.model_switch import INDEX_MODEL_KEY, adopt_model
from retrieval.indexing.outcomes import PipelineCounters
from retrieval.indexing.pipeline import IndexingPipeline
from retrieval.indexing.signed_urls import WAIT_S as REFRESH_WAIT_S
from retrieval.indexing.signed_urls import RefreshUrls

__all__ = [
    "HISTORY",
    "INDEX_MODEL_KEY",
    "JOBS_CHANNEL",
    "LIVE",
    "REFRESH_WAIT_S",
    "BackfillCursors",
    "BackfillProgress",
    "Backlog",
    "Cursor",
    "ImageRef",
    "IndexingPipeline",
    "Job",
    "JobQueue",
    "PipelineCounters",
    "RefreshUrls",
    "RetryPolicy",
    "adopt_model",
    "clean_ref",
    "snowflake_at",
]
