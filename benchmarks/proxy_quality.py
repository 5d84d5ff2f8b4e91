"""Media proxy copies against the original: what the model sees, what is downloaded and decoded.

For each picture of the indexing benchmark's photo mix (`benchmarks/indexing.py`: JPEGs of 12,
3, 1 and 0.3 MP and PNGs of 2 and 0.5 MP made from the photos in scikit-image and matplotlib),
the stand-in's media proxy (`tests/fakediscord/media.py`: Pillow, Lanczos like Discord's image
library) makes the copy `retrieval/pictures/media_proxy.py` would ask for, with the short side at
224, 336 or 448 px (1, 1.5 and 2x ViT-B-32's input; the tiny model, 64 px, gets copies at the same
scale of its own input) in several formats. Each copy goes through the real preprocessing
(`retrieval.pictures.images.prepare` with the model's spec) and is compared with what the original
gives:

- PSNR and max abs difference of ViT-B-32's input tensor, in 8-bit levels (the tensor is
  un-normalised first, so one level is one step of a pixel value);
- the cosine between the two vectors with ViT-B-32 (random init, as the other benchmarks: no
  pretrained weights can be downloaded here) and with the trained tiny test model; for scale,
  the mean cosine between different pictures of the mix under each model;
- the same against open_clip's exact input (full decode, its own transform), where the
  pipeline's own shortcuts on the original (JPEG draft, reducing gap) show too;
- bytes per image, and decode CPU ms per image (`prepare` on one thread, thread CPU time, the
  median of --repeat runs).

PSNR punishes a shift by a fraction of a pixel: whenever the copy's rounded long side makes the
model's resize one pixel wider than from the original (a 0.3% stretch), the minimum drops into
the 20s while the cosines do not move. Read the minimum with the cosines.

    python -m benchmarks.proxy_quality [--images 12] [--repeat 5] [--detail]
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from open_clip.transform import image_transform  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.indexing import make_images  # noqa: E402
from retrieval.encoding.clip import Encoder  # noqa: E402
from retrieval.pictures.images import PreprocessSpec, prepare  # noqa: E402
from retrieval.pictures.media_proxy import QUALITY, SCALE, proxy_format, request_size  # noqa: E402
from tests.fakediscord.media import FORMATS, Resize, render  # noqa: E402
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH  # noqa: E402

SIDES = (224, 336, 448)  # the copy's shortest side, for a 224 px model
# (label, proxy format, quality); None: the original's format / the proxy's default quality.
FORMAT_CHOICES = (
    ("original", None, None),
    ("webp q80", "webp", 80),
    ("webp q90", "webp", 90),
    ("webp lossless", "webp", "lossless"),
    ("jpeg q80", "jpeg", 80),
    ("jpeg q90", "jpeg", 90),
    (
        "by source q90",
        "by source",
        90,
    ),  # what retrieval/pictures/media_proxy.py asks: jpeg for a JPEG
)


@dataclass
class Row:
    """One variant over the mix: per-image figures."""

    label: str
    psnr: list[float] = field(default_factory=list)  # against the original's model input
    max_abs: list[float] = field(default_factory=list)
    cos_vit: list[float] = field(default_factory=list)
    cos_tiny: list[float] = field(default_factory=list)
    # against open_clip's exact input (full decode, its own transform)
    exact_psnr: list[float] = field(default_factory=list)
    exact_cos_vit: list[float] = field(default_factory=list)
    exact_cos_tiny: list[float] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)


def levels(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The model input back in 8-bit pixel levels (0..255, float)."""
    mean = np.asarray(spec.mean, dtype=np.float64)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float64)[:, None, None]
    return (pixels.astype(np.float64) * std + mean) * 255


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def decode_ms(data: bytes, spec: PreprocessSpec, repeat: int) -> float:
    """Median thread CPU ms of `prepare` (the pipeline's decode + preprocess) on these bytes."""
    prepare(data, spec)  # warm-up
    runs = []
    for _ in range(repeat):
        started = time.thread_time()
        prepare(data, spec)
        runs.append((time.thread_time() - started) * 1000)
    return statistics.median(runs)


