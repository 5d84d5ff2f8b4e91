"""The encoder as one stream or as several (CLIP_STREAMS), alone and beside other work.

torch's threads for one batch wait for each other after every operation, so a thread that takes
a core from one of them for a moment holds up all of them. In the pipeline that other work is
decoding (mostly outside the GIL) and the event loop (Python, holding it). This measures the model
alone on pre-decoded pixels, then beside a thread that every 25 ms either prepares a 505x336 JPEG
copy as the pipeline does (`prepare`) or runs 2 ms of Python; with one stream of all of torch's
threads (batch 16) and with two of half as many each (batch 8 each), taking turns over the rounds.
Images/s, medians, and how much of it the work beside took away.

    python -m benchmarks.encoder_streams [--precision bf16] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.harness import encode_in_streams  # noqa: E402
from retrieval.encoding.clip import Encoder  # noqa: E402
from retrieval.pictures.images import prepare  # noqa: E402

THREADS = torch.get_num_threads()
PERIOD_S = 0.025


def encode_for(encoder: Encoder, streams: int, seconds: float) -> float:
    """Images/s with ``streams`` threads each encoding batches of 16 / streams."""
    batch = max(1, 16 // streams)
    pixels = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    threads = max(1, THREADS // streams)
    return encode_in_streams(
        encoder, pixels, streams, enter=lambda: torch.set_num_threads(threads), seconds=seconds
    )


def side_work(kind: str, spec, stop: threading.Event) -> None:
    """One piece of ``kind`` every PERIOD_S until ``stop``."""
    picture = Image.fromarray(
        np.random.default_rng(1).integers(0, 256, (336, 505, 3), dtype=np.uint8)
    )
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    while not stop.wait(PERIOD_S):
        if kind == "decode":
            prepare(data, spec)
        else:
            until = time.thread_time() + 0.002
            while time.thread_time() < until:
                sum(range(200))


def measure(encoder: Encoder, streams: int, beside: str, seconds: float) -> tuple[float, float]:
    """Images/s, and the side thread's CPU as a share of the machine."""
    stop = threading.Event()
    cpu: list[float] = []

    def run() -> None:
        started = time.thread_time()
        side_work(beside, encoder.spec, stop)
        cpu.append(time.thread_time() - started)

    side = threading.Thread(target=run) if beside != "alone" else None
    started = time.perf_counter()
    if side:
        side.start()
    rate = encode_for(encoder, streams, seconds)
    if side:
        stop.set()
        side.join()
    elapsed = time.perf_counter() - started
    return rate, (cpu[0] / elapsed / (os.cpu_count() or 1)) if cpu else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    encoder = Encoder.load(
        model="ViT-B-32", pretrained=None, device="cpu", precision=args.precision, streams=1
    )
    ways = [(streams, beside) for beside in ("alone", "decode", "python") for streams in (1, 2)]
    rates: dict[tuple[int, str], list[float]] = {way: [] for way in ways}
    shares: dict[str, list[float]] = {"decode": [], "python": []}
    print(f"ViT-B-32 (random init), {args.precision}, {THREADS} torch threads")
    for round_ in range(args.rounds):
        for streams, beside in ways if round_ % 2 == 0 else ways[::-1]:
            rate, share = measure(encoder, streams, beside, args.seconds)
            rates[(streams, beside)].append(rate)
            if beside in shares:
                shares[beside].append(share)
    for beside in ("alone", "decode", "python"):
        cells = []
        for streams in (1, 2):
            rate = statistics.median(rates[(streams, beside)])
            alone = statistics.median(rates[(streams, "alone")])
            lost = f" ({(rate / alone - 1) * 100:+.0f}%)" if beside != "alone" else ""
            cells.append(f"{streams} stream(s): {rate:5.1f} img/s{lost}")
        took = (
            f"; the work beside took {statistics.median(shares[beside]) * 100:.1f}% of the machine"
            if beside in shares
            else ""
        )
        print(f"{beside:7s} " + ", ".join(cells) + took)
    one = statistics.median(rates[(1, "alone")])
    two = statistics.median(rates[(2, "alone")])
    print(f"two streams against one, alone: {two / one:.3f}x")


if __name__ == "__main__":
    main()
