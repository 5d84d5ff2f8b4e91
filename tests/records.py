"""Made-up image records and vectors for the store tests and the store benchmark."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from retrieval.store import ImageRecord

DAY0 = datetime(2026, 1, 1, tzinfo=UTC)
MODEL = "test-model"


def image_record(
    i: int,
    vector: np.ndarray,
    *,
    channels: tuple[int, int] = (10, 3),
    authors: int = 2,
    step: timedelta = timedelta(days=1),
    **overrides,
) -> ImageRecord:
    """Row ``i``: message 1000 + i, image key i, in channel ``first + i % count`` of
    ``channels``, by author 70 + i % ``authors``, posted ``i`` steps after DAY0."""
    first_channel, channel_count = channels
    values = dict(
        guild_id=1,
        channel_id=first_channel + i % channel_count,
        message_id=1000 + i,
        image_key=i,
        kind="attachment",
        author_id=70 + i % authors,
        posted_at=DAY0 + i * step,
        filename=f"img{i}.png",
        source_url=f"https://cdn.example/attachments/{i}.png",
        content_type="image/png",
        content_hash=f"hash{i}",
        model_id=MODEL,
        embedding=vector,
    )
    values.update(overrides)
    return ImageRecord(**values)


def clustered(n: int, dim: int, rng: np.random.Generator, clusters: int = 40) -> np.ndarray:
    """Unit vectors around random centres: like CLIP embeddings, unlike iid noise (HNSW's worst
    case: at 100k x 512, recall@10 of about 0.05 where clustered data gets 0.97)."""
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)]
    x += 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def near(x: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Like text queries: close to some images (cosine ~0.9), on none of them."""
    noise = rng.normal(size=(count, x.shape[1])).astype(np.float32) / np.sqrt(x.shape[1])
    q = x[rng.integers(0, len(x), count)] + 0.5 * noise
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def exact_top(x: np.ndarray, query: np.ndarray, k: int, keep: np.ndarray | None = None) -> list:
    """Row numbers of the k best cosine matches among the rows ``keep`` allows, best first."""
    scores = np.asarray(x) @ query
    if keep is not None:
        scores = np.where(keep, scores, -np.inf)
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


def job_ref(r: ImageRecord):
    """The jobs-table reference the pipeline would have queued for ``r``."""
    from retrieval.indexing import ImageRef

    return ImageRef(
        guild_id=r.guild_id,
        channel_id=r.channel_id,
        parent_id=r.parent_id,
        message_id=r.message_id,
        image_key=r.image_key,
        kind=r.kind,
        author_id=r.author_id,
        posted_at=r.posted_at,
        url=r.source_url,
        source_url=r.source_url,
        filename=r.filename,
        content_type=r.content_type,
    )
