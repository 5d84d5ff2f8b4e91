"""Model number formats: which one "auto" picks, and that bf16 vectors stand in for fp32 ones."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from retrieval.encoding.clip import Encoder, _cpu_has_native_bf16, resolve_precision
from retrieval.encoding.precision import CalibrationCache, CalibrationKey, calibrate, cpu_identity
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
    import retrieval.encoding.clip as encoder_module

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
    from retrieval.pictures.images import to_model_input

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
    from retrieval.pictures.images import prepare
    from tests.unit.test_images import GRACE_HOPPER, SKIMAGE_DATA

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


# -- "auto" on a CPU with native bf16: measured, not guessed (retrieval/encoding/precision.py) ---


class FakeMachine:
    """Encodes in the given seconds per batch (one list per precision, used in turn)."""

    def __init__(self, **seconds: list[float]) -> None:
        self.seconds = seconds
        self.now = 0.0
        self.runs: list[str] = []

    def clock(self) -> float:
        return self.now

    def run(self, precision: str) -> None:
        self.runs.append(precision)
        times = self.seconds[precision]
        self.now += times.pop(0) if len(times) > 1 else times[0]


def key(**changes: object) -> CalibrationKey:
    fields: dict = dict(
        cpu="Xeon", cpu_flags="abc", threads=2, torch="2.14.1", model_id="m/x", batch_size=16
    )
    return CalibrationKey(**(fields | changes))


@pytest.mark.parametrize(
    ("fp32", "bf16", "choice"),
    [
        ([0.5], [0.2], "bf16"),  # native bf16 doing its job
        ([0.5], [0.8], "fp32"),  # the Xeon where bf16 was 38% slower
        ([0.5], [0.5], "fp32"),  # a tie keeps the exact one
        # Load elsewhere during some turns does not decide: the best run of each counts.
        ([9.0, 0.5, 0.5, 0.5], [0.2, 5.0, 0.2], "bf16"),
        ([0.5], [0.2, 5.0, 5.0, 0.2], "bf16"),
    ],
)
def test_calibration_picks_the_faster(fp32, bf16, choice):
    machine = FakeMachine(fp32=fp32, bf16=bf16)
    got = calibrate(key=key(), cache=CalibrationCache(None), run=machine.run, clock=machine.clock)
    assert got.choice == choice and not got.cached
    expected = {"fp32": min(fp32[1:] or fp32), "bf16": min(bf16[1:] or bf16)}
    assert got.seconds == pytest.approx(expected)
    # One warm-up batch each (not timed), then they take turns.
    assert machine.runs == ["fp32", "bf16"] * 4
    assert f"{choice} (fp32 " in got.describe() and "ms/image at batch 16; measured now" in (
        got.describe()
    )


def test_the_calibration_is_remembered_per_key(tmp_path, caplog):
    path = tmp_path / "cache" / "precision.json"
    cache = CalibrationCache(path)
    first = FakeMachine(fp32=[0.5], bf16=[0.8])
    got = calibrate(key=key(), cache=cache, run=first.run, clock=first.clock)
    assert got.choice == "fp32" and first.runs and path.is_file()

    again = FakeMachine(fp32=[0.5], bf16=[0.2])
    cached = calibrate(key=key(), cache=CalibrationCache(path), run=again.run, clock=again.clock)
    assert again.runs == [] and cached.cached and cached.choice == "fp32"
    assert cached.seconds == got.seconds and "cached" in cached.describe()

    # Anything that decides the answer measures again: another torch, batch size, CPU, model.
    for change in ({"torch": "2.15.0"}, {"batch_size": 32}, {"cpu_flags": "abd"}, {"threads": 4}):
        other = FakeMachine(fp32=[0.5], bf16=[0.2])
        assert calibrate(
            key=key(**change), cache=cache, run=other.run, clock=other.clock
        ).choice == ("bf16")
        assert other.runs, change
    assert len(json.loads(path.read_text())["entries"]) == 5

    # A broken file is measured over and replaced, not fatal.
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="retrieval.encoding.precision"):
        broken = FakeMachine(fp32=[0.5], bf16=[0.2])
        assert calibrate(key=key(), cache=cache, run=broken.run, clock=broken.clock).choice == (
            "bf16"
        )
    assert broken.runs and "ignoring the precision cache" in caplog.text
    assert calibrate(key=key(), cache=cache, run=broken.run, clock=broken.clock).cached


def test_an_unwritable_cache_costs_a_measurement_not_the_start(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cache = CalibrationCache(blocker / "precision.json")
    with caplog.at_level(logging.WARNING, logger="retrieval.encoding.precision"):
        machine = FakeMachine(fp32=[0.5], bf16=[0.2])
        assert calibrate(key=key(), cache=cache, run=machine.run, clock=machine.clock).choice == (
            "bf16"
        )
    assert "could not save the precision calibration" in caplog.text


def test_cpu_identity(tmp_path):
    info = tmp_path / "cpuinfo"
    block = "processor\t: {n}\nmodel name\t: Intel(R) Xeon(R) Platinum\nflags\t\t: {flags}\n\n"
    info.write_text(block.format(n=0, flags=X86_FLAGS) + block.format(n=1, flags="other"))
    name, flags = cpu_identity(info)
    assert name == "Intel(R) Xeon(R) Platinum" and len(flags) == 16
    info.write_text(block.format(n=0, flags=X86_FLAGS + " avx512_bf16"))
    assert cpu_identity(info)[1] != flags
    assert cpu_identity(tmp_path / "missing") == ("unknown", "")


def test_auto_measures_the_tiny_model_once_per_machine(tmp_path, monkeypatch, caplog):
    import retrieval.encoding.clip as encoder_module
    import retrieval.encoding.precision as precision_module

    monkeypatch.setattr(encoder_module, "_cpu_has_native_bf16", lambda: True)
    builds: list[str] = []
    real_build = Encoder._build.__func__

    def counting_build(cls, **kwargs):
        builds.append(kwargs["precision"])
        return real_build(cls, **kwargs)

    monkeypatch.setattr(Encoder, "_build", classmethod(counting_build))
    cache = tmp_path / "precision.json"
    load = dict(
        model=str(CONFIG_PATH),
        pretrained=str(CHECKPOINT_PATH),
        device="cpu",
        precision="auto",
        batch_size=4,
        calibration_cache=cache,
    )
    with caplog.at_level(logging.INFO, logger="retrieval.encoding.clip"):
        first = Encoder.load(**load)
    assert first.precision in ("fp32", "bf16") and sorted(builds) == ["bf16", "fp32"]
    assert first.calibration is not None and first.calibration.choice == first.precision
    assert set(first.calibration.seconds) == {"fp32", "bf16"}
    assert all(s > 0 for s in first.calibration.seconds.values())
    expected = torch.bfloat16 if first.precision == "bf16" else torch.float32
    assert first.model.visual.conv1.weight.dtype == expected
    assert "CLIP_PRECISION=auto on" in caplog.text and "ms/image at batch 4" in caplog.text
    assert first.encode_images(_pictures(first, seed=1)).shape[1] == first.dim

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured although the answer was cached")

    monkeypatch.setattr(precision_module, "time_batches", no_measuring)
    builds.clear()
    second = Encoder.load(**load)
    assert second.precision == first.precision and builds == [first.precision]
    assert second.calibration is not None and second.calibration.cached


def test_auto_measures_nothing_where_the_answer_is_known(monkeypatch):
    import retrieval.encoding.clip as encoder_module

    monkeypatch.setattr(encoder_module, "_cpu_has_native_bf16", lambda: False)
    tiny = dict(model=str(CONFIG_PATH), pretrained=str(CHECKPOINT_PATH), device="cpu")
    plain = Encoder.load(**tiny, precision="auto")
    assert plain.precision == "fp32" and plain.calibration is None  # emulated bf16: not tried
    monkeypatch.setattr(encoder_module, "_cpu_has_native_bf16", lambda: True)
    chosen = Encoder.load(**tiny, precision="bf16")
    assert chosen.precision == "bf16" and chosen.calibration is None  # the operator decided


def test_the_cache_file_is_under_cache_dir_or_the_user_cache(tmp_path, monkeypatch):
    from retrieval.config import load_settings

    monkeypatch.delenv("CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    where = tmp_path / "xdg" / "clipfind" / "precision.json"
    assert load_settings(_env_file=None).precision_cache() == where
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = tmp_path / "home" / ".cache" / "clipfind" / "precision.json"
    assert load_settings(_env_file=None).precision_cache() == home
    monkeypatch.setenv("CACHE_DIR", "")  # as `.env.example` could have it: the default
    assert load_settings(_env_file=None).precision_cache() == home
    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "mine"))
    assert load_settings(_env_file=None).precision_cache() == tmp_path / "mine" / "precision.json"
