"""What `/find image:` pays for encoding its picture instead of reusing a stored vector of the
same bytes (which it no longer does: a faster answer told that the file was posted somewhere).

The same path as the command after its download: `image_vector` (sniff, decode, preprocess in a
thread, encode in the encoder's query lane) with ViT-B-32 (random weights: the cost is the same)
on this machine's device, against the look-up it replaced (one indexed read of a known hash in a
SQLite store). Medians of ``--runs``.

    .venv/bin/python benchmarks/query_picture.py [--runs 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.decode import SPEC, encode, mosaic, photos  # noqa: E402
from retrieval.database.engine import create_engine, ensure_schema  # noqa: E402
from retrieval.encoding.clip import Encoder  # noqa: E402
from retrieval.encoding.service import EncoderService  # noqa: E402
from retrieval.search import image_vector  # noqa: E402
from retrieval.store import open_store  # noqa: E402
from tests.records import image_record  # noqa: E402


async def timed(runs: int, step) -> float:
    await step()  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def main(runs: int, device: str) -> None:
    data = encode(mosaic(1600, 1200, photos()), "JPEG", quality=90)
    encoder = EncoderService(Encoder.load(model="ViT-B-32", pretrained=None, device=device))
    digest = hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(f"sqlite+aiosqlite:///{folder}/bench.db")
        await ensure_schema(engine)
        store = open_store(engine)
        vector = np.ones(512, np.float32) / np.sqrt(512)
        await store.upsert(
            [image_record(0, vector, content_hash=digest, model_id=encoder.model_id)]
        )
        encoded = await timed(
            runs,
            lambda: image_vector(data, encoder=encoder, spec=SPEC, max_pixels=50_000_000),
        )
        looked_up = await timed(
            runs, lambda: store.embedding_for(digest, encoder.model_id, guild_id=1)
        )
        await store.close()
        await engine.dispose()
    await encoder.close()
    print(f"JPEG 1600x1200, {len(data):,} bytes, ViT-B-32 on {device}, median of {runs}")
    print(f"encode the picture (decode + preprocess + encode)  {encoded:8.1f} ms")
    print(f"stored vector of the same bytes (SQLite look-up)    {looked_up:8.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.device))
