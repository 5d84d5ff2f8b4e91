"""Train the tiny CLIP model on generated shapes: `python -m tests.tinyclip.train`.

The image tower is open_clip's ModifiedResNet (the RN50 family, scaled down) rather than a ViT:
a 3-layer ViT learned colours but not shapes in the time budget (held-out top-1 0.43 after
300 steps), while convolutions get shapes almost at once. Width 12 keeps the float16 file
under 5 MB next to the 49408-token embedding.

Same command, same weights (on the same machine and torch build): every seed is fixed,
each batch is drawn from its own seed, and torch runs deterministic kernels.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from tests.tinyclip import CHECKPOINT_PATH, evaluate

GROUPS = 2  # each group holds every class once, so no caption appears twice in a softmax
LR = 2e-3
WARMUP = 30
EVAL_SEED = 10_000  # far from the training seeds, so the held-out pictures are new ones


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(CHECKPOINT_PATH))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    model, preprocess, tokenizer = evaluate.load(checkpoint=None)
    model.train()
    tokens = tokenizer(evaluate.CAPTIONS)

    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, args.steps))
    # One worker draws pictures while the main process trains: drawing is single-threaded Python.
    batches = DataLoader(
        _Batches(preprocess, args.seed, args.steps), batch_size=None, num_workers=1
    )
    started = time.monotonic()
    for step, (images, labels) in enumerate(batches):
        loss = _clip_loss(model, images, labels, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():  # as open_clip's trainer does: a temperature past 100 destabilises
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  {time.monotonic() - started:5.1f}s")

    model.eval()
    t2i = evaluate.text_to_image_top1(model, preprocess, tokenizer, seed=EVAL_SEED, trials=8)
    i2i = evaluate.image_to_image_top1(model, preprocess, seed=EVAL_SEED + 1, trials=4)
    print(f"held-out text->image top-1 {t2i:.3f}  image->image top-1 {i2i:.3f}")
    # float16 halves the file; BatchNorm's integer step counters stay as they are.
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, args.out)
    print(f"wrote {args.out} after {time.monotonic() - started:.1f}s")


class _Batches(Dataset):
    def __init__(self, preprocess, seed: int, steps: int) -> None:
        self.preprocess, self.seed, self.steps = preprocess, seed, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        # One generator per (seed, step): a batch never depends on which process drew it.
        rng = np.random.default_rng([self.seed, step])
        n = len(evaluate.CLASSES)
        labels = torch.from_numpy(np.concatenate([rng.permutation(n) for _ in range(GROUPS)]))
        pictures = [evaluate.sample(*evaluate.CLASSES[i], rng) for i in labels.tolist()]
        return torch.stack([self.preprocess(p) for p in pictures]), labels


def _clip_loss(
    model, images: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE within each group, at the model's own learned temperature."""
    image_features = model.encode_image(images, normalize=True)
    text_features = model.encode_text(tokens, normalize=True)
    n = len(evaluate.CLASSES)
    target = torch.arange(n)
    losses = []
    for group in range(GROUPS):
        rows = slice(group * n, (group + 1) * n)
        logits = model.logit_scale.exp() * image_features[rows] @ text_features[labels[rows]].T
        losses.append((F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2)
    return torch.stack(losses).mean()


def _lr_factor(step: int, total: int) -> float:
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / max(1, total - WARMUP)))


if __name__ == "__main__":
    main()
