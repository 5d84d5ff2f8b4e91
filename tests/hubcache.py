"""A Hugging Face Hub cache laid out as huggingface_hub writes it, for weights never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import open_clip
import pytest


def cache_weights(
    monkeypatch: pytest.MonkeyPatch, root: Path, *, model: str, tag: str, data: bytes
) -> Path:
    """Put ``data`` where the hub client would have cached the weights of ``model``/``tag``."""
    import huggingface_hub.constants

    hub = open_clip.get_pretrained_cfg(model, tag)["hf_hub"]
    repo_id, filename = os.path.split(hub)  # "org/repo/": open_clip's default file names
    filename = filename or "open_clip_model.safetensors"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    path = snapshot / filename
    path.write_bytes(data)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    # Found offline, the encoder switches the hub client offline; undo it after the test.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return path
