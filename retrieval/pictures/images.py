"""Image bytes → the float32 array the CLIP model takes.

`to_model_input` reproduces open_clip's *val* transform (torchvision `Resize` / `CenterCrop` /
open_clip's `ResizeKeepRatio` + `CenterCropOrPad`, `ToTensor`, `Normalize`) on the same PIL image,
so embeddings match open_clip's own preprocessing. `decode_image` is where the speed and the
defence live: the pixel cap is checked from the file header before Pillow allocates anything, and
JPEGs are decoded at a reduced DCT scale (`Image.draft`), which is most of the cost of a big photo.
The resize after it runs in torch's 8-bit kernel for Pillow's own filters (`_resized`).

Everything here is pure and works on per-call objects, so it is safe in a thread pool; Pillow and
torch release the GIL while decoding and resizing.
"""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import GifImagePlugin, Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from retrieval.errors import ClipfindError

SUPPORTED_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
}
# Image.open would add Pillow's process-wide MAX_IMAGE_PIXELS policy (a warning, then an error) on
# top of ours; opening with the format's own plugin leaves the decision to our header check.
_OPENERS = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.jpeg_factory,  # returns an MpoImageFile for multi-picture phone JPEGs
    "webp": WebPImagePlugin.WebPImageFile,
    "gif": GifImagePlugin.GifImageFile,
}
_INTERPOLATIONS = ("bicubic", "bilinear", "random")
_RESIZE_MODES = ("shortest", "longest", "squash")
# Past this aspect ratio 'shortest' would build a huge intermediate image, as open_clip does (a
# 1 x 50M-pixel strip becomes 224 x 11G); no real photo under the pixel cap gets here.
_MAX_FULL_RESIZE_RATIO = 64
# Pillow's two-step resize (an integer box reduction, then the filter over at least this many
# times the target) is what JPEG's DCT draft does for PNG and WebP: a big screenshot resizes
# 2x faster, embeddings within cosine 0.99 of open_clip's (tests/unit/test_images.py). Sources under
# twice this gap times the target (896 px for 224) are resized exactly as open_clip does.
_REDUCING_GAP = 2.0
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(ClipfindError):
    """Image bytes that cannot become model input; ``reason`` says why, for counters and logs."""

    reason = "image"


class NotAnImage(ImageError):
    reason = "not_an_image"


class ImageTooLarge(ImageError):
    reason = "too_large"


class ImageDecodeError(ImageError):
    reason = "corrupt"


@dataclass(frozen=True)
class PreprocessSpec:
    """What open_clip's val transform needs to know, without importing open_clip."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int, not {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            raise ValueError(f"mean and std need 3 values each, std > 0: {self.mean}, {self.std}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation: one of {_INTERPOLATIONS}, not {self.interpolation!r}")
        if self.resize_mode not in _RESIZE_MODES:
            raise ValueError(f"resize_mode: one of {_RESIZE_MODES}, not {self.resize_mode!r}")
        if not 0 <= self.fill_color <= 255:
            raise ValueError(f"fill_color must be 0..255, not {self.fill_color!r}")

    @classmethod
    def from_open_clip(cls, cfg: Mapping) -> PreprocessSpec:
        """From `open_clip.get_model_preprocess_cfg(model)`, with open_clip's own defaults."""
        size = cfg.get("size", 224)
        if isinstance(size, (tuple, list)):
            if len(size) != 2 or size[0] != size[1]:
                raise ValueError(f"only square model inputs are supported, not {tuple(size)}")
            size = size[0]

        def triple(value: object) -> tuple[float, float, float]:
            a, b, c = value if isinstance(value, (tuple, list)) else (value,) * 3
            return float(a), float(b), float(c)

        # open_clip falls back to the OpenAI statistics when a legacy model lacks them.
        return cls(
            size=int(size),
            mean=triple(cfg.get("mean") or (0.48145466, 0.4578275, 0.40821073)),
            std=triple(cfg.get("std") or (0.26862954, 0.26130258, 0.27577711)),
            interpolation=cfg.get("interpolation") or "bicubic",
            resize_mode=cfg.get("resize_mode") or "shortest",
            fill_color=int(cfg.get("fill_color") or 0),
        )


