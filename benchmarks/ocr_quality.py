"""OCR quality and cost on a generated set: does searching the words of a picture find it?

Reads every picture of `tests.textimages` (made from a seed: English and Chinese, 12-48 px, up to
10 degrees, plain / noisy / photographic backgrounds, memes, terminal screenshots) with
`retrieval.encoding.ocr.OcrEngine` on one thread, then ranks all pictures for each query (2-4
consecutive words of one caption line) by a plain text match of the normalised query against each
picture's normalised text:

- exact: pictures whose text contains the query (what a quoted phrase, FTS5's trigram index or
  ``LIKE`` find), in a stable order; a hit is the picture ranked first among them;
- compact: the same on letters and digits only (`retrieval.encoding.textnorm.compact`), which
  forgives a lost space or a speck read as punctuation;
- fuzzy: all pictures by the share of the query's character trigrams found in their text (what
  ``pg_trgm``'s word similarity ranks by), ties counted against us.

Recall@k: a picture whose caption says the query is among the first k. Printed per script and
font size band for a sweep of confidence thresholds (lines the recognizer is less sure of are
dropped), plus the cost: pictures per second per CPU core (process CPU time, one OCR thread).

    python -m benchmarks.ocr_quality                       # 500 pictures, the default engine
    python -m benchmarks.ocr_quality --images 40           # a quick look
    python -m benchmarks.ocr_quality --detect-side 960 --read-side 960
    python -m benchmarks.ocr_quality --models DIR          # other PP-OCR files (e.g. PP-OCRv4)
    python -m benchmarks.ocr_quality --save out.json / --load out.json   # re-score, no OCR
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.encoding.ocr import (
    BOX_THRESHOLD,
    DETECT_SIDE,
    MIN_CONFIDENCE,
    READ_SIDE,
    OcrEngine,
    OcrModels,
)  # noqa: E402
from retrieval.encoding.textnorm import compact, normalise, normalise_query  # noqa: E402
from tests.textimages import SIZE_BANDS, TextSample, make_set  # noqa: E402

THRESHOLDS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9)


def models_from(directory: Path) -> OcrModels:
    """The PP-OCR files in a folder (say, the models/ of the rapidocr-onnxruntime 1.4 wheel)."""

    def one(pattern: str) -> Path:
        found = sorted(directory.glob(pattern))
        if len(found) != 1:
            raise SystemExit(f"expected one {pattern} in {directory}, found {found}")
        return found[0]

    det = one("*det*.onnx")
    return OcrModels(
        detect=det,
        recognise=one("*rec*.onnx"),
        orientation=one("*cls*.onnx"),
        name=f"{directory.name}/{det.stem}",
    )


def read_all(samples: list[TextSample], engine: OcrEngine) -> dict:
    """OCR every picture once, all lines kept (thresholds are applied when scoring)."""
    engine.load()
    results, wall = [], []
    cpu_start = time.process_time()
    for sample in samples:
        started = time.perf_counter()
        picture = engine.read_bytes(sample.data)
        wall.append(time.perf_counter() - started)
        results.append([[line.text, round(line.confidence, 4)] for line in picture.lines])
    cpu = time.process_time() - cpu_start
    return {
        "model_id": engine.model_id,
        "detect_side": engine.detect_side,
        "read_side": engine.read_side,
        "box_threshold": engine.box_threshold,
        "images": len(samples),
        "cpu_s": cpu,
        "wall_s": sum(wall),
        "wall_p50_s": statistics.median(wall),
        "wall_p95_s": sorted(wall)[int(0.95 * (len(wall) - 1))],
        "lines": results,
    }


def _trigrams(text: str) -> set[str]:
    return {text[i : i + 3] for i in range(len(text) - 2)} or {text}


def _truth(sample: TextSample) -> str:
    return normalise(" ".join(sample.lines))


def score(samples: list[TextSample], read: list[list], threshold: float) -> dict:
    """One confidence threshold.

    ``tally`` maps (script, band, style, background) to [queries, exact@1, exact@5, compact@1,
    compact@5, fuzzy@1, fuzzy@5]; ``junk`` counts kept lines that share under half their
    trigrams with the caption (terminals left out: their other lines are real text), ``kept``
    all kept lines of those pictures; ``precision`` is the share of exact matches that are right.
    """
    docs = [normalise(" ".join(t for t, c in lines if c >= threshold)) for lines in read]
    doc_grams = [_trigrams(d) if d else set() for d in docs]
    truths = [_truth(s) for s in samples]
    kept = junk = matched = right = 0
    for sample, lines, truth in zip(samples, read, truths, strict=True):
        if sample.style == "terminal":
            continue
        truth_grams = _trigrams(truth)
        for text, confidence in lines:
            if confidence >= threshold:
                kept += 1
                grams = _trigrams(text)
                junk += len(grams & truth_grams) < 0.5 * len(grams)
    compacts = [compact(d) for d in docs]
    tally: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0] * 7)
    for sample in samples:
        for query in sample.queries:
            q = normalise_query(query)
            relevant = {i for i, t in enumerate(truths) if q in t}
            exact = [i for i, d in enumerate(docs) if q in d]
            matched += len(exact)
            right += len(relevant.intersection(exact))
            cq = compact(q)
            loose = [i for i, d in enumerate(compacts) if cq in d]
            grams = _trigrams(q)
            fuzzy = [len(grams & g) / len(grams) for g in doc_grams]
            best = max((fuzzy[i] for i in relevant), default=0.0)
            # Pessimistic ties: every other picture scoring as high ranks ahead.
            fuzzy_rank = 1 + sum(1 for i, f in enumerate(fuzzy) if f >= best and i not in relevant)
            ranks = (
                next((r for r, i in enumerate(exact, 1) if i in relevant), None),
                next((r for r, i in enumerate(loose, 1) if i in relevant), None),
                fuzzy_rank if best > 0 else None,
            )
            row = tally[(sample.script, sample.band, sample.style, sample.background)]
            row[0] += 1
            for j, rank in enumerate(ranks):
                row[1 + 2 * j] += rank == 1
                row[2 + 2 * j] += rank is not None and rank <= 5
    return {"tally": tally, "kept": kept, "junk": junk, "precision": right / max(matched, 1)}


def _merge(tally: dict, **match: object) -> list[int]:
    """Sum of the rows matching script=, band=, style=, background= (a value or a tuple)."""
    names = ("script", "band", "style", "background")
    out = [0] * 7
    for key, row in tally.items():
        fields = dict(zip(names, key, strict=True))
        if all(fields[k] in (v if isinstance(v, tuple) else (v,)) for k, v in match.items()):
            out = [a + b for a, b in zip(out, row, strict=True)]
    return out


def _cells(row: list[int]) -> str:
    n = row[0] or 1
    return f"{row[0]:>5}  " + "  ".join(f"{v / n:5.3f}" for v in row[1:])


def report(samples: list[TextSample], run: dict, thresholds: tuple[float, ...]) -> None:
    n = run["images"]
    print(
        f"{run['model_id']}: detect {run['detect_side']} px, read {run['read_side']} px, "
        f"{n} pictures"
    )
    print(
        f"cost: {n / run['cpu_s']:.2f} pictures/s per core (CPU {run['cpu_s']:.1f} s), wall "
        f"p50 {run['wall_p50_s'] * 1000:.0f} ms, p95 {run['wall_p95_s'] * 1000:.0f} ms per picture"
    )
    bands = [f"{lo}-{hi} px" for lo, hi in SIZE_BANDS]
    large = tuple(bands[1:])
    print(
        "threshold | English >=16 px: queries exact@1 @5 compact@1 @5 fuzzy@1 @5 | Chinese >=16"
        " px | all"
        " | exact precision, junk lines / kept"
    )
    scores = {t: score(samples, run["lines"], t) for t in thresholds}
    for t, scored in scores.items():
        tally = scored["tally"]
        print(
            f"  {t:4.2f}   {_cells(_merge(tally, script='latin', band=large))} | "
            f"{_cells(_merge(tally, script='han', band=large))} | {_cells(_merge(tally))} | "
            f"{scored['precision']:.3f}, {scored['junk']}/{scored['kept']}"
        )
    chosen = MIN_CONFIDENCE if MIN_CONFIDENCE in scores else thresholds[0]
    tally = scores[chosen]["tally"]
    print(f"at threshold {chosen}:      queries exact@1 @5 compact@1 @5 fuzzy@1 @5")
    for script in ("latin", "han"):
        for band in bands:
            print(f"  {script:5} {band:9}        {_cells(_merge(tally, script=script, band=band))}")
    print("  English >=16 px by kind:")
    for style in ("plain", "meme", "terminal"):
        for background in ("plain", "noisy", "photo", "terminal"):
            row = _merge(tally, script="latin", band=large, style=style, background=background)
            if row[0]:
                print(f"    {style:8} on {background:8}  {_cells(row)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--detect-side", type=int, default=DETECT_SIDE)
    parser.add_argument("--read-side", type=int, default=READ_SIDE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--box-threshold", type=float, default=BOX_THRESHOLD)
    parser.add_argument("--no-orientation", action="store_true", help="skip the 0/180 classifier")
    parser.add_argument("--models", type=Path, help="a folder of PP-OCR det/rec/cls .onnx files")
    parser.add_argument("--save", type=Path, help="write the OCR output here (JSON)")
    parser.add_argument("--load", type=Path, help="score a saved OCR output; no OCR")
    args = parser.parse_args(argv)

    samples = make_set(seed=args.seed, count=args.images)
    if args.load:
        run = json.loads(args.load.read_text())
        if run["images"] != len(samples):
            raise SystemExit(f"{args.load} has {run['images']} pictures, not {len(samples)}")
    else:
        engine = OcrEngine(
            threads=args.threads,
            detect_side=args.detect_side,
            read_side=args.read_side,
            min_confidence=0.0,
            use_orientation=not args.no_orientation,
            box_threshold=args.box_threshold,
            models=models_from(args.models) if args.models else None,
        )
        run = read_all(samples, engine)
        if args.save:
            args.save.write_text(json.dumps(run, ensure_ascii=False))
    report(samples, run, THRESHOLDS)


if __name__ == "__main__":
    main()
