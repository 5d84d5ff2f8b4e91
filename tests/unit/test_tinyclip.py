"""The committed tiny CLIP model, loaded the way the bot loads a local checkpoint, searches."""

from __future__ import annotations

import pytest
import torch

from tests.tinyclip import CHECKPOINT_PATH, shapes

# Seeds no training or train.py evaluation batch used, so every picture here is new to the model.
TEXT_SEED = 2024
IMAGE_SEED = 2025


@pytest.fixture(scope="module")
def tiny():
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_OFFLINE", "1")
        from tests.tinyclip import evaluate

        model, preprocess, tokenizer = evaluate.load(device="cpu")
    return evaluate, model, preprocess, tokenizer


def test_checkpoint_is_small_float16_and_loads_weights_only():
    assert CHECKPOINT_PATH.stat().st_size < 5_000_000
    state = torch.load(CHECKPOINT_PATH, map_location="cpu", weights_only=True)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}


def test_loaded_as_float32_in_eval_mode(tiny):
    _, model, _, _ = tiny
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # BatchNorm in the image tower: in training mode, results would depend on the batch.
    assert not model.training


def test_captions_find_their_pictures(tiny):
    evaluate, model, preprocess, tokenizer = tiny
    top1 = evaluate.text_to_image_top1(model, preprocess, tokenizer, seed=TEXT_SEED, trials=2)
    assert top1 >= 0.9


def test_drawings_of_one_caption_are_neighbours(tiny):
    evaluate, model, preprocess, _ = tiny
    assert evaluate.image_to_image_top1(model, preprocess, seed=IMAGE_SEED, trials=1) >= 0.75


@torch.no_grad()
def test_embeddings_are_unit_length(tiny):
    evaluate, model, preprocess, tokenizer = tiny
    pictures = torch.stack([preprocess(shapes.draw("red", "circle", rng=seed)) for seed in (1, 2)])
    for vectors in (
        model.encode_image(pictures, normalize=True),
        model.encode_text(tokenizer(["a red circle", "a cat on a sofa"]), normalize=True),
    ):
        assert vectors.shape[1] == 64
        torch.testing.assert_close(vectors.norm(dim=1), torch.ones(2))


def test_pictures_are_deterministic_per_seed():
    picture = shapes.png_bytes(shapes.draw("blue", "star", size=96, rng=7))
    assert picture == shapes.png_bytes(shapes.draw("blue", "star", size=96, rng=7))
    assert picture != shapes.png_bytes(shapes.draw("blue", "star", size=96, rng=8))
    assert shapes.caption("red", "circle") == "a red circle"
    assert len(list(shapes.pairs())) == len(shapes.COLOURS) * len(shapes.SHAPES)
    assert shapes.jpeg_bytes(shapes.draw("red", "circle", rng=1))[:2] == b"\xff\xd8"
