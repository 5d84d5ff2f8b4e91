"""Indexing throughput, side by side in one run, same model and images.

1. the seed's way: per image, full PIL decode, open_clip preprocess, encode_image one by one;
2. the encoder alone on pre-decoded tensors at its best batch size (the ceiling);
3. the clipfind pipeline end to end: bytes from a loopback HTTP server → fetch → decode →
   micro-batch → encode → SQLite store, with the event-loop lag measured throughout.

    python -m benchmarks.indexing [--images 48] [--model ViT-B-32] [--mix mixed|photos]
                                  [--precision all|auto|fp32|bf16|fp16] [--device cpu|cuda]

On a GPU (`--device cuda`) the seed way runs there too, and "all" compares fp32 with fp16.

Speed does not depend on weight values, so the model is randomly initialised.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.harness import (  # noqa: E402
    image_server,
    loop_lag,
    percentile,
    refs,
    sqlite_pipeline,
    thread_cpu_s,
)
from retrieval.encoder import Encoder  # noqa: E402

# (megapixels, format): a mix of phone photos, screenshots and small memes; or phone photos only.
MIXES = {
    "mixed": [(12, "JPEG"), (3, "JPEG"), (1, "JPEG"), (0.3, "JPEG"), (2, "PNG"), (0.5, "PNG")],
    "photos": [(12, "JPEG")],
}


def sample_photos() -> list[Image.Image]:
    import matplotlib
    import skimage

    data = Path(skimage.__file__).parent / "data"
    paths = [
        data / n for n in ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg")
    ]
    paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return [Image.open(p).convert("RGB") for p in paths if p.exists()]


def make_images(count: int, mix: str = "mixed") -> list[tuple[bytes, str]]:
    """Distinct encoded images (no two share bytes, so none is skipped as a repost)."""
    photos = sample_photos()
    out = []
    for i in range(count):
        megapixels, fmt = MIXES[mix][i % len(MIXES[mix])]
        photo = photos[i % len(photos)]
        scale = (megapixels * 1e6 / (photo.width * photo.height)) ** 0.5
        size = (int(photo.width * scale), int(photo.height * scale))
        picture = photo.resize(size, Image.Resampling.BILINEAR)
        picture.putpixel((i % size[0], 0), (i % 256, 0, 0))
        buf = io.BytesIO()
        picture.save(buf, fmt, quality=90) if fmt == "JPEG" else picture.save(buf, fmt)
        out.append((buf.getvalue(), "image/jpeg" if fmt == "JPEG" else "image/png"))
    return out


def seed_way(model: torch.nn.Module, preprocess, images, device: str = "cpu") -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for data, _ in images:
            picture = Image.open(io.BytesIO(data)).convert("RGB")
            pixels = preprocess(picture).unsqueeze(0).to(device)
            model.encode_image(pixels, normalize=True).cpu()  # .cpu() waits for a GPU
    return len(images) / (time.perf_counter() - started)


def ceiling(encoder: Encoder, count: int) -> dict[int, float]:
    """Images/s of the encoder alone on pre-decoded pixels, per batch size."""
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(count, 3, encoder.spec.size, encoder.spec.size)).astype(np.float32)
    rates = {}
    sizes = (1, 4, 8, 16, 32) + ((64, 128, 256) if encoder.device.type == "cuda" else ())
    for batch in sizes:
        encoder.encode_images(pixels[:batch])  # warm-up at this shape
        started = time.perf_counter()
        for at in range(0, count - batch + 1, batch):
            encoder.encode_images(pixels[at : at + batch])
        rates[batch] = (count // batch * batch) / (time.perf_counter() - started)
    return rates


async def pipeline_way(encoder: Encoder, images, batch_size: int):
    """(images/s, sorted loop lags in ms, CPU ms per image by role)."""
    async with (
        image_server(images) as base,
        sqlite_pipeline(encoder, source=base, batch_size=batch_size) as pipe,
    ):
        async with loop_lag() as lags:
            cpu_before = thread_cpu_s()
            started = time.perf_counter()
            await pipe.submit(refs(base, len(images)))
            await pipe.join()
            elapsed = time.perf_counter() - started
            cpu_after = thread_cpu_s()
        assert pipe.counters.indexed == len(images), pipe.counters
    cpu_ms = {
        role: (spent - cpu_before.get(role, 0.0)) * 1000 / len(images)
        for role, spent in cpu_after.items()
    }
    return len(images) / elapsed, lags, cpu_ms


def report_cpu(cpu_ms: dict[str, float], ceiling_rate: float) -> None:
    """Where the pipeline's CPU went, and the best any overlap of that work could do here."""
    if not cpu_ms:
        return
    parts = ", ".join(f"{role} {ms:.1f}" for role, ms in sorted(cpu_ms.items()) if ms >= 0.05)
    bound = (os.cpu_count() or 1) * 1000 / sum(cpu_ms.values())
    print(f"   CPU ms per image: {parts}")
    print(f"   all cores busy with that work: {bound:.1f} img/s = {bound / ceiling_rate:.2f}x (2)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--mix", choices=sorted(MIXES), default="mixed")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to check a GPU")
    parser.add_argument(
        "--precision",
        choices=("all", "auto", "fp32", "bf16", "fp16"),
        default="all",
        help="clipfind's encoder; 'all' measures fp32 and bf16 side by side",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    images = make_images(args.images, args.mix)
    sizes = [Image.open(io.BytesIO(data)).size for data, _ in images]
    megapixels = sum(w * h for w, h in sizes) / 1e6 / len(images)
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {os.cpu_count()} cores, torch {torch.__version__}")
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(torch.device(args.device))}")
    print(f"{args.model} (random init), {len(images)} images, {megapixels:.1f} MP average")
    import open_clip

    # The seed's own model: open_clip's defaults (fp32), whatever clipfind's encoder uses.
    seed_model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=None)
    seed_model.eval().to(args.device)
    seed_way(seed_model, preprocess, images[:2], args.device)  # warm-up
    seed = seed_way(seed_model, preprocess, images, args.device)
    del seed_model
    print(f"1. seed way (fp32, one by one, full decode): {seed:6.2f} img/s")
    low = "fp16" if args.device.startswith("cuda") else "bf16"
    precisions = ["fp32", low] if args.precision == "all" else [args.precision]
    for precision in precisions:
        encoder = Encoder.load(
            model=args.model, pretrained=None, device=args.device, precision=precision
        )
        rates = ceiling(encoder, max(len(images), 512 if encoder.device.type == "cuda" else 64))
        piped, lag_ms, cpu_ms = asyncio.run(
            pipeline_way(encoder, images, encoder.default_batch_size)
        )
        best_batch = max(rates, key=rates.get)
        top = rates[best_batch]
        batch = encoder.default_batch_size
        print(f"clipfind encoder in {encoder.precision} on {encoder.device}:")
        print(f"2. encoder ceiling (batch {best_batch}):        {top:6.2f} img/s")
        print("   by batch size: " + ", ".join(f"{b}: {r:.1f}" for b, r in rates.items()))
        print(f"3. clipfind pipeline end to end:       {piped:6.2f} img/s (batch {batch})")
        print(f"   (3)/(1) = {piped / seed:.2f}x   (3)/(2) = {piped / top:.2f}x")
        print(
            f"   event-loop lag during (3): p50 {statistics.median(lag_ms):.1f} ms, "
            f"p99 {percentile(lag_ms, 0.99):.1f} ms, max {lag_ms[-1]:.1f} ms "
            f"({len(lag_ms)} samples)"
        )
        report_cpu(cpu_ms, top)
        del encoder


if __name__ == "__main__":
    main()