def exact_input(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    """open_clip's own val transform on the fully decoded original: the input as the model was
    trained to see it, without the pipeline's shortcuts (JPEG draft, reducing gap)."""
    transform = image_transform(spec.size, is_train=False, mean=spec.mean, std=spec.std)
    with Image.open(io.BytesIO(data)) as im:
        return transform(im.convert("RGB")).numpy()


def copy_of(
    image: tuple[bytes, str], scale: float, fmt: str | None, quality: int | str | None, spec
) -> bytes:
    """What the proxy answers for the box `request_size` asks at this scale of the model's
    input (the original when it asks for nothing)."""
    data, content_type = image
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
    box = request_size(width=width, height=height, spec=spec, scale=scale)
    if box is None:
        return data
    if fmt == "by source":
        fmt = proxy_format(content_type)
    resize = Resize(
        width=box[0],
        height=box[1],
        format=FORMATS[fmt] if fmt else None,
        **({"quality": quality} if quality is not None else {}),
    )
    return render(data, resize)[0]


class Models:
    """ViT-B-32 and the tiny model, and the original pictures' inputs and vectors under each."""

    def __init__(self, images: list[tuple[bytes, str]]) -> None:
        self.vit = Encoder.load(model="ViT-B-32", pretrained=None, device="cpu", precision="fp32")
        self.tiny = Encoder.load(
            model=str(CONFIG_PATH), pretrained=str(CHECKPOINT_PATH), device="cpu", precision="fp32"
        )
        self.spec = self.vit.spec
        self.original = self.inputs([data for data, _ in images])
        self.exact = {
            "vit": [exact_input(data, self.vit.spec) for data, _ in images],
            "tiny": [exact_input(data, self.tiny.spec) for data, _ in images],
        }
        self.vectors = {name: self.encode(name, x) for name, x in self.original.items()}
        self.exact_vectors = {name: self.encode(name, x) for name, x in self.exact.items()}

    def inputs(
        self, pictures: list[bytes], tiny_pictures: list[bytes] | None = None
    ) -> dict[str, list[np.ndarray]]:
        return {
            "vit": [prepare(data, self.vit.spec) for data in pictures],
            "tiny": [prepare(data, self.tiny.spec) for data in tiny_pictures or pictures],
        }

    def encode(self, name: str, inputs: list[np.ndarray]) -> np.ndarray:
        return (self.vit if name == "vit" else self.tiny).encode_images(np.stack(inputs))

    def fill(
        self,
        row: Row,
        pictures: list[bytes],
        *,
        repeat: int,
        tiny_pictures: list[bytes] | None = None,
    ) -> None:
        """Figures for pictures made for ViT-B-32 (and for the tiny model, `tiny_pictures`,
        sized for its own input); the originals when `tiny_pictures` is None."""
        against_original = tiny_pictures is not None
        inputs = self.inputs(pictures, tiny_pictures)
        vectors = {name: self.encode(name, x) for name, x in inputs.items()}
        row.exact_cos_vit = list((vectors["vit"] * self.exact_vectors["vit"]).sum(axis=1))
        row.exact_cos_tiny = list((vectors["tiny"] * self.exact_vectors["tiny"]).sum(axis=1))
        if against_original:
            row.cos_vit = list((vectors["vit"] * self.vectors["vit"]).sum(axis=1))
            row.cos_tiny = list((vectors["tiny"] * self.vectors["tiny"]).sum(axis=1))
        for i, data in enumerate(pictures):
            with Image.open(io.BytesIO(data)) as im:
                row.sizes.append(im.size)
            ours = levels(inputs["vit"][i], self.spec)
            row.exact_psnr.append(psnr(ours, levels(self.exact["vit"][i], self.spec)))
            if against_original:
                reference = levels(self.original["vit"][i], self.spec)
                row.psnr.append(psnr(ours, reference))
                row.max_abs.append(float(np.abs(ours - reference).max()))
            row.bytes.append(len(data))
            row.decode_ms.append(decode_ms(data, self.spec, repeat))


def measure(args: argparse.Namespace) -> tuple[Row, dict[tuple[int, str], Row], dict[str, float]]:
    images = make_images(args.images)
    models = Models(images)
    originals = Row("original (prepare)")
    models.fill(originals, [data for data, _ in images], repeat=args.repeat)
    # For scale: how alike different pictures of the mix are under each model.
    off_diagonal = ~np.eye(len(images), dtype=bool)
    apart = {name: float((v @ v.T)[off_diagonal].mean()) for name, v in models.vectors.items()}
    rows: dict[tuple[int, str], Row] = {}
    for side in SIDES:
        for label, fmt, quality in FORMAT_CHOICES:
            row = rows[side, label] = Row(f"{side} {label}")
            scale = side / models.vit.spec.size
            copies = [copy_of(image, scale, fmt, quality, models.vit.spec) for image in images]
            # The tiny model (64 px input) gets the copies it would ask for: the same scale.
            tiny = [copy_of(image, scale, fmt, quality, models.tiny.spec) for image in images]
            models.fill(row, copies, repeat=args.repeat, tiny_pictures=tiny)
            print(f"  measured {row.label}", flush=True)
    return originals, rows, apart


def report(originals: Row, rows: dict[tuple[int, str], Row], apart: dict, detail: bool) -> None:
    n = len(originals.bytes)
    kb = statistics.mean(originals.bytes) / 1000
    ms = statistics.mean(originals.decode_ms)
    print(
        f"\n{n} images of the mix; originals {kb:,.0f} kB and {ms:.1f} decode CPU ms per image "
        f"(mean). Mean cosine between different pictures, for scale: ViT-B-32 "
        f"{apart['vit']:.4f}, tiny {apart['tiny']:.4f}. Lowest over the mix unless said."
    )
    print(
        "Against the original's model input (prepare): PSNR min/mean and max |difference| in "
        "8-bit levels, cosines;\nagainst open_clip's exact input: the same; then kB and decode "
        "CPU ms per image (mean), and how many times fewer / cheaper than the originals."
    )
    print(
        f"{'':24}{'-- against the original --':>38}{'--- against exact ---':>34}\n"
        f"{'copy (short side, fmt)':24}{'PSNR':>11}{'max|d|':>7}{'cos ViT':>10}{'cos tiny':>10}"
        f"{'PSNR':>12}{'cos ViT':>10}{'cos tiny':>10}{'kB':>8}{'bytes':>7}{'ms':>6}{'decode':>7}"
    )
    for row in [originals, *rows.values()]:
        mean_kb, mean_ms = statistics.mean(row.bytes) / 1000, statistics.mean(row.decode_ms)
        against = (
            f"{_min_mean(row.psnr):>11}{max(row.max_abs):>7.0f}{min(row.cos_vit):>10.5f}"
            f"{min(row.cos_tiny):>10.5f}"
            if row.psnr
            else f"{'':38}"
        )
        print(
            f"{row.label:24}{against}{_min_mean(row.exact_psnr):>12}"
            f"{min(row.exact_cos_vit):>10.5f}{min(row.exact_cos_tiny):>10.5f}"
            f"{mean_kb:>8.1f}{kb / mean_kb:>6.0f}x{mean_ms:>6.2f}{ms / mean_ms:>6.1f}x"
        )
    default = rows.get((round(SCALE * 224), f"by source q{QUALITY}"))
    for row in rows.values() if detail else [default] if default else []:
        print(f"\nper image, {row.label}:")
        print(
            f"{'original':>10}{'copy':>9}{'PSNR':>6}{'max|d|':>7}{'cos ViT':>9}{'cos tiny':>9}"
            f"{'exact PSNR orig/copy':>21}{'kB orig/copy':>14}{'ms orig/copy':>14}"
        )
        for i in range(n):
            (w, h), (cw, ch) = originals.sizes[i], row.sizes[i]
            print(
                f"{f'{w}x{h}':>10}{f'{cw}x{ch}':>9}{row.psnr[i]:>6.1f}{row.max_abs[i]:>7.0f}"
                f"{row.cos_vit[i]:>9.5f}{row.cos_tiny[i]:>9.4f}"
                f"{f'{originals.exact_psnr[i]:.1f} / {row.exact_psnr[i]:.1f}':>21}"
                f"{f'{originals.bytes[i] / 1000:.0f} / {row.bytes[i] / 1000:.1f}':>14}"
                f"{f'{originals.decode_ms[i]:.1f} / {row.decode_ms[i]:.1f}':>14}"
            )


def _min_mean(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)] or [math.inf]
    return f"{min(values):.1f}/{statistics.mean(finite):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="pictures of the mix (default 12)")
    parser.add_argument("--repeat", type=int, default=5, help="decode runs per picture")
    parser.add_argument("--detail", action="store_true", help="per image, for every variant")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    originals, rows, apart = measure(args)
    report(originals, rows, apart, args.detail)


if __name__ == "__main__":
    main()
