"""The CLIP encoder: the only module that imports torch and open_clip.

Loads an open_clip model by name + pretrained tag, or from a local config JSON + checkpoint, and
turns preprocessed images and texts into L2-normalised float32 vectors. Every vector produced is
tagged with ``model_id`` so vectors of different models never mix in the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import numpy as np
import open_clip
import torch

from retrieval.encoding.precision import (
    Calibration,
    CalibrationCache,
    CalibrationKey,
    calibrate,
    cpu_identity,
)
from retrieval.errors import ModelUnavailable
from retrieval.pictures.images import PreprocessSpec
from retrieval.torch_threads import use_torch_threads

log = logging.getLogger(__name__)

_HUB_HOST = ("huggingface.co", 443)
# On a 2-core CPU batches of 16 encoded fastest end to end (benchmarks/RESULTS.md), and a query
# waits behind at most one (under a second); a GPU wants far more. With several streams on a CPU
# each takes its share, so a batch in a stream takes as long as the whole one did.
_BATCH_SIZE = {"cpu": 16, "cuda": 64}
# torch's threads as the process starts (OMP_NUM_THREADS, or the cores). Read once here: a stream
# sets its own thread's count, which torch also takes as the default for threads started later.
_TORCH_THREADS = torch.get_num_threads()
_HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU flags of native bf16 matrix instructions (x86 AVX-512 BF16 / AMX, Arm BF16). Without them
# oneDNN emulates bf16 and it is slower than fp32, so "auto" keeps fp32 there.
_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable(
            f"CLIP_DEVICE={device} but PyTorch sees no CUDA device; use 'auto' or 'cpu'."
        )
    return torch.device(device)


def _cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return bool(_BF16_CPU_FLAGS & set(value.split()))
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """fp16 on CUDA, bf16 on CPUs that compute it natively, fp32 otherwise: what "auto" starts
    from. On a CPU with native bf16, `Encoder.load` then measures both and keeps the faster
    (retrieval/encoding/precision.py): on one such machine bf16 was 2.2x faster, on another 38%
    slower.

    bf16 embeddings are within cosine 0.997 of fp32 ones, so vectors of both mix in one index
    (same model id).
    """
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if _cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ModelUnavailable(
            "CLIP_PRECISION=fp16 needs a CUDA device; on CPU use 'bf16' or 'fp32' (or 'auto')."
        )
    return precision


def _model_name(model: str) -> str:
    """An open_clip model name, registering a local config JSON first when given a path."""
    path = Path(model)
    if model.endswith(".json") or path.is_file():
        if not path.is_file():
            raise ModelUnavailable(f"CLIP_MODEL={model}: no such model config file.")
        open_clip.add_model_config(path)
        return path.stem
    if model not in open_clip.list_models():
        raise ModelUnavailable(
            f"CLIP_MODEL={model} is not an open_clip model name or a config JSON path. "
            "Run `python -c 'import open_clip; print(open_clip.list_models())'` for the names."
        )
    return model


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    from huggingface_hub import constants

    # HF_ENDPOINT may point at a mirror; ask the host that downloads would go to.
    url = urlsplit(constants.ENDPOINT)
    address = (url.hostname or _HUB_HOST[0], url.port or (80 if url.scheme == "http" else 443))
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def _hub_files(hub: str) -> tuple[str, tuple[str, ...]]:
    """The repository and the file names open_clip tries, in its order (safetensors first)."""
    # open_clip's hub entries are "org/repo/" (default file names) or "org/repo/file".
    repo_id, filename = os.path.split(hub)
    if not filename:
        return repo_id, _HUB_WEIGHT_FILES
    if filename.endswith((".bin", ".pth")):
        return repo_id, (filename[:-4] + ".safetensors", filename)
    return repo_id, (filename,)


def _cached_hub_file(hub: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    repo_id, names = _hub_files(hub)
    for name in names:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str):
            return found
    return None


def _hub_size(hub: str) -> int | None:
    """The size of the file a download would fetch, from the hub's metadata (one HEAD)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    repo_id, names = _hub_files(hub)
    for name in names:
        try:
            return get_hf_file_metadata(hf_hub_url(repo_id, name), timeout=10).size
        except Exception:  # a missing alternative, or a hiccup: try the next name
            continue
    return None


def megabytes(size: int | None) -> str:
    if size is None:
        return "size unknown"
    return f"{size / 1e6:.1f} MB" if size < 10e6 else f"{size / 1e6:,.0f} MB"


