"""Load the tiny model the bot's way, and score it on freshly drawn, seeded pictures."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import open_clip
import torch
from PIL import Image

from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH, MODEL_NAME, shapes

Preprocess = Callable[[Image.Image], torch.Tensor]
CLASSES = list(shapes.pairs())
CAPTIONS = [shapes.caption(colour, shape) for colour, shape in CLASSES]


def load(*, checkpoint: str | None = str(CHECKPOINT_PATH), device: str = "cpu"):
    """(model, val preprocess, tokenizer), through add_model_config + create_model_and_transforms.

    `checkpoint=None` gives the random initialisation that training starts from.
    """
    open_clip.add_model_config(CONFIG_PATH)
    model, _, preprocess = open_clip.create_model_and_transforms(
        MODEL_NAME, pretrained=checkpoint, device=device
    )
    # create_model_and_transforms leaves the model in training mode.
    return model.eval(), preprocess, open_clip.get_tokenizer(MODEL_NAME)


def sample(colour: str, shape: str, rng: np.random.Generator) -> Image.Image:
    """A picture as tests post it: any size from 96 to 160 px, PNG or JPEG."""
    img = shapes.draw(colour, shape, size=int(rng.integers(96, 161)), rng=rng)
    if rng.random() < 0.5:
        img = Image.open(io.BytesIO(shapes.jpeg_bytes(img, quality=int(rng.integers(70, 96)))))
    return img


@torch.no_grad()
def text_to_image_top1(
    model, preprocess: Preprocess, tokenizer, *, seed: int, trials: int = 4
) -> float:
    """How often a caption's own picture ranks first among one fresh picture per class."""
    text = model.encode_text(tokenizer(CAPTIONS), normalize=True)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        images = _encode(model, preprocess, [sample(c, s, rng) for c, s in CLASSES])
        best = (text @ images.T).argmax(dim=1)
        hits += int((best == torch.arange(len(CLASSES))).sum())
    return hits / (trials * len(CLASSES))


@torch.no_grad()
def image_to_image_top1(model, preprocess: Preprocess, *, seed: int, trials: int = 2) -> float:
    """How often a picture's nearest other picture is the other drawing of its caption."""
    rng = np.random.default_rng(seed)
    pairs = torch.arange(len(CLASSES)).repeat(2)
    hits = 0
    for _ in range(trials):
        pictures = [sample(c, s, rng) for _ in range(2) for c, s in CLASSES]
        images = _encode(model, preprocess, pictures)
        similarity = (images @ images.T).fill_diagonal_(-2.0)
        hits += int((pairs[similarity.argmax(dim=1)] == pairs).sum())
    return hits / (trials * len(pairs))


def _encode(model, preprocess: Preprocess, pictures: list[Image.Image]) -> torch.Tensor:
    return model.encode_image(torch.stack([preprocess(p) for p in pictures]), normalize=True)
