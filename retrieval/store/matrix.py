"""An in-memory matrix of one guild's vectors for exact search in milliseconds.

Reading 100k BLOBs from SQLite per query takes over half a second; a float32 matrix answers the
same top-k in about 12 ms. Rows are appended in amortised O(1) and removed by swapping in the
last row, so updates never rebuild the matrix.

Vectors can be kept in 16 bits: unit vectors' components lie in [-1, 1], so a fixed-point int16
(value × 32767) is as fine as float16 there (steps of 3e-5) and turns back into float32 with one
vectorised cast. numpy's own float16 is no use: its products and its casts to float32 are not
vectorised, 40 times slower than float32 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

_SCALE = 32767.0
# Rows turned back into float32 at a time: 1 MB of 512-d rows stays in the CPU's cache between
# the cast and the product (larger blocks were several times slower here).
_BLOCK = 512
# What the row-id index (a dict of Python ints) costs per row: 116 bytes with tracemalloc.
_INDEX_BYTES_PER_ROW = 120


@dataclass(frozen=True, slots=True)
class MatrixRow:
    row_id: int
    channel_id: int
    author_id: int
    posted_ts: float
    vector: np.ndarray


@dataclass(frozen=True, slots=True)
class MatrixFilter:
    channel_ids: frozenset[int] | None = None
    author_id: int | None = None
    after_ts: float | None = None
    before_ts: float | None = None
    exclude_row_ids: frozenset[int] = frozenset()
    # None: any row; else only these (the rows whose words hold a searched phrase).
    only_row_ids: frozenset[int] | None = None


def matrix_bytes(*, rows: int, dim: int, half: bool) -> int:
    """What a matrix of that many rows holds in memory: vectors, four columns, the row index."""
    return rows * (dim * (2 if half else 4) + 4 * 8 + _INDEX_BYTES_PER_ROW)


class GuildMatrix:
    def __init__(self, dim: int, capacity: int = 1024, *, half: bool = False) -> None:
        self.dim = dim
        self.half = half
        self.size = 0
        self._pos: dict[int, int] = {}
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._channels = np.zeros(capacity, dtype=np.int64)
        self._authors = np.zeros(capacity, dtype=np.int64)
        self._posted = np.zeros(capacity, dtype=np.float64)
        self._vectors = self._empty_vectors(capacity)

    def __len__(self) -> int:
        return self.size

    def __contains__(self, row_id: int) -> bool:
        return row_id in self._pos

    @property
    def nbytes(self) -> int:
        """Memory held, counting the capacity reserved for rows still to come."""
        return self._vectors.nbytes + 4 * 8 * len(self._ids) + _INDEX_BYTES_PER_ROW * len(self._pos)

    def _empty_vectors(self, capacity: int) -> np.ndarray:
        return np.zeros((capacity, self.dim), dtype=np.int16 if self.half else np.float32)

    def _stored(self, vectors: np.ndarray) -> np.ndarray:
        if not self.half:
            return vectors
        scaled = vectors * np.float32(_SCALE)  # one copy, then worked on in place
        np.clip(scaled, -_SCALE, _SCALE, out=scaled)
        return np.rint(scaled, out=scaled).astype(np.int16)

    def _set_dim(self, dim: int) -> None:
        # A guild searched before its first image has no dimension yet: take the model's.
        self.dim = dim
        self._vectors = self._empty_vectors(len(self._ids))

    def _grow(self, needed: int) -> None:
        capacity = len(self._ids)
        if needed <= capacity:
            return
        # By half, not double: a large guild's spare rows count against the memory budget.
        new = max(needed, capacity + capacity // 2)
        for name in ("_ids", "_channels", "_authors", "_posted"):
            old = getattr(self, name)
            grown = np.zeros(new, dtype=old.dtype)
            grown[: self.size] = old[: self.size]
            setattr(self, name, grown)
        vectors = self._empty_vectors(new)
        vectors[: self.size] = self._vectors[: self.size]
        self._vectors = vectors

    def append(
        self,
        *,
        ids: np.ndarray,
        channels: np.ndarray,
        authors: np.ndarray,
        posted: np.ndarray,
        vectors: np.ndarray,
    ) -> None:
        """Rows not in the matrix yet, as columns: how a guild is loaded, one chunk at a time.

        Whole columns at once and no Python object per row, so a worker thread loads a million
        rows in seconds (benchmarks/RESULTS.md, event-loop lag).
        """
        count = len(ids)
        if count == 0:
            return
        if self.size == 0 and self.dim != vectors.shape[1]:
            self._set_dim(vectors.shape[1])
        self._grow(self.size + count)
        end = self.size + count
        self._ids[self.size : end] = ids
        self._channels[self.size : end] = channels
        self._authors[self.size : end] = authors
        self._posted[self.size : end] = posted
        self._vectors[self.size : end] = self._stored(vectors)
        self._pos.update(zip(ids.tolist(), range(self.size, end), strict=True))
        self.size = end

    def add(self, rows: Iterable[MatrixRow]) -> None:
        rows = list(rows)
        if rows and self.size == 0 and self.dim != len(rows[0].vector):
            self._set_dim(len(rows[0].vector))
        for row in rows:
            at = self._pos.get(row.row_id)
            if at is None:
                self._grow(self.size + 1)
                at = self.size
                self.size += 1
                self._pos[row.row_id] = at
            self._ids[at] = row.row_id
            self._channels[at] = row.channel_id
            self._authors[at] = row.author_id
            self._posted[at] = row.posted_ts
            self._vectors[at] = self._stored(np.asarray(row.vector, dtype=np.float32))

    def remove(self, row_ids: Iterable[int]) -> int:
        removed = 0
        for row_id in row_ids:
            at = self._pos.pop(row_id, None)
            if at is None:
                continue
            last = self.size - 1
            if at != last:
                moved = int(self._ids[last])
                for array in (
                    self._ids,
                    self._channels,
                    self._authors,
                    self._posted,
                    self._vectors,
                ):
                    array[at] = array[last]
                self._pos[moved] = at
            self.size -= 1
            removed += 1
        return removed

    def _mask(self, where: MatrixFilter) -> np.ndarray | None:
        n = self.size
        mask = None

        def narrow(condition: np.ndarray) -> None:
            nonlocal mask
            mask = condition if mask is None else mask & condition

        if where.channel_ids is not None:
            allowed = np.fromiter(where.channel_ids, dtype=np.int64, count=len(where.channel_ids))
            narrow(np.isin(self._channels[:n], allowed))
        if where.author_id is not None:
            narrow(self._authors[:n] == where.author_id)
        if where.after_ts is not None:
            narrow(self._posted[:n] >= where.after_ts)
        if where.before_ts is not None:
            narrow(self._posted[:n] < where.before_ts)
        if where.exclude_row_ids:
            excluded = np.fromiter(where.exclude_row_ids, dtype=np.int64)
            narrow(~np.isin(self._ids[:n], excluded))
        if where.only_row_ids is not None:
            only = np.fromiter(where.only_row_ids, dtype=np.int64, count=len(where.only_row_ids))
            narrow(np.isin(self._ids[:n], only))
        return mask

    def _scores(self, query: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        """Cosine scores of all rows, or of the given rows only (a filter that keeps few)."""
        vectors = self._vectors[: self.size] if rows is None else self._vectors[rows]
        if not self.half:
            return vectors @ query
        scores = np.empty(len(vectors), dtype=np.float32)
        block = np.empty((min(_BLOCK, len(vectors)), self.dim), dtype=np.float32)
        for start in range(0, len(vectors), _BLOCK):
            part = block[: min(_BLOCK, len(vectors) - start)]
            part[...] = vectors[start : start + len(part)]
            np.matmul(part, query, out=scores[start : start + len(part)])
        scores /= _SCALE
        return scores

    def search(self, query: np.ndarray, k: int, where: MatrixFilter) -> list[tuple[int, float]]:
        """Row ids and cosine scores of the k best rows that pass the filter, best first."""
        if self.size == 0 or k <= 0:
            return []
        query = np.asarray(query, dtype=np.float32)
        mask = self._mask(where)
        candidates = None if mask is None else np.flatnonzero(mask)
        if candidates is not None and len(candidates) == 0:
            return []
        # A filter that keeps most rows: one product over all is cheaper than gathering them.
        if candidates is not None and len(candidates) > self.size // 2:
            scores = self._scores(query, None)[candidates]
        else:
            scores = self._scores(query, candidates)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        rows = top if candidates is None else candidates[top]
        return [(int(self._ids[r]), float(s)) for r, s in zip(rows, scores[top], strict=True)]