@dataclass(frozen=True)
class Weights:
    """Where a model's weights come from, found without loading them."""

    name: str  # the open_clip model name
    identity: str  # the weights' part of the model id
    source: Literal["file", "cache", "hub", "random"]
    size: int | None = None  # bytes, when known
    where: str = ""  # the checkpoint or cached file; the hub repository for "hub"

    def describe(self) -> str:
        if self.source == "file":
            return f"{self.name} from the checkpoint {self.where} ({megabytes(self.size)})"
        if self.source == "cache":
            return f"{self.name}/{self.identity}, cached in {self.where} ({megabytes(self.size)})"
        if self.source == "hub":
            return (
                f"{self.name}/{self.identity}, downloaded once on first start from the Hugging "
                f"Face Hub ({megabytes(self.size)}), then cached"
            )
        return f"{self.name} with random weights (benchmarks only: searches find nothing useful)"


def locate_weights(*, model: str, pretrained: str | None) -> Weights:
    """Validate the model and its weights' source without loading them.

    A hub tag offline would make huggingface_hub retry for about a minute; check first and fail
    at once with the fix, or switch the hub client to offline mode when the weights are cached.
    """
    name = _model_name(model)
    if not pretrained:
        return Weights(name=name, identity="random", source="random")
    path = Path(pretrained)
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        return Weights(
            name=name,
            identity=f"file-{digest}",
            source="file",
            size=path.stat().st_size,
            where=str(path),
        )
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ModelUnavailable(
            f"CLIP_PRETRAINED={pretrained} is neither a checkpoint file nor a pretrained tag of "
            f"{name} (tags: {tags})."
        )
    hub = cfg.get("hf_hub", "")
    cached = _cached_hub_file(hub) if hub else None
    reachable = _hub_reachable()
    if cached:
        if not reachable:
            import huggingface_hub.constants

            huggingface_hub.constants.HF_HUB_OFFLINE = True
        return Weights(
            name=name,
            identity=pretrained,
            source="cache",
            size=os.path.getsize(cached),
            where=cached,
        )
    if reachable:
        return Weights(
            name=name,
            identity=pretrained,
            source="hub",
            size=_hub_size(hub) if hub else None,
            where=hub,
        )
    raise ModelUnavailable(
        f"Cannot download the pretrained weights {name}/{pretrained}: the Hugging Face Hub is not "
        "reachable from this machine and the weights are not in its cache. Either run once with "
        "network access so they are cached, or set CLIP_PRETRAINED to a local checkpoint file "
        "(and CLIP_MODEL to its open_clip model name or config JSON)."
    )


def _show_download_progress() -> None:
    """huggingface_hub's progress bars on a terminal; none in a log file or a service's journal."""
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if sys.stderr.isatty():
        enable_progress_bars()
    else:
        disable_progress_bars()


