"""retrieval/pictures/images.py on real photos (from installed wheels) and on hostile input.

The reference is open_clip's own val transform on the same PIL image; the fast JPEG path is held
to the reference through a real (randomly initialised) ViT-B-32.
"""

from __future__ import annotations

import functools
import io
import struct
import subprocess
import sys
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib
import numpy as np
import open_clip
import pytest
import skimage
import torch
from open_clip.transform import image_transform
from PIL import Image

from retrieval.errors import ClipfindError
from retrieval.pictures.images import (
    SUPPORTED_TYPES,
    ImageDecodeError,
    ImageError,
    ImageTooLarge,
    NotAnImage,
    PreprocessSpec,
    _resized,
    decode_image,
    prepare,
    sniff_image_type,
    to_model_input,
)

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SPEC = PreprocessSpec(size=224, mean=MEAN, std=STD)
# One pixel level after normalisation is 1/255/std, about 0.015.
LEVEL = 1 / 255 / min(STD)


def assert_like_open_clip(got: np.ndarray, expected: np.ndarray, spec: PreprocessSpec) -> None:
    """The resize runs in torch's 8-bit kernel, whose fixed point rounds other than Pillow's: a
    value may land a level off in each of the two passes, and only a few in a thousand do."""
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    levels = np.rint(np.abs(got - expected) * std * 255)
    assert levels.max() <= 2, f"{levels.max():.0f} levels off"
    assert (levels > 0).mean() < 0.01, f"{(levels > 0).mean():.2%} of values off"


def encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def photo(name: str) -> Image.Image:
    if name == "grace_hopper":
        return Image.open(GRACE_HOPPER).convert("RGB")
    with Image.open(SKIMAGE_DATA / f"{name}.png") as im:
        im.load()
        return im


def reference(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    """What open_clip gives: plain Image.open, full decode, its val transform."""
    transform = image_transform(
        spec.size,
        is_train=False,
        mean=spec.mean,
        std=spec.std,
        resize_mode=spec.resize_mode,
        interpolation=spec.interpolation,
        fill_color=spec.fill_color,
    )
    return transform(Image.open(io.BytesIO(data))).numpy()


def pixel(image_or_data: Image.Image | bytes, xy: tuple[int, int]) -> tuple[int, ...]:
    im = image_or_data
    if isinstance(im, bytes):
        im = decode_image(im, target_side=224)
    assert im.mode == "RGB"
    return im.getpixel(xy)


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 3) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="session")
def big_jpegs() -> dict[str, bytes]:
    """~12 MP JPEGs: three upscaled photos and a mosaic of photos at their native detail."""
    out = {}
    for name in ("astronaut", "coffee", "grace_hopper"):
        im = photo(name).convert("RGB")
        scale = (12e6 / (im.width * im.height)) ** 0.5
        big = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
        out[name] = encode(big, "JPEG", quality=90)
    tiles = [photo(n).convert("RGB") for n in ("astronaut", "coffee", "chelsea", "motorcycle_left")]
    mosaic = Image.new("RGB", (4000, 3000))
    for i, (y, x) in enumerate((y, x) for y in range(0, 3000, 500) for x in range(0, 4000, 600)):
        mosaic.paste(tiles[i % len(tiles)], (x, y))
    out["mosaic"] = encode(mosaic, "JPEG", quality=90)
    return out


@pytest.fixture(scope="module")
def clip_model() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    return model.eval(), preprocess


# --- exactness against open_clip -------------------------------------------------------------

