"""Seeded pictures of coloured shapes and their captions.

The tiny CLIP model is trained on these, and end-to-end tests post them in Discord,
so a test can search "a red circle" and know which message should come back.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

# Hues far apart, so a small model can tell them apart after JPEG and resizing.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 160, 55),
    "blue": (35, 70, 215),
    "yellow": (240, 215, 30),
    "purple": (135, 45, 175),
    "orange": (245, 135, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")


def pairs() -> Iterator[tuple[str, str]]:
    """Every (colour, shape) class, in a fixed order."""
    for colour in COLOURS:
        for shape in SHAPES:
            yield colour, shape


def caption(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def draw(
    colour: str,
    shape: str,
    *,
    size: int = 128,
    rng: np.random.Generator | int,
) -> Image.Image:
    """A square RGB picture of one shape on a tinted, noisy background.

    `rng` is a numpy Generator (advanced in place) or a seed; the same seed gives
    the same picture.
    """
    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(f"unknown class: {colour} {shape}")
    rng = np.random.default_rng(rng)
    background = _background(size, rng)

    # Kept inside the frame: the val transform centre-crops a square, and these are square.
    radius = size * rng.uniform(0.17, 0.34)
    cx, cy = (rng.uniform(radius, size - radius) for _ in range(2))
    angle = rng.uniform(-0.35, 0.35)  # a slight tilt; a big one turns a square into a diamond
    fill = np.add(COLOURS[colour], rng.integers(-20, 21, 3)).astype(np.float32)
    mask = Image.new("L", (size, size))
    pen = ImageDraw.Draw(mask)
    if shape == "circle":
        pen.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=1)
    else:
        pen.polygon(_outline(shape, cx, cy, radius, angle), fill=1)

    pixels = np.where(np.asarray(mask, dtype=bool)[..., None], fill, background)
    # Noise over the shape too, so colour is never a single flat value.
    pixels += rng.standard_normal((size, size, 3), dtype=np.float32) * 6.0
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _background(size: int, rng: np.random.Generator) -> np.ndarray:  # float32, (size, size, 3)
    # Light, low-saturation tint with a gradient: varied, but never one of the shape colours.
    base = (rng.uniform(150, 235) + rng.uniform(-12, 12, 3)).astype(np.float32)
    dx, dy = rng.normal(size=2) * rng.uniform(0, 40) / 1.5
    steps = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    ramp = steps[None, :] * np.float32(dx) + steps[:, None] * np.float32(dy)
    return base + ramp[..., None]


def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        polar = [(r * 1.15, math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif shape == "triangle":
        polar = [(r, -math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
    elif shape == "star":
        polar = [(r if k % 2 == 0 else r * 0.42, -math.pi / 2 + k * math.pi / 5) for k in range(10)]
    else:  # cross: a plus sign whose arms are a third of the radius thick
        w = r / 3
        xy = [(w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r)]
        xy += [(-x, -y) for x, y in xy]
        polar = [(math.hypot(x, y), math.atan2(y, x)) for x, y in xy]
    return [(cx + d * math.cos(a + angle), cy + d * math.sin(a + angle)) for d, a in polar]
