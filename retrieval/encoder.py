"""The CLIP encoder: the only module that imports torch and open_clip.

Loads an open_clip model by name + pretrained tag, or from a local config JSON + checkpoint, and
turns preprocessed images and texts into L2-normalised float32 vectors. Every vector produced is
tagged with ``model_id`` so vectors of different models never mix in the store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch

from retrieval.errors import ModelUnavailable
from retrieval.images import PreprocessSpec

log = logging.getLogger(__name__)

_HUB_HOST = ("huggingface.co", 443)
# On a 2-core CPU batches of 16 encoded fastest end to end (benchmarks/RESULTS.md), and a query
# waits behind at most one (under a second); a GPU wants far more.
_BATCH_SIZE = {"cpu": 16, "cuda": 64}
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
    """fp16 on CUDA, bf16 on CPUs that compute it natively, fp32 otherwise.

    On this project's 2-core AVX-512 BF16 CPU, bf16 encodes ViT-B-32 2.2x faster than fp32 with
    embeddings at cosine >= 0.997 to fp32 ones, so vectors of both mix in one index (same id).
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
    try:
        with socket.create_connection(_HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _cached_hub_file(hub: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    # open_clip's hub entries are "org/repo/" (default file names) or "org/repo/file".
    repo_id, filename = os.path.split(hub)
    for name in (filename,) if filename else _HUB_WEIGHT_FILES:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str):
            return found
    return None


def _check_pretrained(name: str, pretrained: str) -> str:
    """Validate the pretrained source and return the identity part of the model id.

    A hub tag offline would make huggingface_hub retry for about a minute; check first and fail
    at once with the fix, or switch the hub client to offline mode when the weights are cached.
    """
    if Path(pretrained).is_file():
        digest = hashlib.sha256(Path(pretrained).read_bytes()).hexdigest()[:12]
        return f"file-{digest}"
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ModelUnavailable(
            f"CLIP_PRETRAINED={pretrained} is neither a checkpoint file nor a pretrained tag of "
            f"{name} (tags: {tags})."
        )
    if _hub_reachable():
        return pretrained
    hub = cfg.get("hf_hub", "")
    if hub and _cached_hub_file(hub):
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
        return pretrained
    raise ModelUnavailable(
        f"Cannot download the pretrained weights {name}/{pretrained}: the Hugging Face Hub is not "
        "reachable from this machine and the weights are not in its cache. Either run once with "
        "network access so they are cached, or set CLIP_PRETRAINED to a local checkpoint file "
        "(and CLIP_MODEL to its open_clip model name or config JSON)."
    )


def _unit(features: torch.Tensor) -> np.ndarray:
    # Normalised in fp32: normalised in bf16, ViT-B-32's vectors came out up to 0.3% off unit
    # length, most of the 0.5% margin of the repost threshold (cosine 0.995) that compares them.
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


class Encoder:
    """A loaded CLIP model. Not thread-safe: one thread owns it (see retrieval/encoding.py)."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        tokenizer,
        device: torch.device,
        model_id: str,
        precision: str = "fp32",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.model_id = model_id
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.spec = PreprocessSpec.from_open_clip(open_clip.get_model_preprocess_cfg(model))
        self.dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else 0
        self.default_batch_size = _BATCH_SIZE["cuda" if device.type == "cuda" else "cpu"]

    @classmethod
    def load(
        cls, *, model: str, pretrained: str | None, device: str = "auto", precision: str = "auto"
    ) -> Encoder:
        name = _model_name(model)
        identity = _check_pretrained(name, pretrained) if pretrained else "random"
        dev = resolve_device(device)
        precision = resolve_precision(precision, dev)
        if not pretrained:
            torch.manual_seed(0)  # random init stays the same across restarts, so its id holds
        try:
            clip, _, _ = open_clip.create_model_and_transforms(
                name,
                pretrained=pretrained,
                device=dev,
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
            device=dev,
            model_id=f"{name}/{identity}",
            precision=precision,
        )
        if not encoder.dim:
            encoder.dim = int(encoder.encode_texts(["probe"]).shape[1])
        log.info(
            "loaded CLIP model %s on %s (%s, dim %d)",
            encoder.model_id,
            dev,
            precision,
            encoder.dim,
        )
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