PNG_CASES = {
    "astronaut": lambda: photo("astronaut"),
    "chelsea": lambda: photo("chelsea"),
    "coffee": lambda: photo("coffee"),
    "camera_grey": lambda: photo("camera"),
    "grace_hopper": lambda: photo("grace_hopper"),
    "small_wide": lambda: photo("chelsea").resize((100, 60)),
    "small_tall": lambda: photo("coffee").resize((61, 150)),
    "exact_side": lambda: photo("astronaut").resize((224, 224)),
    "odd_crop": lambda: photo("coffee").resize((225, 331)),
    "tiny": lambda: photo("astronaut").resize((3, 2)),
}
SPECS = {
    "shortest": SPEC,
    "longest": PreprocessSpec(224, MEAN, STD, resize_mode="longest", fill_color=17),
    "squash": PreprocessSpec(224, MEAN, STD, resize_mode="squash"),
    "bilinear": PreprocessSpec(224, MEAN, STD, interpolation="bilinear"),
    "longest_bilinear": PreprocessSpec(224, MEAN, STD, "bilinear", "longest"),
    "random_is_bicubic": PreprocessSpec(224, MEAN, STD, interpolation="random"),
    "small_model": PreprocessSpec(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


@functools.cache
def png_case(case: str) -> bytes:
    return encode(PNG_CASES[case](), "PNG", compress_level=1)


@pytest.mark.parametrize("spec_name", SPECS)
@pytest.mark.parametrize("case", PNG_CASES)
def test_png_matches_open_clip_val_transform(case: str, spec_name: str) -> None:
    spec = SPECS[spec_name]
    data = png_case(case)
    got = prepare(data, spec)
    assert got.dtype == np.float32 and got.shape == (3, spec.size, spec.size)
    assert got.flags.c_contiguous
    with Image.open(io.BytesIO(data)) as im:
        reduced = min(im.size) >= 4 * spec.size  # Pillow's reducing gap (2) applies
    if reduced:
        diff = np.abs(got - reference(data, spec))
        assert diff.mean() <= 1.5 * LEVEL
    else:
        assert_like_open_clip(got, reference(data, spec), spec)


@pytest.fixture(scope="session")
def big_pngs() -> dict[str, bytes]:
    """Screenshot-sized PNGs (1-4 MP), where the reduce-then-filter resize applies."""
    sizes = {"astronaut": (1920, 1920), "coffee": (2560, 1600), "chelsea": (1170, 2532)}
    return {
        n: encode(photo(n).convert("RGB").resize(wh, Image.BICUBIC), "PNG", compress_level=1)
        for n, wh in sizes.items()
    }


def test_big_png_embeds_like_open_clip(clip_model, big_pngs) -> None:
    model, preprocess = clip_model
    names = list(big_pngs)
    fast = np.stack([prepare(big_pngs[n], SPEC) for n in names])
    slow = np.stack([reference(big_pngs[n], SPEC) for n in names])
    assert not np.allclose(fast, slow, atol=1e-5)  # the reduction did apply
    with torch.no_grad():
        emb = model.encode_image(torch.from_numpy(np.concatenate([fast, slow])), normalize=True)
    emb = emb.numpy()
    same = (emb[: len(names)] * emb[len(names) :]).sum(axis=1)
    assert same.min() >= 0.99, dict(zip(names, same.round(4), strict=True))


def test_model_preprocess_cfg_gives_the_models_own_transform(clip_model) -> None:
    model, preprocess = clip_model
    spec = PreprocessSpec.from_open_clip(open_clip.get_model_preprocess_cfg(model))
    assert spec == SPEC
    data = encode(photo("chelsea"), "PNG")
    expected = preprocess(Image.open(io.BytesIO(data))).numpy()
    assert_like_open_clip(prepare(data, spec), expected, spec)


RESIZES = [
    ((225, 331), (224, 224)),  # the height shrinks by over twice the width: Pillow's vertical first
    ((331, 225), (224, 224)),
    ((505, 336), (337, 224)),  # a proxy copy of a 3:2 photo, to the model's short side
    ((336, 505), (224, 337)),
    ((300, 300), (301, 301)),
    ((100, 60), (373, 224)),  # enlarged
    ((61, 150), (224, 550)),
    ((3, 2), (336, 224)),
]


@pytest.mark.parametrize("resample", [Image.Resampling.BICUBIC, Image.Resampling.BILINEAR])
def test_resize_follows_pillows_filter_and_order_of_passes(resample: Image.Resampling) -> None:
    # Noise: each pass rounds to 8 bits and clips, so a pass order other than Pillow's is off by
    # up to 18 levels here, and a filter other than Pillow's everywhere.
    rng = np.random.default_rng(0)
    for (w, h), size in RESIZES:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        got = _resized(image, size, resample)
        assert got.shape == (size[1], size[0], 3) and got.dtype == np.uint8
        off = np.abs(got.astype(int) - np.asarray(image.resize(size, resample)))
        assert off.max() <= 2 and (off > 0).mean() < 0.02, ((w, h), size, off.max())


def test_to_model_input_takes_other_modes_and_leaves_the_image_alone() -> None:
    grey = photo("camera").resize((300, 200))
    before = grey.tobytes()
    got = to_model_input(grey, SPEC)
    np.testing.assert_array_equal(got, to_model_input(grey.convert("RGB"), SPEC))
    assert grey.mode == "L" and grey.tobytes() == before


def test_extreme_aspect_ratio_avoids_the_huge_intermediate_and_stays_close() -> None:
    # 20 x 2000 would be resized to 224 x 22400 first by open_clip; we resize only the crop.
    data = encode(photo("astronaut").resize((20, 2000)), "PNG")
    diff = np.abs(prepare(data, SPEC) - reference(data, SPEC))
    assert diff.max() <= 3 * LEVEL and diff.mean() <= 0.2 * LEVEL


# --- the fast JPEG path ----------------------------------------------------------------------


def test_big_jpeg_is_drafted(big_jpegs: dict[str, bytes]) -> None:
    for data in big_jpegs.values():
        with Image.open(io.BytesIO(data)) as full:
            full_size = full.size
        small = decode_image(data, target_side=224)
        # The smallest DCT scale (1/8 here) whose result still covers 224 on the short side.
        assert small.size == tuple((s + 7) // 8 for s in full_size)
        assert min(small.size) >= 224
    # A bigger target gets a finer scale: 1/2 leaves the short side >= 1200, 1/4 would not.
    big = big_jpegs["mosaic"]
    assert decode_image(big, target_side=1200).size == (2000, 1500)


def test_drafted_jpeg_embeds_like_the_full_decode(clip_model, big_jpegs, capfd) -> None:
    model, preprocess = clip_model
    names = list(big_jpegs)
    fast = np.stack([prepare(big_jpegs[n], SPEC) for n in names])
    slow = np.stack([preprocess(Image.open(io.BytesIO(big_jpegs[n]))).numpy() for n in names])
    with torch.no_grad():
        emb = model.encode_image(torch.from_numpy(np.concatenate([fast, slow])), normalize=True)
    emb = emb.numpy()
    fast_emb, slow_emb = emb[: len(names)], emb[len(names) :]
    same = (fast_emb * slow_emb).sum(axis=1)
    assert same.min() >= 0.99, dict(zip(names, same.round(4), strict=True))
    # The check means something only if different photos are further apart than that.
    cross = slow_emb @ slow_emb.T
    assert cross[~np.eye(len(names), dtype=bool)].max() < same.min()
    assert capfd.readouterr().out == ""


def test_prepare_is_thread_safe(big_jpegs: dict[str, bytes]) -> None:
    inputs = [png_case(c) for c in ("chelsea", "small_tall")]
    inputs += [big_jpegs["mosaic"], GRACE_HOPPER.read_bytes()]
    expected = [prepare(d, SPEC) for d in inputs]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda d: prepare(d, SPEC), inputs * 3))
    for i, got in enumerate(results):
        np.testing.assert_array_equal(got, expected[i % len(inputs)])


# --- odd but valid images --------------------------------------------------------------------


def test_sniff_trusts_magic_bytes_only() -> None:
    samples = {
        "png": encode(Image.new("RGB", (2, 2)), "PNG"),
        "jpeg": encode(Image.new("RGB", (2, 2)), "JPEG"),
        "webp": encode(Image.new("RGB", (2, 2)), "WEBP"),
        "gif": encode(Image.new("RGB", (2, 2)), "GIF"),
    }
    assert set(samples) == set(SUPPORTED_TYPES)
    for kind, data in samples.items():
        assert sniff_image_type(data[:16]) == kind
    for junk in (b"", b"\x89PN", b"GIF90a", b"RIFF\0\0\0\0WAVE", b"BM6\0\0\0", b"<svg></svg>"):
        assert sniff_image_type(junk) is None


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    im = decode_image(data, target_side=224)
    assert im.size == (40, 30) and pixel(im, (20, 15)) == (255, 0, 0)


def test_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert close(pixel(data, (16, 16)), (255, 0, 0))


def test_16_bit_greyscale_png_is_scaled_not_clipped() -> None:
    levels = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(levels), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    im = decode_image(data, target_side=224)
    assert [pixel(im, (x, 0)) for x in range(4)] == [(v,) * 3 for v in (0, 64, 128, 255)]


def test_palette_png_with_transparency_is_flattened_on_white() -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((1, 0), 1)
    data = encode(im, "PNG", transparency=0)
    assert pixel(data, (0, 0)) == (255, 255, 255)
    assert pixel(data, (1, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("mode", "transparent", "opaque", "half"),
    [
        ("LA", (0, 0), (50, 255), (0, 128)),
        ("RGBA", (10, 20, 30, 0), (10, 20, 30, 255), (0, 0, 0, 128)),
    ],
)
def test_alpha_is_flattened_on_white(mode, transparent, opaque, half) -> None:
    im = Image.new(mode, (3, 1))
    for x, value in enumerate((transparent, opaque, half)):
        im.putpixel((x, 0), value)
    data = encode(im, "PNG")
    decoded = decode_image(data, target_side=224)
    assert pixel(decoded, (0, 0)) == (255, 255, 255)
    assert pixel(decoded, (1, 0)) == ((50,) * 3 if mode == "LA" else (10, 20, 30))
    assert close(pixel(decoded, (2, 0)), (127, 127, 127), tol=1)


def test_exif_orientation_is_applied() -> None:
    im = Image.new("RGB", (300, 200), (255, 0, 0))
    im.paste((0, 0, 255), (150, 0, 300, 200))  # left red, right blue, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(im, "JPEG", exif=exif.tobytes(), quality=95)
    upright = decode_image(data, target_side=224)
    assert upright.size == (200, 300)
    assert close(pixel(upright, (100, 40)), (255, 0, 0), tol=8)
    assert close(pixel(upright, (100, 260)), (0, 0, 255), tol=8)
    # Drafting keeps the tag: a photo big enough to be drafted still comes out upright.
    big = encode(im.resize((3000, 2000)), "JPEG", exif=exif.tobytes())
    assert decode_image(big, target_side=224).size == (250, 375)


def test_broken_exif_does_not_cost_the_picture() -> None:
    data = encode(Image.new("RGB", (30, 20), (0, 255, 0)), "JPEG", exif=b"Exif\0\0garbage!!")
    assert decode_image(data, target_side=224).size == (30, 20)


@pytest.mark.parametrize(
    ("mode", "kwargs", "chunk"),
    [
        ("RGB", {"quality": 90}, b"VP8 "),
        ("RGB", {"lossless": True}, b"VP8L"),
        ("RGBA", {"quality": 90}, b"VP8X"),
    ],
)
def test_webp(mode, kwargs, chunk) -> None:
    im = photo("chelsea").convert(mode)
    if mode == "RGBA":
        im.putalpha(Image.new("L", im.size, 255))
        im.paste((0, 0, 0, 0), (0, 0, 10, 10))
    data = encode(im, "WEBP", **kwargs)
    assert data[12:16] == chunk
    decoded = decode_image(data, target_side=224)
    assert decoded.size == im.size
    if mode == "RGBA":
        assert pixel(decoded, (5, 5)) == (255, 255, 255)
    # Our header parser and Pillow agree on the size: a cap one pixel under it trips.
    with pytest.raises(ImageTooLarge):
        decode_image(data, target_side=224, max_pixels=im.width * im.height - 1)
    assert prepare(data, SPEC).shape == (3, 224, 224)


# --- hostile input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", np.random.default_rng(0).bytes(5000), b"<!doctype html><p>403 Forbidden</p>", b"\0" * 64],
    ids=["empty", "random", "html", "zeros"],
)
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(NotAnImage, match="not a PNG, JPEG, WebP or GIF") as info:
        prepare(data, SPEC)
    assert info.value.reason == "not_an_image"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header for a huge RGB image, with a few bytes of pixel data: never allocated."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def test_decompression_bomb_png_is_refused_from_the_header() -> None:
    with pytest.raises(ImageTooLarge, match="50000x50000") as info:
        prepare(png_claiming(50_000, 50_000), SPEC)
    assert info.value.reason == "too_large"
    # Under Pillow's own limit but over ours: only our header check can say "too large" here
    # (a decode would fail as truncated instead).
    with pytest.raises(ImageTooLarge, match="8000x8000"):
        prepare(png_claiming(8000, 8000), SPEC)
    # And with a cap that admits it, the same bytes are simply corrupt.
    with pytest.raises(ImageDecodeError):
        prepare(png_claiming(800, 800), SPEC)


def test_our_cap_decides_not_pillows_global_one() -> None:
    # Just over Pillow's MAX_IMAGE_PIXELS (where Image.open warns), under a cap an operator chose:
    # admitted, then found truncated, and Pillow's warning stays out of the way.
    side = int(Image.MAX_IMAGE_PIXELS**0.5) + 1
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ImageDecodeError):
        prepare(png_claiming(side, side), SPEC, max_pixels=side * side)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def _patched(data: bytes, offset: int, packed: bytes) -> bytes:
    return data[:offset] + packed + data[offset + len(packed) :]


