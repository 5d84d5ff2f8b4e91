"""Bytes → model input: open_clip's way (Image.open + its val transform) against `prepare`.

Same bytes, same thread, same ViT-B-32 val transform; images/s and the ratio. The photos are
mosaics of real sample photos (scikit-image, matplotlib) at their native detail.

    .venv/bin/python benchmarks/decode.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib
import skimage
from open_clip.transform import image_transform
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.pictures.images import PreprocessSpec, prepare  # noqa: E402

SPEC = PreprocessSpec(
    size=224,
    mean=(0.48145466, 0.4578275, 0.40821073),
    std=(0.26862954, 0.26130258, 0.27577711),
)


def photos() -> list[Image.Image]:
    data = Path(skimage.__file__).parent / "data"
    tiles = [
        Image.open(data / f"{n}.png").convert("RGB") for n in ("astronaut", "coffee", "chelsea")
    ]
    grace = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return [*tiles, Image.open(grace).convert("RGB")]


def mosaic(width: int, height: int, tiles: list[Image.Image]) -> Image.Image:
    canvas = Image.new("RGB", (width, height))
    i = 0
    for y in range(0, height, 400):
        for x in range(0, width, 450):
            canvas.paste(tiles[i % len(tiles)], (x, y))
            i += 1
    return canvas


def encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def rate(fn, data: bytes, seconds: float) -> float:
    fn(data)  # warm-up
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn(data)
        n += 1
    return n / elapsed


def threaded_rate(fn, data: bytes, seconds: float, threads: int) -> float:
    batch = 8 * threads
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, [data] * threads))
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            list(pool.map(fn, [data] * batch))
            n += batch
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()

    tiles = photos()
    cases = {
        "JPEG 4000x3000 (12 MP)": encode(mosaic(4000, 3000, tiles), "JPEG", quality=90),
        "JPEG 2000x1500 (3 MP)": encode(mosaic(2000, 1500, tiles), "JPEG", quality=90),
        "PNG 1200x900 (1 MP)": encode(mosaic(1200, 900, tiles), "PNG"),
    }
    transform = image_transform(SPEC.size, is_train=False, mean=SPEC.mean, std=SPEC.std)

    def reference(data: bytes) -> object:
        return transform(Image.open(io.BytesIO(data)))

    def ours(data: bytes) -> object:
        return prepare(data, SPEC)

    print(
        f"{'image':24} {'bytes':>10} {'open_clip img/s':>16} {'prepare img/s':>14} {'ratio':>6}"
        f" {'prepare x2 threads':>19}"
    )
    for name, data in cases.items():
        ref, fast = rate(reference, data, args.seconds), rate(ours, data, args.seconds)
        two = threaded_rate(ours, data, args.seconds, threads=2)
        print(
            f"{name:24} {len(data):>10,} {ref:>16.1f} {fast:>14.1f} {fast / ref:>5.1f}x"
            f" {two:>19.1f}"
        )


if __name__ == "__main__":
    main()
