"""Hybrid /find's fusion on pictures whose look and whose words both matter: is reciprocal rank
fusion's constant (and a weight for the text side) worth tuning?

The set (made from a seed): each picture one of the tiny model's 30 shape classes
(tests/tinyclip/shapes.py) drawn at 192 px, with a three-word caption in DejaVu Sans 18 px on a
light band along its top. Caption words come from 40 words of tests/textimages.py, so each word is
said by many pictures and a two-word query by a few; a tenth of the captions name a whole look
("... red circle") and a fifth a part of one ("red"): where a description and a caption collide.

Each picture is read by the real OCR engine (``--save``/``--load`` keep what it read) and encoded
by the tiny CLIP model through the product's code. Each query is then ranked as /find ranks it
(`retrieval.search.pager.Question.search`): CLIP's best ``CANDIDATES`` by cosine, the text side's
newest ``CANDIDATES`` pictures whose text holds every word (the store's `words_matching`), ordered
by `text_ranking`, fused. Three kinds of query:

- look: "a red circle" for each class; relevant: the pictures of that class;
- words: two consecutive words of one caption; relevant: the pictures whose caption says them;
- both: "red circle" and one caption word ("red circle deploy"); relevant: the pictures of that
  class whose caption holds the word.

Printed per kind: hit@1 (the first result is relevant), precision@5 and MRR, for CLIP alone and
for fusion at each constant and text weight.

    python -m benchmarks.fusion [--images 300] [--save read.json | --load read.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.encoding.clip import Encoder  # noqa: E402
from retrieval.encoding.ocr import OcrEngine  # noqa: E402
from retrieval.encoding.textnorm import normalise  # noqa: E402
from retrieval.pictures.images import prepare  # noqa: E402
from retrieval.search.pager import CANDIDATES  # noqa: E402
from retrieval.search.words import RRF_K, fuse, parse_words, text_ranking  # noqa: E402
from retrieval.store.base import SearchHit  # noqa: E402
from tests.textimages import WORDS, load_font  # noqa: E402
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH  # noqa: E402
from tests.tinyclip.shapes import COLOURS, SHAPES, draw, pairs  # noqa: E402

SIDE, BAND, FONT_SIZE = 192, 30, 18
CONSTANTS = (1, 10, 30, RRF_K, 200)
TEXT_WEIGHTS = (0.5, 1.0, 1.5, 2.0, 4.0)
START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Picture:
    colour: str
    shape: str
    caption: tuple[str, ...]
    data: bytes


def make_pictures(count: int, seed: int) -> list[Picture]:
    rng = random.Random(seed)
    vocabulary = rng.sample(WORDS, 40)
    names = [*COLOURS, *SHAPES]
    font = load_font("dejavu-sans", FONT_SIZE)
    pictures = []
    for i in range(count):
        colour, shape = rng.choice(list(pairs()))
        words = rng.sample(vocabulary, 3)
        roll = rng.random()
        if roll < 0.1:  # a caption naming a whole look: "... red circle"
            at = rng.randrange(2)
            words[at : at + 2] = rng.choice(list(pairs()))
        elif roll < 0.3:  # or a part of one
            words[rng.randrange(3)] = rng.choice(names)
        image = draw(colour, shape, size=SIDE, rng=seed * 100_000 + i)
        pen = ImageDraw.Draw(image)
        pen.rectangle((0, 0, SIDE, BAND), fill=(245, 245, 240))
        pen.text((6, 5), " ".join(words), font=font, fill=(20, 20, 20))
        out = io.BytesIO()
        image.save(out, "PNG")
        pictures.append(Picture(colour, shape, tuple(words), out.getvalue()))
    return pictures


def queries(pictures: Sequence[Picture], seed: int) -> list[tuple[str, str, set[int]]]:
    """(kind, query, the indexes of the relevant pictures)."""
    rng = random.Random(seed + 1)
    asked: list[tuple[str, str, set[int]]] = []
    for colour, shape in pairs():
        relevant = {i for i, p in enumerate(pictures) if (p.colour, p.shape) == (colour, shape)}
        if relevant:
            asked.append(("look", f"a {colour} {shape}", relevant))
    for _ in range(60):
        p = rng.choice(pictures)
        at = rng.randrange(2)
        pair = p.caption[at : at + 2]
        relevant = {
            i for i, q in enumerate(pictures) if any(q.caption[j : j + 2] == pair for j in range(2))
        }
        asked.append(("words", " ".join(pair), relevant))
    for _ in range(60):
        p = rng.choice(pictures)
        word = rng.choice(p.caption)
        relevant = {
            i
            for i, q in enumerate(pictures)
            if (q.colour, q.shape) == (p.colour, p.shape) and word in q.caption
        }
        asked.append(("both", f"{p.colour} {p.shape} {word}", relevant))
    return asked


def hit(row_id: int, score: float, says: str = "") -> SearchHit:
    # Newest first for the text side's ties: row ids grow with time, as in the store.
    return SearchHit(
        row_id=row_id,
        score=score,
        guild_id=1,
        channel_id=1,
        message_id=row_id,
        image_key=0,
        kind="attachment",
        author_id=1,
        posted_at=START + timedelta(minutes=row_id),
        filename="f.png",
        source_url="",
        content_type="image/png",
        says=says,
    )


Fusion = Callable[[list[SearchHit], list[SearchHit]], list[SearchHit]]


def fusing(constant: int, text_weight: float) -> Fusion:
    return lambda clip, text: fuse(clip, text, k=constant, text_weight=text_weight)


@dataclasses.dataclass(frozen=True)
class Sides:
    """What the two sides of one query found, before any fusion."""

    clip: list[SearchHit]
    text: list[SearchHit]  # ordered by `text_ranking`; empty for a query with no words to read

    def ranked(self, fusion: Fusion | None) -> list[int]:
        if fusion is None:
            return [h.row_id for h in self.clip]
        return [h.row_id for h in fusion(self.clip, self.text)]


def sides(query: str, encoder: Encoder, images: np.ndarray, read: Sequence[str]) -> Sides:
    words = parse_words(query)
    cosine = images @ encoder.encode_texts([words.clip_text or query])[0]
    clip = [hit(int(i), float(cosine[i])) for i in np.argsort(-cosine)[:CANDIDATES]]
    if not words.looked_for:
        return Sides(clip, [])
    holding = [i for i, text in enumerate(read) if all(word in text for word in words.looked_for)]
    text_side = [hit(i, 0.0, read[i]) for i in sorted(holding, reverse=True)[:CANDIDATES]]
    return Sides(clip, text_ranking(text_side, words))


def scores(ranked: list[int], relevant: set[int]) -> tuple[float, float, float]:
    first = next((r for r, i in enumerate(ranked, 1) if i in relevant), None)
    return (
        float(bool(ranked) and ranked[0] in relevant),
        sum(i in relevant for i in ranked[:5]) / min(5, len(relevant)),
        1.0 / first if first else 0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--save", type=Path, help="keep what OCR read, to re-score with --load")
    parser.add_argument("--load", type=Path, help="what an earlier run's OCR read")
    args = parser.parse_args()

    pictures = make_pictures(args.images, args.seed)
    if args.load:
        read = json.loads(args.load.read_text())
    else:
        engine = OcrEngine(threads=1)
        started = time.process_time()
        read = [normalise(" ".join(engine.read_bytes(p.data).text.split())) for p in pictures]
        print(f"read {len(read)} pictures in {time.process_time() - started:.0f} s of CPU")
    if args.save:
        args.save.write_text(json.dumps(read))
    said = sum(
        normalise(" ".join(p.caption)) == text for p, text in zip(pictures, read, strict=True)
    )
    print(f"captions read exactly: {said}/{len(pictures)}")

    encoder = Encoder.load(model=str(CONFIG_PATH), pretrained=str(CHECKPOINT_PATH), device="cpu")
    images = np.concatenate(
        [
            encoder.encode_images(np.stack([prepare(p.data, encoder.spec) for p in batch]))
            for batch in (pictures[i : i + 64] for i in range(0, len(pictures), 64))
        ]
    )
    asked = [
        (kind, sides(query, encoder, images, read), relevant)
        for kind, query, relevant in queries(pictures, args.seed)
    ]
    kinds = ("look", "words", "both")
    print(f"queries: {', '.join(f'{sum(k == a[0] for a in asked)} {k}' for k in kinds)}")
    variants: list[tuple[str, Fusion | None]] = [("clip alone", None)]
    variants += [(f"rrf k={c}", fusing(c, 1.0)) for c in CONSTANTS]
    variants += [(f"rrf k={RRF_K} text x{w}", fusing(RRF_K, w)) for w in TEXT_WEIGHTS if w != 1.0]
    print(f"{'':22}" + "".join(f"{k:>22}" for k in kinds))
    print(f"{'':22}" + "   hit@1   p@5    MRR" * len(kinds))
    for name, fusion in variants:
        row = f"{name:22}"
        for kind in kinds:
            got = [scores(s.ranked(fusion), relevant) for k, s, relevant in asked if k == kind]
            row += "".join(f"{np.mean([g[m] for g in got]):7.3f}" for m in range(3)) + " "
        print(row)


if __name__ == "__main__":
    main()
