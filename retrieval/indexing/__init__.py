"""Indexing: the durable jobs table (`jobs`), the pipeline that drains it (fetch, decode,
encode, store), the OCR lane that reads the words in pictures (`reading`, `reading_switch`),
backfill's cursors (`cursors`), adopting a new model (`model_switch`), and input made safe at the
edge (`inputs`)."""

from __future__ import annotations

from retrieval.database.tables import CLIP_LANE, OCR_LANE
from retrieval.indexing.cursors import BackfillCursors, BackfillProgress, Cursor, snowflake_at
from retrieval.indexing.inputs import clean_ref
from retrieval.indexing.jobs import (
    HISTORY,
    JOBS_CHANNEL,
    LIVE,
    OLDEST,
    Backlog,
    ImageRef,
    Job,
    JobQueue,
    RetryPolicy,
)
from retrieval.indexing.model_switch import INDEX_MODEL_KEY, adopt_model
from retrieval.indexing.outcomes import PipelineCounters
from retrieval.indexing.pipeline import IndexingPipeline
from retrieval.indexing.reading import ReadingLane
from retrieval.indexing.reading_switch import apply_reading
from retrieval.indexing.signed_urls import WAIT_S as REFRESH_WAIT_S
from retrieval.indexing.signed_urls import RefreshUrls, SignedUrls

__all__ = [
    "CLIP_LANE",
    "OCR_LANE",
    "HISTORY",
    "INDEX_MODEL_KEY",
    "JOBS_CHANNEL",
    "LIVE",
    "OLDEST",
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
    "ReadingLane",
    "RefreshUrls",
    "RetryPolicy",
    "SignedUrls",
    "adopt_model",
    "apply_reading",
    "clean_ref",
    "snowflake_at",
]
