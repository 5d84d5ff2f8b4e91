"""The Hugging Face Hub without the network: a cache laid out as huggingface_hub writes it, and a
loopback hub that announces weights."""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
from collections.abc import Iterator
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


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers the metadata request for safetensors weights; has no file to download."""

    size = 605_123_456

    def do_HEAD(self) -> None:
        if not self.path.endswith("/open_clip_model.safetensors"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("ETag", '"weights"')
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def fake_hub(monkeypatch: pytest.MonkeyPatch, cache: Path) -> Iterator[int]:
    """The hub client pointed at a loopback hub (as HF_ENDPOINT does), online, with an empty
    cache; yields the size the hub announces for the weights."""
    import huggingface_hub.constants as hub

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hub, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    try:
        yield _FakeHub.size
    finally:
        server.shutdown()
        server.server_close()
