"""Does `CLIP_PRECISION=auto` pick the faster precision here? Its calibration against a longer
side-by-side measurement of both, in one process.

fp32 and bf16 encoders of the model (random weights: speed does not depend on them) are loaded
once. The reference: batches at the batch size, alternating between the two (a b b a ...),
`--rounds` of each in all; the median seconds per batch of each. The calibration `Encoder.load`
runs (`retrieval.encoding.precision.calibrate`, without its cache) is tried `--trials` times,
between slices of the reference so that both see the same load; for each trial, the reference speed
of what it chose against the faster one's. Auto is within 5% when every trial's choice is.

    python -m benchmarks.precision [--model ViT-B-32] [--batch 16] [--rounds 12] [--trials 4]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from retrieval.encoding.clip import Encoder  # noqa: E402
from retrieval.encoding.precision import (  # noqa: E402
    CalibrationCache,
    CalibrationKey,
    calibrate,
    cpu_identity,
)

PRECISIONS = ("fp32", "bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=16, help="the CPU default is 16")
    parser.add_argument("--rounds", type=int, default=12, help="reference batches of each")
    parser.add_argument("--trials", type=int, default=4, help="calibrations to judge")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cpu, flags = cpu_identity()
    print(f"{cpu or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    encoders = {
        p: Encoder.load(model=args.model, pretrained=None, device="cpu", precision=p)
        for p in PRECISIONS
    }
    size = encoders["fp32"].spec.size
    pixels = np.random.default_rng(0).standard_normal((args.batch, 3, size, size), np.float32)

    def run(precision: str) -> None:
        encoders[precision].encode_images(pixels)

    key = CalibrationKey(
        cpu=cpu,
        cpu_flags=flags,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        model_id=encoders["fp32"].model_id,
        batch_size=args.batch,
    )
    for precision in PRECISIONS:
        run(precision)  # warm-up
    reference: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    trials = []
    per_slice = max(1, args.rounds // (args.trials + 1))
    for slice_ in range(args.trials + 1):
        for round_ in range(per_slice):
            order = PRECISIONS if (slice_ * per_slice + round_) % 2 == 0 else PRECISIONS[::-1]
            for precision in order:
                started = time.perf_counter()
                run(precision)
                reference[precision].append(time.perf_counter() - started)
        if slice_ < args.trials:
            started = time.perf_counter()
            calibration = calibrate(key=key, cache=CalibrationCache(None), run=run)
            trials.append((calibration, time.perf_counter() - started))
    median = {p: statistics.median(times) for p, times in reference.items()}
    faster = min(median, key=median.get)
    slower = max(median, key=median.get)
    print(
        f"{args.model}, batch {args.batch}; reference, {len(reference['fp32'])} batches of each "
        f"alternating: "
        + ", ".join(f"{p} {1000 * s / args.batch:.1f} ms/image" for p, s in median.items())
        + f": {faster} {median[slower] / median[faster]:.2f}x as fast"
    )
    worst = 1.0
    for i, (calibration, seconds) in enumerate(trials, start=1):
        worth = median[faster] / median[calibration.choice]
        worst = min(worst, worth)
        print(f"trial {i}: {calibration.describe()}; took {seconds:.1f} s; {worth:.3f}x the faster")
    chose = [c.choice for c, _ in trials]
    print(
        f"auto chose {faster} in {chose.count(faster)} of {len(chose)} trials; its worst trial "
        f"ran at {worst:.3f}x the faster precision's speed (within 5%: {worst >= 0.95})"
    )


if __name__ == "__main__":
    main()
