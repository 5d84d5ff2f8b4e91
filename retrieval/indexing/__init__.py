"""Indexing: the durable jobs table, and the pipeline that drains it (fetch, decode, encode,
store)."""

from __future__ import annotations

from retrieval.indexing.jobs import HISTORY, LIVE, Backlog, ImageRef, Job, JobQueue, RetryPolicy
from retrieval.indexing.pipeline import IndexingPipeline, PipelineCounters

__all__ = [
    "HISTORY",
    "LIVE",
    "Backlog",
    "ImageRef",
    "IndexingPipeline",
    "Job",
    "JobQueue",
    "PipelineCounters",
    "RetryPolicy",
]