def _jpeg_bomb() -> bytes:
    data = encode(Image.new("RGB", (16, 16)), "JPEG")
    sof = data.index(b"\xff\xc0")
    return _patched(data, sof + 5, struct.pack(">HH", 60000, 60000))


def _gif_bomb_in_first_frame() -> bytes:
    # A 16 x 16 screen whose first frame claims 60000 x 60000: Pillow would grow the canvas.
    data = encode(Image.new("P", (16, 16)), "GIF")
    desc = data.index(b"\x2c\0\0\0\0")
    return _patched(data, desc + 5, struct.pack("<HH", 60000, 60000))


BOMBS = {
    "jpeg": _jpeg_bomb,
    "gif_screen": lambda: _patched(encode(Image.new("P", (16, 16)), "GIF"), 6, b"\x60\xea" * 2),
    "gif_frame": _gif_bomb_in_first_frame,
    "webp_vp8": lambda: _patched(encode(Image.new("RGB", (16, 16)), "WEBP"), 26, b"\xff\x3f" * 2),
    "webp_vp8x": lambda: _patched(
        encode(Image.new("RGBA", (16, 16)), "WEBP"), 24, b"\xff\xff\x00" * 2
    ),
}


@pytest.mark.parametrize("name", BOMBS)
def test_decompression_bombs_of_every_type(name: str) -> None:
    with pytest.raises(ImageTooLarge, match="over the cap"):
        prepare(BOMBS[name](), SPEC)


