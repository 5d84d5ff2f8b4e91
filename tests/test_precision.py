"""Model number formats: which one "auto" picks, and that bf16 vectors stand in for fp32 ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.encoder import Encoder, _cpu_has_native_bf16, resolve_precision
from retrieval.errors import ModelUnavailable
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH
from tests.tinyclip.evaluate import CAPTIONS, CLASSES, sample

X86_FLAGS = "fpu vme sse sse2 avx avx2 avx512f avx512bw avx512vl"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        (f"processor\t: 0\nflags\t\t: {X86_FLAGS} avx512_bf16 avx512_vnni\n", True),
        (f"processor\t: 0\nflags\t\t: {X86_FLAGS} amx_bf16 amx_tile\n", True),
        # AVX-512 without BF16: oneDNN would emulate bf16, slower than fp32.
        (f"processor\t: 0\nflags\t\t: {X86_FLAGS}\n", False),
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm (e.g. Graviton3)
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm\n", False),
        (None, False),  # no /proc/cpuinfo (not Linux)
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, cpuinfo, native):
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert _cpu_has_native_bf16(path) is native


def test_auto_precision_per_device(monkeypatch):
    import retrieval.encoder as encoder_module

    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(encoder_module, "_cpu_has_native_bf16", lambda native=native: native)
        assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    with pytest.raises(ModelUnavailable, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_by_precision():
    return {
        p: Encoder.load(model=str(CONFIG_PATH), pretrained=str(CHECKPOINT_PATH), precision=p)
        for p in ("fp32", "bf16")
    }


def _pictures(encoder: Encoder, seed: int) -> np.ndarray:
    from retrieval.images import to_model_input

    rng = np.random.default_rng(seed)
    return np.stack([to_model_input(sample(c, s, rng), encoder.spec) for c, s in CLASSES])


def test_bf16_vectors_are_fp32_vectors_to_within_rounding(tiny_by_precision):
    fp32, bf16 = tiny_by_precision["fp32"], tiny_by_precision["bf16"]
    assert bf16.model_id == fp32.model_id  # interchangeable, so one index holds both
    # open_clip's "bf16" keeps norms and embeddings in fp32 and casts convolutions and matmuls.
    assert bf16.model.visual.conv1.weight.dtype == torch.bfloat16
    pixels = _pictures(fp32, seed=7)
    images = (fp32.encode_images(pixels) * bf16.encode_images(pixels)).sum(axis=1)
    texts = (fp32.encode_texts(CAPTIONS) * bf16.encode_texts(CAPTIONS)).sum(axis=1)
    assert images.min() >= 0.99 and texts.min() >= 0.99
    vectors = bf16.encode_images(pixels)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_bf16_finds_what_fp32_finds(tiny_by_precision):
    """Captions against fresh drawings, bf16 queries over bf16 and over fp32 image vectors."""
    fp32, bf16 = tiny_by_precision["fp32"], tiny_by_precision["bf16"]
    hits = {"fp32": 0, "bf16": 0, "mixed": 0}
    trials = 3
    for seed in range(trials):
        pixels = _pictures(fp32, seed=100 + seed)
        image_vectors = {"fp32": fp32.encode_images(pixels), "bf16": bf16.encode_images(pixels)}
        for name, (text_enc, images) in {
            "fp32": (fp32, image_vectors["fp32"]),
            "bf16": (bf16, image_vectors["bf16"]),
            "mixed": (bf16, image_vectors["fp32"]),
        }.items():
            best = (text_enc.encode_texts(CAPTIONS) @ images.T).argmax(axis=1)
            hits[name] += int((best == np.arange(len(CLASSES))).sum())
    total = trials * len(CLASSES)
    assert hits["fp32"] / total >= 0.9
    assert hits["bf16"] >= hits["fp32"] - 1 and hits["mixed"] >= hits["fp32"] - 1


def test_bf16_vit_b_32_stays_close_to_fp32_on_photos():
    """The default architecture (random weights: no pretrained ones can be downloaded here)."""
    from retrieval.images import prepare
    from tests.test_images import GRACE_HOPPER, SKIMAGE_DATA

    encoders = {
        p: Encoder.load(model="ViT-B-32", pretrained=None, precision=p) for p in ("fp32", "bf16")
    }
    paths = [
        SKIMAGE_DATA / f"{n}.png" for n in ("astronaut", "chelsea", "coffee", "motorcycle_left")
    ]
    spec = encoders["fp32"].spec
    pixels = np.stack([prepare(p.read_bytes(), spec) for p in [*paths, GRACE_HOPPER]])
    fp32, bf16 = (encoders[p].encode_images(pixels) for p in ("fp32", "bf16"))
    assert (fp32 * bf16).sum(axis=1).min() >= 0.99
    # Batching must not change a bf16 vector beyond rounding either.
    alone = np.concatenate([encoders["bf16"].encode_images(pixels[i : i + 1]) for i in range(5)])
    assert (alone * bf16).sum(axis=1).min() >= 0.999
