"""The encoder through the real open_clip code path, and its priority thread."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import pytest

from retrieval.encoding.clip import Encoder, locate_weights
from retrieval.encoding.service import EncoderService
from retrieval.errors import ModelUnavailable
from tests.hubcache import cache_weights, fake_hub
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH


@pytest.fixture(scope="module")
def random_tiny():
    # fp32: batches must match single images exactly (bf16 is checked in test_precision.py).
    return Encoder.load(model=str(CONFIG_PATH), pretrained=None, device="cpu", precision="fp32")


def pixels(encoder: Encoder, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    size = encoder.spec.size
    return rng.normal(size=(n, 3, size, size)).astype(np.float32)


def test_batches_match_single_images_and_are_normalised(random_tiny):
    batch = pixels(random_tiny, 5)
    together = random_tiny.encode_images(batch)
    alone = np.concatenate([random_tiny.encode_images(batch[i : i + 1]) for i in range(5)])
    assert together.shape == (5, random_tiny.dim) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    texts = random_tiny.encode_texts(["a red circle", "a blue square"])
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)


def test_model_id_names_model_and_weights(random_tiny, tiny_encoder, tmp_path):
    assert random_tiny.model_id == "tiny-clip/random"
    assert tiny_encoder.model_id.startswith("tiny-clip/file-")
    # Different weights must never share an id, or their vectors would mix in the store.
    import torch

    state = torch.load(CHECKPOINT_PATH, weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1
    other = tmp_path / "other.pt"
    torch.save(state, other)
    retrained = Encoder.load(model=str(CONFIG_PATH), pretrained=str(other))
    assert retrained.model_id.startswith("tiny-clip/file-")
    assert retrained.model_id != tiny_encoder.model_id


def test_hub_tag_offline_fails_at_once_with_the_fix():
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as info:
        Encoder.load(model="ViT-B-32", pretrained="laion2b_s34b_b79k", device="cpu")
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "not reachable" in message and "CLIP_PRETRAINED" in message


@pytest.mark.parametrize(
    ("model", "pretrained", "device", "expected"),
    [
        ("ViT-B-32", "no_such_tag", "cpu", "laion2b_s34b_b79k"),  # lists the real tags
        ("NoSuchNet", None, "cpu", "not an open_clip model name"),
        ("/nowhere/model.json", None, "cpu", "no such model config file"),
        (str(CONFIG_PATH), None, "cuda:0", "no CUDA device"),
    ],
)
def test_bad_model_settings_say_what_to_fix(model, pretrained, device, expected):
    if device.startswith("cuda"):
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    with pytest.raises(ModelUnavailable, match=expected):
        Encoder.load(model=model, pretrained=pretrained, device=device)


class _Gated:
    """The real encoder, with the first image batch held until released, recording call order;
    run as ``streams`` streams."""

    def __init__(self, encoder: Encoder, *, streams: int = 1) -> None:
        self.inner = encoder
        self.model_id, self.dim, self.spec = encoder.model_id, encoder.dim, encoder.spec
        self.default_batch_size = encoder.default_batch_size
        self.streams = streams
        self.gate = threading.Event()
        self.calls: list[str] = []
        self.sizes: list[int] = []
        self._entered = threading.Lock()  # taken by the first batch in

    def holding(self) -> bool:
        """Whether the first batch is in, held at the gate."""
        return self._entered.locked() and not self.gate.is_set()

    def encode_images(self, batch):
        if self._entered.acquire(blocking=False):
            self.gate.wait(10)
        self.calls.append("images")
        self.sizes.append(len(batch))
        return self.inner.encode_images(batch)

    def encode_texts(self, texts):
        self.calls.append("text")
        return self.inner.encode_texts(texts)


async def test_queries_jump_the_image_backlog(random_tiny):
    gated = _Gated(random_tiny)
    service = EncoderService(gated)
    try:
        batches = [
            asyncio.create_task(service.encode_images(pixels(random_tiny, 2, s))) for s in range(3)
        ]
        await asyncio.sleep(0.05)  # all three batches are queued behind the gate
        query = asyncio.create_task(service.encode_text("a red circle"))
        await asyncio.sleep(0.05)
        gated.gate.set()
        await asyncio.gather(query, *batches)
        assert gated.calls == ["images", "text", "images", "images"]
    finally:
        await service.close()


class _Together:
    """The real encoder as ``streams`` streams, each batch held in the model until a batch is in
    every stream: only that many threads at once get past the barrier."""

    def __init__(self, encoder: Encoder, streams: int) -> None:
        self.inner, self.streams = encoder, streams
        self.model_id, self.dim, self.spec = encoder.model_id, encoder.dim, encoder.spec
        self.default_batch_size = encoder.default_batch_size
        self.entered: set[int] = set()
        self.together = threading.Barrier(streams, timeout=10)

    def enter_stream(self) -> None:
        self.entered.add(threading.get_ident())

    def encode_images(self, batch):
        self.together.wait()
        return self.inner.encode_images(batch)

    def encode_texts(self, texts):
        return self.inner.encode_texts(texts)


async def test_streams_encode_batches_at_once(random_tiny):
    together = _Together(random_tiny, streams=2)
    service = EncoderService(together)
    try:
        assert service.streams == 2
        batches = [pixels(random_tiny, 2, seed) for seed in range(2)]
        got = await asyncio.gather(*(service.encode_images(batch) for batch in batches))
        for batch, vectors in zip(batches, got, strict=True):
            np.testing.assert_allclose(vectors, random_tiny.encode_images(batch), atol=1e-6)
        assert len(together.entered) == 2  # each stream's thread was set up for the model
    finally:
        await service.close()


async def test_a_query_takes_the_stream_that_is_free(random_tiny):
    gated = _Gated(random_tiny, streams=2)
    service = EncoderService(gated)
    try:
        held = asyncio.create_task(service.encode_images(pixels(random_tiny, 2)))
        # One stream holds the batch; the query is answered by the other meanwhile.
        vector = await asyncio.wait_for(service.encode_text("a red circle"), timeout=5)
        assert vector.shape == (random_tiny.dim,) and not held.done()
        gated.gate.set()
        assert (await held).shape == (2, random_tiny.dim)
    finally:
        await service.close()


def test_the_model_runs_in_two_streams_at_once_as_in_one():
    import torch

    encoder = Encoder.load(
        model=str(CONFIG_PATH), pretrained=None, device="cpu", precision="fp32", streams=2
    )
    assert encoder.streams == 2 and encoder.default_batch_size == 8
    batches = [pixels(encoder, 4, seed) for seed in range(2)]
    alone = [encoder.encode_images(batch) for batch in batches]
    threads: dict[int, int] = {}
    got: dict[int, list[np.ndarray]] = {}
    start = threading.Barrier(2, timeout=10)

    def stream(i: int) -> None:
        encoder.enter_stream()
        threads[i] = torch.get_num_threads()
        start.wait()
        got[i] = [encoder.encode_images(batches[i]) for _ in range(5)]

    workers = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert threads == {0: encoder.threads_per_stream, 1: encoder.threads_per_stream}
    for i in range(2):
        for vectors in got[i]:
            np.testing.assert_allclose(vectors, alone[i], atol=1e-5)


async def test_batches_whose_callers_were_cancelled_are_not_encoded(random_tiny):
    """A stop cancels the batches waiting for the model: their images go back to the queue, so
    encoding them would only delay the exit."""
    gated = _Gated(random_tiny)
    service = EncoderService(gated)
    try:
        running = asyncio.create_task(service.encode_images(pixels(random_tiny, 2, 0)))
        queued = [
            asyncio.create_task(service.encode_images(pixels(random_tiny, 3, s))) for s in (1, 2)
        ]
        await asyncio.sleep(0)  # each task queues its batch before it waits for the answer
        for task in queued:
            task.cancel()
        await asyncio.gather(*queued, return_exceptions=True)
        gated.gate.set()
        assert (await running).shape == (2, random_tiny.dim)
    finally:
        await service.close()
    assert gated.sizes == [2]


async def test_repeated_query_skips_the_model(random_tiny):
    service = EncoderService(random_tiny)
    try:
        first = await service.encode_text("a green triangle")
        again = await service.encode_text("a green triangle")
        assert np.array_equal(first, again)
        assert service.counters.text_queries == 2 and service.counters.text_cache_hits == 1
    finally:
        await service.close()


async def test_encoder_errors_reach_the_caller(random_tiny):
    service = EncoderService(random_tiny)
    try:
        with pytest.raises(RuntimeError):
            await service.encode_images(np.zeros((1, 3, 5, 5), dtype=np.float32))
        assert (await service.encode_text("still works")).shape == (random_tiny.dim,)
    finally:
        await service.close()


def test_weights_are_located_without_loading_them(monkeypatch, tmp_path):
    local = locate_weights(model=str(CONFIG_PATH), pretrained=str(CHECKPOINT_PATH))
    assert (local.source, local.size) == ("file", CHECKPOINT_PATH.stat().st_size)
    assert local.describe().endswith(f"{CHECKPOINT_PATH} (4.8 MB)")
    assert locate_weights(model=str(CONFIG_PATH), pretrained=None).source == "random"

    with pytest.raises(ModelUnavailable, match="not reachable"):  # offline, not cached
        locate_weights(model="ViT-B-32", pretrained="laion2b_s34b_b79k")
    cached = cache_weights(
        monkeypatch, tmp_path, model="ViT-B-32", tag="laion2b_s34b_b79k", data=b"w" * 2_500_000
    )
    found = locate_weights(model="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert (found.source, found.size, found.where) == ("cache", 2_500_000, str(cached))
    assert found.identity == "laion2b_s34b_b79k"  # the model id does not depend on the source
    assert found.describe() == f"ViT-B-32/laion2b_s34b_b79k, cached in {cached} (2.5 MB)"


def test_a_download_is_announced_with_its_size(monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="retrieval.encoding.clip")
    with fake_hub(monkeypatch, tmp_path) as size:
        found = locate_weights(model="ViT-B-32", pretrained="laion2b_s34b_b79k")
        assert (found.source, found.size) == ("hub", size)
        assert "from the Hugging Face Hub (605 MB)" in found.describe()
        # This hub has no file to give, so the load fails, after saying what it was fetching.
        with pytest.raises(ModelUnavailable):
            Encoder.load(model="ViT-B-32", pretrained="laion2b_s34b_b79k", device="cpu")
    said = [r.getMessage() for r in caplog.records if r.name == "retrieval.encoding.clip"]
    assert said[0] == (
        "downloading the ViT-B-32 weights laion2b_s34b_b79k from the Hugging Face Hub (605 MB); "
        "later starts use the cache"
    )