def test_byte_cap() -> None:
    data = GRACE_HOPPER.read_bytes()
    with pytest.raises(ImageTooLarge, match=f"{len(data):,} bytes") as info:
        prepare(data, SPEC, max_bytes=len(data) - 1)
    assert info.value.reason == "too_large"
    assert prepare(data, SPEC, max_bytes=len(data)).shape == (3, 224, 224)


def test_pixel_cap_on_a_real_photo() -> None:
    data = GRACE_HOPPER.read_bytes()  # 512 x 600
    with pytest.raises(ImageTooLarge, match="512x600"):
        prepare(data, SPEC, max_pixels=512 * 600 - 1)


@pytest.mark.parametrize(
    "data",
    [
        GRACE_HOPPER.read_bytes()[: len(GRACE_HOPPER.read_bytes()) // 2],
        GRACE_HOPPER.read_bytes()[:400],
        encode(photo("chelsea"), "PNG")[:20_000],
        encode(photo("chelsea"), "PNG")[:30],
        encode(photo("chelsea"), "WEBP")[:2000],
        b"\x89PNG\r\n\x1a\n" + np.random.default_rng(1).bytes(500),
        b"\xff\xd8\xff" + bytes(500),
        b"GIF89a\x10\x00\x10\x00" + np.random.default_rng(2).bytes(20),
    ],
    ids=[
        "jpeg_half",
        "jpeg_header",
        "png_half",
        "png_header",
        "webp_truncated",
        "png_magic_junk",
        "jpeg_magic_junk",
        "gif_junk",
    ],
)
def test_corrupt_input(data: bytes) -> None:
    with pytest.raises(ImageDecodeError, match="cannot decode") as info:
        prepare(data, SPEC)
    assert info.value.reason == "corrupt"
    assert info.value.__cause__ is not None  # the Pillow error, for the operator's log


def test_mutated_files_give_arrays_or_typed_errors() -> None:
    rng = np.random.default_rng(3)
    small = photo("chelsea").resize((64, 48))
    seeds = [
        encode(small, "JPEG"),
        encode(small, "PNG"),
        encode(small.convert("P"), "GIF"),
        encode(small, "WEBP"),
    ]
    outcomes: set[str] = set()
    for data in seeds:
        for _ in range(60):
            buf = bytearray(data)
            for pos in rng.integers(0, len(buf), size=rng.integers(1, 8)):
                buf[pos] = rng.integers(0, 256)
            try:
                out = prepare(bytes(buf), SPEC)
            except ImageError as exc:
                outcomes.add(exc.reason)
                assert str(exc)
            else:
                outcomes.add("ok")
                assert out.shape == (3, 224, 224) and np.isfinite(out).all()
    assert {"ok", "corrupt"} <= outcomes


def test_error_types() -> None:
    for cls, reason in ((NotAnImage, "not_an_image"), (ImageTooLarge, "too_large")):
        assert issubclass(cls, ImageError) and cls.reason == reason
    assert ImageDecodeError.reason == "corrupt"
    assert issubclass(ImageError, ClipfindError)


# --- the spec --------------------------------------------------------------------------------


def test_spec_from_open_clip_configs() -> None:
    full = {
        "size": (336, 336),
        "mode": "RGB",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "interpolation": "bilinear",
        "resize_mode": "squash",
        "fill_color": 128,
    }
    spec = PreprocessSpec.from_open_clip(full)
    assert spec == PreprocessSpec(336, (0.5,) * 3, (0.25,) * 3, "bilinear", "squash", 128)
    # Legacy models carry only size/mean/std, sometimes as scalars; open_clip's defaults fill in.
    legacy = PreprocessSpec.from_open_clip({"size": 224, "mean": 0.5, "std": 0.5})
    assert legacy == PreprocessSpec(224, (0.5,) * 3, (0.5,) * 3, "bicubic", "shortest", 0)
    assert PreprocessSpec.from_open_clip({"size": 224, "interpolation": None}) == SPEC
    with pytest.raises(ValueError, match="square"):
        PreprocessSpec.from_open_clip({"size": (224, 320)})
    with pytest.raises(ValueError, match="resize_mode"):
        PreprocessSpec(224, MEAN, STD, resize_mode="crop")
    with pytest.raises(ValueError, match="interpolation"):
        PreprocessSpec(224, MEAN, STD, interpolation="lanczos")


def test_module_does_not_import_torch() -> None:
    banned = "{'torch', 'open_clip', 'discord'}"
    code = f"import sys, retrieval.pictures.images; print(sorted({banned} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