def sniff_image_type(head: bytes) -> str | None:
    """The image type from the magic bytes; content types sent by clients are not trusted."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def _header_size(kind: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, or None if the header does not say."""
    try:
        if kind == "png":
            return struct.unpack(">II", data[16:24]) if data[12:16] == b"IHDR" else None
        if kind == "gif":
            return _gif_size(data)
        if kind == "webp":
            chunk = data[12:16]
            if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L" and data[20] == 0x2F:
                bits = int.from_bytes(data[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8X":
                w, h = data[24:27] + b"\0", data[27:30] + b"\0"
                return struct.unpack("<I", w)[0] + 1, struct.unpack("<I", h)[0] + 1
            return None
        return _jpeg_size(data)
    except (struct.error, IndexError):
        return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of PNG, JPEG, WebP or GIF bytes, without decoding; None
    when the bytes are none of these or the header does not say."""
    kind = sniff_image_type(data[:16])
    return None if kind is None else _header_size(kind, data)


def _gif_size(data: bytes) -> tuple[int, int]:
    # Pillow grows the canvas when the first frame reaches past the logical screen, so the frame
    # descriptor counts too.
    width, height = struct.unpack("<HH", data[6:10])
    flags, pos = data[10], 13
    if flags & 0x80:
        pos += 3 << ((flags & 7) + 1)
    while pos < len(data):
        if data[pos] == 0x21:  # extension: label, then sub-blocks until a zero length
            pos += 2
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
        elif data[pos] == 0x2C:
            x, y, w, h = struct.unpack("<HHHH", data[pos + 1 : pos + 9])
            return max(width, x + w), max(height, y + h)
        else:
            break
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # markers without a length
            pos += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return None


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    if size[0] * size[1] > max_pixels:
        raise ImageTooLarge(
            f"image is {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, "
            f"over the cap of {max_pixels:,}"
        )


def decode_image(
    data: bytes, *, target_side: int, max_pixels: int = 50_000_000, max_bytes: int | None = None
) -> Image.Image:
    """Decode to an RGB image, upright, first frame, alpha flattened on white.

    JPEGs are decoded at the smallest DCT scale that still leaves both sides >= `target_side`.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLarge(f"image is {len(data):,} bytes, over the cap of {max_bytes:,}")
    kind = sniff_image_type(data[:16])
    if kind is None:
        what = "empty" if not data else f"starts with {data[:8]!r}"
        raise NotAnImage(f"not a PNG, JPEG, WebP or GIF image ({len(data):,} bytes, {what})")
    size = _header_size(kind, data)
    if size is not None:
        _check_pixels(size, max_pixels)
    try:
        with _OPENERS[kind](io.BytesIO(data)) as im:
            _check_pixels(im.size, max_pixels)  # for headers we could not read ourselves
            if kind == "jpeg":
                im.draft("RGB", (target_side, target_side))
            # Orientation last: draft keeps EXIF, and transposing the small image is cheaper.
            return _apply_orientation(_to_rgb(im), im)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # a plugin's own check, past a cap this high
        raise ImageTooLarge(f"{kind} image over Pillow's pixel limit: {exc}") from exc
    except MemoryError as exc:
        raise ImageTooLarge(f"out of memory decoding a {kind} image of {size}") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageDecodeError(f"cannot decode {kind} image: {type(exc).__name__}: {exc}") from exc


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit greyscale: convert() would clip at 255 and turn most of the picture white.
        grey = np.asarray(im).astype(np.float32) / 257.0
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
    if "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return im.convert("RGB")


def _apply_orientation(rgb: Image.Image, source: Image.Image) -> Image.Image:
    try:
        orientation = source.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # broken EXIF should not cost us a good picture; show it as stored
        return rgb
    method = _TRANSPOSE.get(orientation)
    return rgb.transpose(method) if method is not None else rgb


@functools.lru_cache(maxsize=16)
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    # Same float32 steps as ToTensor (x / 255) and Normalize ((x - mean) / std), tabulated once.
    x = np.arange(256, dtype=np.float32) / np.float32(255)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    table = (x[None, :] - m) / s
    table.flags.writeable = False
    return table


def _resample(spec: PreprocessSpec) -> Image.Resampling:
    # open_clip maps everything but 'bilinear' (including 'random') to bicubic at eval time.
    if spec.interpolation == "bilinear":
        return Image.Resampling.BILINEAR
    return Image.Resampling.BICUBIC


# Pillow's filters as torch's 8-bit kernels compute them: the same separable weights (bicubic with
# a = -0.5, support widened by the scale), in fixed point with other rounding, so a few values in
# a thousand land one level off Pillow's. A fifth of Pillow's CPU for the resize that was half of
# preparing a proxy copy (benchmarks/RESULTS.md).
_TORCH_MODES = {Image.Resampling.BICUBIC: "bicubic", Image.Resampling.BILINEAR: "bilinear"}


def _resized(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """``image`` (RGB) resized to ``size`` (w, h), height x width x 3 uint8."""
    w, h = image.size
    if (w, h) == size:
        return np.asarray(image)
    # Where Pillow would first shrink by whole boxes (`_REDUCING_GAP`), it stays Pillow's: torch has
    # no such step, and filtering a big source in full would cost more than it saves.
    reduces = int(w / size[0] / _REDUCING_GAP) > 1 or int(h / size[1] / _REDUCING_GAP) > 1
    if reduces or image.mode != "RGB" or resample not in _TORCH_MODES:
        return np.asarray(image.resize(size, resample, reducing_gap=_REDUCING_GAP))
    # Imported here, not above: a process that only decodes (the text reader) never loads torch.
    import torch
    from torch.nn.functional import interpolate

    mode, (new_w, new_h) = _TORCH_MODES[resample], size
    # Each pass rounds to 8 bits, so the order shows: Pillow (13) runs the vertical pass first when
    # the height shrinks by more than twice what the width does, torch always the horizontal one.
    chw = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0)
    if h - new_h > 0 and h - new_h > 2 * (w - new_w):
        chw = interpolate(chw, size=(new_h, w), mode=mode, antialias=True)
    out = interpolate(chw, size=(new_h, new_w), mode=mode, antialias=True)
    return out[0].permute(1, 2, 0).numpy()


def _crop_or_pad(arr: np.ndarray, size: int, fill: int) -> np.ndarray:
    """torchvision's CenterCrop / open_clip's center_crop_or_pad, with their rounding."""
    h, w = arr.shape[:2]
    if size > w or size > h:
        left, top = max(size - w, 0) // 2, max(size - h, 0) // 2
        right, bottom = (max(size - w, 0) + 1) // 2, (max(size - h, 0) + 1) // 2
        padded = np.full((h + top + bottom, w + left + right, 3), fill, dtype=np.uint8)
        padded[top : top + h, left : left + w] = arr
        arr, (h, w) = padded, padded.shape[:2]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return arr[top : top + size, left : left + size]


def _shortest(image: Image.Image, size: int, resample: Image.Resampling) -> np.ndarray:
    w, h = image.size
    # torchvision's _compute_resized_output_size for Resize(int): the long side is truncated.
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if new_long <= _MAX_FULL_RESIZE_RATIO * size:
        return _crop_or_pad(_resized(image, (new_w, new_h), resample), size, 0)
    # Resize only the window the crop keeps: `box` places the filter in source coordinates, so this
    # matches open_clip up to a level of rounding (Pillow may run its two passes in another order).
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.asarray(image.resize((size, size), resample, box=box, reducing_gap=_REDUCING_GAP))


def to_model_input(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """float32 (3, size, size), as open_clip's val transform gives for this image."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    size, resample = spec.size, _resample(spec)
    if spec.resize_mode == "shortest":
        arr = _shortest(image, size, resample)
    elif spec.resize_mode == "squash":
        arr = _resized(image, (size, size), resample)
    else:  # 'longest': open_clip's ResizeKeepRatio(longest=1) then CenterCropOrPad(fill_color)
        w, h = image.size
        ratio = max(h / size, w / size)
        # Kept at >= 1 px: a hairline image would otherwise ask Pillow for a zero-sized image.
        new_h, new_w = max(1, round(h * 1.0 / ratio)), max(1, round(w * 1.0 / ratio))
        arr = _crop_or_pad(_resized(image, (new_w, new_h), resample), size, spec.fill_color)
    table = _normalise_table(spec.mean, spec.std)
    out = np.empty((3, size, size), dtype=np.float32)
    for c in range(3):
        np.take(table[c], arr[:, :, c], out=out[c])
    return out


def prepare(
    data: bytes, spec: PreprocessSpec, *, max_pixels: int = 50_000_000, max_bytes: int | None = None
) -> np.ndarray:
    """Bytes → model input; what the pipeline runs per image in its thread pool."""
    image = decode_image(data, target_side=spec.size, max_pixels=max_pixels, max_bytes=max_bytes)
    return to_model_input(image, spec)