def _unit(features: torch.Tensor) -> np.ndarray:
    # Normalised in fp32: normalised in bf16, ViT-B-32's vectors came out up to 0.3% off unit
    # length, most of the 0.5% margin of the repost threshold (cosine 0.995) that compares them.
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """torch's threads on this thread for a while: a calibration times one stream's share."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _calibrated(
    build: Callable[[str], Encoder], *, model_id: str, batch_size: int, cache: CalibrationCache
) -> Encoder:
    """The model in whichever of fp32 and bf16 encodes a batch faster on this machine.

    Both are built only when there is no cached answer for this machine and model: a few
    batches of random pixels each (real preprocessing is not needed to time the model).
    """
    cpu, flags = cpu_identity()
    key = CalibrationKey(
        cpu=cpu,
        cpu_flags=flags,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        model_id=model_id,
        batch_size=batch_size,
    )
    built: dict[str, Encoder] = {}
    pixels: list[np.ndarray] = []

    def run(precision: str) -> None:
        if precision not in built:
            built[precision] = build(precision)
        if not pixels:
            size = built[precision].spec.size
            rng = np.random.default_rng(0)
            pixels.append(rng.standard_normal((batch_size, 3, size, size), dtype=np.float32))
        built[precision].encode_images(pixels[0])

    calibration = calibrate(key=key, cache=cache, run=run)
    encoder = built.pop(calibration.choice, None) or build(calibration.choice)
    built.clear()  # the slower copy goes now, not at the next collection
    encoder.calibration = calibration
    log.info("CLIP_PRECISION=auto on %s: %s", cpu, calibration.describe())
    return encoder


def _share(total: int, streams: int) -> int:
    """One stream's share of ``total`` (torch's threads, a batch's images), at least one."""
    return max(1, total // streams)


def cpu_streams(threads: int = _TORCH_THREADS) -> int:
    """Streams for a CPU with ``threads`` of torch's: two wherever there are two cores to split.

    torch's threads for one batch meet after every operation, so whatever else takes a core for a
    moment (decoding, the event loop) holds up both; two batches each on its own share of the
    cores go on past it. On 2 cores, two streams of one thread encode as fast alone as one of two
    threads, and lose half as much to other work beside them (benchmarks/RESULTS.md).
    """
    return 2 if threads >= 2 else 1


class Encoder:
    """A loaded CLIP model. ``streams`` threads may run it at once (see
    retrieval/encoding/service.py), each after `enter_stream`."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        tokenizer,
        device: torch.device,
        model_id: str,
        precision: str = "fp32",
        streams: int = 1,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.model_id = model_id
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.spec = PreprocessSpec.from_open_clip(open_clip.get_model_preprocess_cfg(model))
        self.dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else 0
        # A GPU runs one batch at a time whatever the threads feeding it: one stream there.
        self.streams = streams if device.type == "cpu" else 1
        self.threads_per_stream = _share(_TORCH_THREADS, self.streams)
        kind = "cuda" if device.type == "cuda" else "cpu"
        self.default_batch_size = _share(_BATCH_SIZE[kind], self.streams)
        self.calibration: Calibration | None = None  # how "auto" chose the precision, if it did

    def enter_stream(self) -> None:
        """Called on each thread that runs the model, before its first batch: its share of the
        cores (on a GPU, every core for what runs on the CPU), whatever count the decoding
        threads set for theirs (retrieval/torch_threads.py)."""
        use_torch_threads(self.threads_per_stream)

    @classmethod
    def load(
        cls,
        *,
        model: str,
        pretrained: str | None,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        calibration_cache: Path | None = None,
        streams: int | None = None,
    ) -> Encoder:
        """``precision="auto"`` on a CPU with native bf16 times fp32 against bf16 at
        ``batch_size`` (the device's default when None) on one stream's share of the cores, and
        keeps the faster; the result is remembered in ``calibration_cache`` (a JSON file; None:
        measured at every load). ``streams``: batches encoded at once on a CPU (None:
        `cpu_streams`)."""
        weights = locate_weights(model=model, pretrained=pretrained)
        name = weights.name
        dev = resolve_device(device)
        streams = streams or cpu_streams()  # the encoder keeps one on a GPU
        measure = precision == "auto" and dev.type == "cpu" and _cpu_has_native_bf16()
        precision = resolve_precision(precision, dev)
        if weights.source == "hub":
            log.info(
                "downloading the %s weights %s from the Hugging Face Hub (%s); later starts use "
                "the cache",
                name,
                pretrained,
                megabytes(weights.size),
            )
            _show_download_progress()
        model_id = f"{name}/{weights.identity}"

        def build(precision: str) -> Encoder:
            return cls._build(
                name=name,
                pretrained=pretrained,
                device=dev,
                model_id=model_id,
                precision=precision,
                streams=streams,
            )

        if measure:
            with _threads(_share(_TORCH_THREADS, streams)):
                encoder = _calibrated(
                    build,
                    model_id=model_id,
                    batch_size=batch_size or _share(_BATCH_SIZE["cpu"], streams),
                    cache=CalibrationCache(calibration_cache),
                )
        else:
            encoder = build(precision)
        log.info(
            "loaded CLIP model %s on %s (%s, dim %d, %d stream(s) of %d thread(s))",
            encoder.model_id,
            dev,
            encoder.precision,
            encoder.dim,
            encoder.streams,
            encoder.threads_per_stream,
        )
        return encoder

    @classmethod
    def _build(
        cls,
        *,
        name: str,
        pretrained: str | None,
        device: torch.device,
        model_id: str,
        precision: str,
        streams: int,
    ) -> Encoder:
        if not pretrained:
            torch.manual_seed(0)  # random init stays the same across restarts, so its id holds
        try:
            clip, _, _ = open_clip.create_model_and_transforms(
                name,
                pretrained=pretrained,
                device=device,
                precision=precision,
            )
        except (RuntimeError, OSError) as exc:
            raise ModelUnavailable(
                f"Could not load {name} ({pretrained or 'random init'}): {exc}"
            ) from exc
        clip.eval()
        encoder = cls(
            model=clip,
            tokenizer=open_clip.get_tokenizer(name),
            device=device,
            model_id=model_id,
            precision=precision,
            streams=streams,
        )
        if not encoder.dim:
            encoder.dim = int(encoder.encode_texts(["probe"]).shape[1])
        return encoder

    @torch.inference_mode()
    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 preprocessed pixels → (N, dim) L2-normalised float32."""
        pixels = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.device.type == "cuda":
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        return _unit(self.model.encode_image(pixels.to(self.dtype)))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts)).to(self.device, non_blocking=True)
        return _unit(self.model.encode_text(tokens))

    def count_tokens(self, text: str) -> int:
        """Tokens the text takes (with start/end), to tell a user their query was cut."""
        encode = getattr(self.tokenizer, "encode", None)
        return len(encode(text)) + 2 if encode else 0

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))
