"""Looking up whether the bytes being indexed were encoded before: the fetch workers asking at
the same moment share one query (each query is a round trip through the event loop, and one per
image was the largest part of the pipeline's work there)."""

from __future__ import annotations

import asyncio

import numpy as np

from retrieval.store.base import VectorStore


class ReuseLookups:
    def __init__(self, store: VectorStore, model_id: str) -> None:
        self._store = store
        self._model_id = model_id
        self._pending: dict[str, list[asyncio.Future[np.ndarray | None]]] = {}
        self._runner: asyncio.Task | None = None

    async def embedding_for(self, content_hash: str) -> np.ndarray | None:
        """The stored vector of these bytes under the current model, if any."""
        future: asyncio.Future[np.ndarray | None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(content_hash, []).append(future)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="clip-reuse-lookup")
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while self._pending:
            asking, self._pending = self._pending, {}
            try:
                found = await self._store.embeddings_for(list(asking), self._model_id)
            except Exception as exc:  # each asker handles it (StoreUnavailable: retried)
                for futures in asking.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            for content_hash, futures in asking.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found.get(content_hash))
