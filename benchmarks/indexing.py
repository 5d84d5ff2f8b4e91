"""Indexing throughput, side by side in one run, same model and images.

1. the seed's way: per image, full PIL decode, open_clip preprocess, encode_image one by one;
2. the encoder alone on pre-decoded tensors at its best batch size (the ceiling);
3. the clipfind pipeline end to end: bytes from a loopback HTTP server → fetch → decode →
   micro-batch → encode → SQLite store, with the event-loop lag measured throughout; twice,
   side by side (A B B A): downloading the originals (FETCH_RESIZED=off) and the copies the
   media proxy makes (on, the default; the server answers the proxy's resize parameters as the
   Discord stand-in does, its copies made before the timing starts). Bytes downloaded per image,
   CPU ms per image by role, and the cores a GPU indexer would need per 1,000 images/s for all
   but the model. `--profile` adds one pass under cProfile on the event loop's thread.

    python -m benchmarks.indexing [--images 48] [--model ViT-B-32] [--mix mixed|photos]
                                  [--precision all|auto|fp32|bf16|fp16] [--device cpu|cuda]

On a CPU "all" measures fp32, bf16 and auto (which times both at load and keeps the faster,
retrieval/encoding/precision.py; whether it picks right is measured side by side by
`python -m benchmarks.precision`). On a GPU (`--device cuda`) the seed way runs there too, and
"all" compares fp32 with fp16.

    python -m benchmarks.indexing --batches 16,32 [--rounds 3] [--precision all|fp32|bf16]

measures only (3) on the copies, at each batch size in turn (A B, B A, ...), each pass beside a
measure of (2): the batch size the whole pipeline runs fastest at, where decoding and the event
loop share the cores with the model ("all": fp32, then bf16, or fp16 on a GPU).

    python -m benchmarks.indexing --baseline REV [--baseline REV2] [--rounds 3] [--precision auto]

measures only (3), the pipeline (`--fetch originals|resized` for all; by default each code's own
way), with this checkout's code and with revision REV's (exported with
``git archive``), each in a fresh process, alternating over the rounds (A B, B A, A B...) so that
what else runs on the machine weighs on all alike; ratios are against the first REV. Each
process warms the model up with one pipeline pass, then measures a second one: images/s, and the
event loop's CPU time per image (``time.thread_time()`` on the loop's thread). Before the durable
jobs table (0a235e8) the pipeline had an in-memory queue; the benchmark adapts (harness.py).

Speed does not depend on weight values, so the model is randomly initialised.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.harness import (  # noqa: E402
    ROOT,
    RoleCpu,
    encode_in_streams,
    export,
    image_server,
    loop_lag,
    percentile,
    refs,
    run_version,
    sqlite_pipeline,
)
from retrieval.encoding.clip import Encoder  # noqa: E402

# (megapixels, format): a mix of phone photos, screenshots and small memes; or phone photos only.
MIXES = {
    "mixed": [(12, "JPEG"), (3, "JPEG"), (1, "JPEG"), (0.3, "JPEG"), (2, "PNG"), (0.5, "PNG")],
    "photos": [(12, "JPEG")],
}


def sample_photos() -> list[Image.Image]:
    import matplotlib
    import skimage

    data = Path(skimage.__file__).parent / "data"
    paths = [
        data / n for n in ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg")
    ]
    paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return [Image.open(p).convert("RGB") for p in paths if p.exists()]


def make_images(count: int, mix: str = "mixed") -> list[tuple[bytes, str]]:
    """Distinct encoded images (no two share bytes, so none is skipped as a repost)."""
    photos = sample_photos()
    out = []
    for i in range(count):
        megapixels, fmt = MIXES[mix][i % len(MIXES[mix])]
        photo = photos[i % len(photos)]
        scale = (megapixels * 1e6 / (photo.width * photo.height)) ** 0.5
        size = (int(photo.width * scale), int(photo.height * scale))
        picture = photo.resize(size, Image.Resampling.BILINEAR)
        # A mark of its own, large enough to outlive the media proxy's copy (a pixel does not:
        # copies of two originals one pixel apart are the same bytes, encoded once).
        side = max(8, size[0] // 48)
        picture.paste((i * 37 % 256, i * 91 % 256, i * 13 % 256), (0, 0, side, side))
        buf = io.BytesIO()
        picture.save(buf, fmt, quality=90) if fmt == "JPEG" else picture.save(buf, fmt)
        out.append((buf.getvalue(), "image/jpeg" if fmt == "JPEG" else "image/png"))
    return out


def seed_way(model: torch.nn.Module, preprocess, images, device: str = "cpu") -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for data, _ in images:
            picture = Image.open(io.BytesIO(data)).convert("RGB")
            pixels = preprocess(picture).unsqueeze(0).to(device)
            model.encode_image(pixels, normalize=True).cpu()  # .cpu() waits for a GPU
    return len(images) / (time.perf_counter() - started)


def ceiling(encoder: Encoder, count: int, sizes: tuple[int, ...] = ()) -> dict[int, float]:
    """Images/s of the encoder alone on pre-decoded pixels, per batch size, run as the pipeline
    runs it: a batch in each of its streams at once (retrieval/encoding/service.py)."""
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(count, 3, encoder.spec.size, encoder.spec.size)).astype(np.float32)
    streams = getattr(encoder, "streams", 1)
    rates = {}
    sizes = sizes or (1, 4, 8, 16, 32) + ((64, 128, 256) if encoder.device.type == "cuda" else ())
    enter = getattr(encoder, "enter_stream", lambda: None)
    for batch in sizes:
        rounds = max(1, count // (batch * streams))
        rates[batch] = encode_in_streams(
            encoder, pixels[:batch], streams, enter=enter, batches=rounds
        )
    return rates


def proxy_urls(encoder: Encoder, base: str, images) -> list[str]:
    """The copies this checkout's pipeline asks the media proxy for; none for older code."""
    try:
        from retrieval.pictures.media_proxy import plan_request
    except ImportError:
        return []
    urls = []
    for i, (data, content_type) in enumerate(images):
        width, height = Image.open(io.BytesIO(data)).size
        plan = plan_request(
            proxy_url=f"{base}/{i}",
            width=width,
            height=height,
            content_type=content_type,
            spec=encoder.spec,
        )
        if plan is not None:
            urls.append(plan.url)
    return urls


class Pass(NamedTuple):
    """One pass of the pipeline over the images."""

    rate: float  # images/s
    lags: list[float]  # the event loop's, ms, sorted
    cpu_ms: dict[str, float]  # CPU ms per image, by role
    served: float  # bytes downloaded per image
    steady: float  # images/s after the first batch was stored


async def pipeline_way(
    encoder: Encoder, images, batch_size: int, *, fetch_resized: bool | None = None, profile=None
) -> Pass:
    """``fetch_resized``: FETCH_RESIZED on or off (None: the code's default); ``profile``: a
    cProfile.Profile enabled on the event loop's thread for the measured part."""
    async with (
        image_server(images) as server,
        sqlite_pipeline(
            encoder, source=server.base, batch_size=batch_size, fetch_resized=fetch_resized
        ) as pipe,
    ):
        if fetch_resized is not False:  # the stand-in's resizing is Discord's work, not ours
            await server.prepare(proxy_urls(encoder, server.base, images))
        served_before = await server.served()
        first: list[tuple[float, int]] = []

        async def first_batch() -> None:
            # The fill (the first batch fetched and decoded while the model waits) is paid once
            # per start; a backfill of thousands of images runs at the rate after it.
            while not pipe.counters.indexed:  # noqa: ASYNC110 (a counter: no event to wait on)
                await asyncio.sleep(0.002)
            first.append((time.perf_counter(), pipe.counters.indexed))

        async with loop_lag() as lags:
            cpu = RoleCpu(server)
            started = time.perf_counter()
            if profile is not None:
                profile.enable()
            watcher = asyncio.create_task(first_batch())
            await pipe.submit(refs(server.base, len(images), images))
            await pipe.join()
            if profile is not None:
                profile.disable()
            ended = time.perf_counter()
            elapsed = ended - started
            watcher.cancel()  # done by now, unless nothing was stored (the assert below says so)
            cpu_ms = cpu.per_image(len(images))
        assert pipe.counters.indexed == len(images), pipe.counters
        served = (await server.served() - served_before) / len(images)
    ((at, stored),) = first
    steady = (len(images) - stored) / (ended - at) if stored < len(images) else math.nan
    return Pass(len(images) / elapsed, lags, cpu_ms, served, steady)


def report_cpu(cpu_ms: dict[str, float], ceiling_rate: float) -> None:
    """Where the pipeline's CPU went, the best any overlap of that work could do here, and the
    cores a GPU indexer would need besides its GPU: everything but the model, per image."""
    if not cpu_ms:
        return
    # The loopback image server stands in for Discord's CDN: its CPU is shown, not counted.
    served_ms = cpu_ms.pop("image server", 0.0)
    parts = ", ".join(f"{role} {ms:.1f}" for role, ms in sorted(cpu_ms.items()) if ms >= 0.05)
    parts += f" (the image server, not counted: {served_ms:.1f})"
    bound = (os.cpu_count() or 1) * 1000 / sum(cpu_ms.values())
    print(f"   CPU ms per image: {parts}")
    print(f"   all cores busy with that work: {bound:.1f} img/s = {bound / ceiling_rate:.2f}x (2)")
    outside = sum(ms for role, ms in cpu_ms.items() if role != "model")
    print(f"   cores per 1,000 img/s outside the model: {outside:.1f}")


FETCHES = {"originals": False, "resized copies": True}


def pass_beside_ceiling(
    encoder: Encoder, images, best_batch: int, batch: int, fetch_resized: bool
) -> tuple[Pass, float]:
    """A measure of (2) at its best batch, then a pass of (3) right after it: on a shared machine
    the ceiling moves with the load, so a pass is read against the one measured beside it."""
    beside = ceiling(encoder, max(len(images), 64), sizes=(best_batch,))[best_batch]
    result = asyncio.run(pipeline_way(encoder, images, batch, fetch_resized=fetch_resized))
    return result, beside


def fetch_side_by_side(encoder: Encoder, images, best_batch: int) -> None:
    """(3) with FETCH_RESIZED off and on, alternating (A B B A) so load weighs on both alike,
    each pass beside a measure of (2)."""
    batch = encoder.default_batch_size
    runs: dict[str, list[tuple[Pass, float]]] = {name: [] for name in FETCHES}
    for name in [*FETCHES, *reversed(FETCHES)]:
        runs[name].append(pass_beside_ceiling(encoder, images, best_batch, batch, FETCHES[name]))
    summary = {}
    everyone = [beside for results in runs.values() for _, beside in results]
    for name, results in runs.items():
        rate = statistics.median(p.rate for p, _ in results)
        ratio = statistics.median(p.rate / beside for p, beside in results)
        steady = statistics.median(p.steady / beside for p, beside in results)
        lags = sorted(lag for p, _ in results for lag in p.lags)
        roles = {role for p, _ in results for role in p.cpu_ms}
        cpu_ms = {
            role: statistics.median(p.cpu_ms.get(role, 0.0) for p, _ in results) for role in roles
        }
        served = statistics.median(p.served for p, _ in results)
        top = statistics.median(beside for _, beside in results)
        summary[name] = (rate, cpu_ms, served)
        print(
            f"3. pipeline end to end, {name}: {rate:6.2f} img/s (batch {batch}) = {ratio:.2f}x "
            f"the ceiling measured beside each pass ({', '.join(f'{b:.1f}' for _, b in results)})"
        )
        print(f"   after the first batch was stored: {steady:.2f}x the ceiling")
        print(against_every_ceiling(results, everyone))
        print(
            f"   {served / 1000:.1f} kB downloaded per image; event-loop lag p99 "
            f"{percentile(lags, 0.99):.1f} ms, max {lags[-1]:.1f} ms"
        )
        report_cpu(cpu_ms, top)
    (rate0, cpu0, bytes0), (rate1, cpu1, bytes1) = summary.values()
    print(
        f"   copies against originals: {bytes0 / bytes1:.1f}x fewer bytes, decode "
        f"{cpu0.get('decode', 0) / max(cpu1.get('decode', 0), 1e-9):.1f}x cheaper, "
        f"event loop {cpu0['event loop'] / cpu1['event loop']:.2f}x cheaper, "
        f"throughput {rate1 / rate0:.2f}x"
    )


def batches_side_by_side(encoder: Encoder, images, best_batch: int, sizes, rounds: int) -> None:
    """(3) on the copies at each batch size in ``sizes``, taking turns (A B, B A, ...) over
    ``rounds``, each pass right after a measure of (2) at its best batch: which batch size the
    whole pipeline runs fastest at, where decoding and the loop share the cores with the model
    (the encoder alone can prefer another)."""
    runs: dict[int, list[tuple[Pass, float]]] = {size: [] for size in sizes}
    for round_ in range(rounds):
        for size in sizes if round_ % 2 == 0 else sizes[::-1]:
            result, beside = pass_beside_ceiling(encoder, images, best_batch, size, True)
            runs[size].append((result, beside))
            print(
                f"   round {round_ + 1}, batch {size:3}: {result.rate:6.2f} img/s = "
                f"{result.rate / beside:.2f}x the ceiling beside it ({beside:.1f}); after the "
                f"first batch {result.steady / beside:.2f}x; CPU ms per image "
                + ", ".join(f"{role} {ms:.1f}" for role, ms in sorted(result.cpu_ms.items())),
                flush=True,
            )
    first = sizes[0]
    everyone = [beside for results in runs.values() for _, beside in results]
    for size, results in runs.items():
        ratio = statistics.median(p.rate / beside for p, beside in results)
        steady = statistics.median(p.steady / beside for p, beside in results)
        against = statistics.median(
            p.rate / q.rate for (p, _), (q, _) in zip(results, runs[first], strict=True)
        )
        print(
            f"3. resized copies, batch {size:3}: {ratio:.2f}x the ceiling (median of "
            f"{rounds}), {steady:.2f}x after the first batch; img/s {against:.3f}x batch {first}'s"
        )
        print(against_every_ceiling(results, everyone))


def against_every_ceiling(results: list[tuple[Pass, float]], everyone: list[float]) -> str:
    """The median pass against the median of every measure of the ceiling in the run. Measures
    of (2) a few seconds apart in one process moved 35 to 41 img/s (benchmarks/RESULTS.md,
    session 28), so the ratio of each pass to the one measure beside it carries that noise."""
    top = statistics.median(everyone)
    rate = statistics.median(p.rate for p, _ in results)
    steady = statistics.median(p.steady for p, _ in results)
    return (
        f"   against the median of all {len(everyone)} measures of the ceiling ({top:.1f} "
        f"img/s): {rate / top:.2f}x, after the first batch {steady / top:.2f}x"
    )


# -- this checkout against a baseline revision ---------------------------------------------------


def measure_version(args: argparse.Namespace) -> dict:
    """One process's measurement of (3): a warm-up pass, then the measured one."""
    import retrieval

    # Only when asked: a revision before CLIP_STREAMS takes no ``streams``.
    streams = {"streams": args.streams} if args.streams else {}
    encoder = Encoder.load(
        model=args.model, pretrained=None, device=args.device, precision=args.precision, **streams
    )
    images = make_images(args.images, args.mix)
    batch = encoder.default_batch_size
    fetch = {"default": None, "originals": False, "resized": True}[args.fetch]
    warm = images[: batch * 2]  # every batch shape once
    asyncio.run(pipeline_way(encoder, warm, batch, fetch_resized=fetch))
    measured = asyncio.run(pipeline_way(encoder, images, batch, fetch_resized=fetch))
    return {
        "bytes": measured.served,
        "code": str(Path(retrieval.__file__).parent.parent),
        "precision": encoder.precision,
        "batch": batch,
        "rate": measured.rate,
        "cpu_ms": measured.cpu_ms,
        "lag_p99": percentile(measured.lags, 0.99),
        "lag_max": measured.lags[-1],
    }


def compare(args: argparse.Namespace) -> None:
    options = [
        "--measure",
        f"--images={args.images}",
        f"--model={args.model}",
        f"--mix={args.mix}",
        f"--device={args.device}",
        f"--precision={'auto' if args.precision == 'all' else args.precision}",
        f"--fetch={args.fetch}",
        *([f"--streams={args.streams}"] if args.streams else []),
    ]
    tmp = Path(tempfile.mkdtemp(prefix="clipfind-indexing-", dir="/tmp"))
    try:
        versions = {
            revision: export(revision, tmp / f"baseline{i}")
            for i, revision in enumerate(args.baseline)
        }
        versions["this checkout"] = ROOT
        runs: dict[str, list[dict]] = {name: [] for name in versions}
        names = list(versions)
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                result = run_version(versions[name], "benchmarks.indexing", options)
                runs[name].append(result)
                print(
                    f"round {round_ + 1} {name:>16}: {result['rate']:6.2f} img/s, event loop "
                    f"{result['cpu_ms']['event loop']:.2f} ms/img, lag p99 "
                    f"{result['lag_p99']:.1f} max {result['lag_max']:.1f} ms",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report_comparison(args, runs)


def report_comparison(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    first = next(iter(runs.values()))[0]
    # Each version runs at its own code's default batch, which can differ between them.
    batches = {name: results[0]["batch"] for name, results in runs.items()}
    batch = (
        f"batch {first['batch']}"
        if len(set(batches.values())) == 1
        else "batches " + ", ".join(f"{b} ({name})" for name, b in batches.items())
    )
    print(
        f"\n{args.model} (random init), {args.images} images ({args.mix}), {first['precision']}, "
        f"{batch}{f', CLIP_STREAMS={args.streams}' if args.streams else ''}, {args.rounds} "
        "rounds; medians (min–max); ratio: this checkout "
        f"/ {args.baseline[0]}, the median of each round's ratio (the two ran back to back)"
    )
    roles = sorted({role for results in runs.values() for r in results for role in r["cpu_ms"]})

    def cell(values: list[float], digits: int) -> str:
        low, mid, high = (
            f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values))
        )
        return f"{mid} ({low}–{high})"

    rows = {"pipeline img/s": lambda r: r["rate"], "kB downloaded/img": lambda r: r["bytes"] / 1000}
    for role in roles:
        rows[f"CPU ms/img, {role}"] = lambda r, x=role: r["cpu_ms"].get(x, 0.0)
    names = list(runs)
    print(f"{'':28}" + "".join(f"{name:>26}" for name in names) + f"{'ratio':>8}")
    for label, value in rows.items():
        columns = [[value(r) for r in runs[name]] for name in names]
        digits = 2 if label.startswith("pipeline") or "event loop" in label else 1
        pairs = zip(columns[-1], columns[0], strict=True)
        ratios = [this / base for this, base in pairs if base]
        ratio = f"{statistics.median(ratios):.3f}" if ratios else ""
        print(f"{label:28}" + "".join(f"{cell(c, digits):>26}" for c in columns) + f"{ratio:>8}")
    for name, results in runs.items():
        print(f"{name}: {results[0]['code']}")


def profile_loop(encoder: Encoder, images, top: int = 25) -> None:
    """One pass with resized copies under cProfile on the event loop's thread: where the loop's
    time per image goes."""
    import cProfile
    import pstats

    profile = cProfile.Profile(time.thread_time)  # CPU time: waiting in epoll is not work
    asyncio.run(
        pipeline_way(
            encoder, images, encoder.default_batch_size, fetch_resized=True, profile=profile
        )
    )
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    print(f"   the event loop's thread, resized copies ({len(images)} images), by own time:")
    stats.sort_stats("tottime").print_stats(top)
    print(_indented(out))
    print("   and clipfind's own functions, by time including what they call:")
    stats.sort_stats("cumulative").print_stats(r"retrieval/", top)
    print(_indented(out))


def _indented(out: io.StringIO) -> str:
    text = out.getvalue()
    out.seek(0)
    out.truncate()
    # The header repeats the totals; keep the table.
    return "\n".join("   " + line for line in text.splitlines() if line.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--mix", choices=sorted(MIXES), default="mixed")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to check a GPU")
    parser.add_argument(
        "--precision",
        choices=("all", "auto", "fp32", "bf16", "fp16"),
        default="all",
        help="clipfind's encoder; 'all' measures fp32, bf16 and auto side by side",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        help="a git revision: measure only the pipeline, side by side with it (repeatable)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --baseline or --batches")
    parser.add_argument(
        "--fetch",
        choices=("default", "originals", "resized"),
        default="default",
        help="with --baseline: FETCH_RESIZED off or on for every revision (default: each code's "
        "own default; an older revision knows only originals)",
    )
    parser.add_argument(
        "--streams",
        type=int,
        help="with --baseline: the encoder's CLIP_STREAMS for every revision (default: its own)",
    )
    parser.add_argument(
        "--batches",
        help="only (3) on the copies, at each of these batch sizes side by side: e.g. 16,32",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile the event loop over one pass"
    )
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.measure:
        print(json.dumps(measure_version(args)))
        return
    if args.baseline:
        compare(args)
        return
    images = make_images(args.images, args.mix)
    sizes = [Image.open(io.BytesIO(data)).size for data, _ in images]
    megapixels = sum(w * h for w, h in sizes) / 1e6 / len(images)
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {os.cpu_count()} cores, torch {torch.__version__}")
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(torch.device(args.device))}")
    print(f"{args.model} (random init), {len(images)} images, {megapixels:.1f} MP average")
    if args.batches:
        by_batch(args, images)
        return
    import open_clip

    # The seed's own model: open_clip's defaults (fp32), whatever clipfind's encoder uses.
    seed_model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=None)
    seed_model.eval().to(args.device)
    seed_way(seed_model, preprocess, images[:2], args.device)  # warm-up
    seed = seed_way(seed_model, preprocess, images, args.device)
    del seed_model
    print(f"1. seed way (fp32, one by one, full decode): {seed:6.2f} img/s")
    # On a CPU "all" adds "auto": which of the two it picks, and what that is worth.
    for precision in precisions_of(args, with_auto=True):
        started = time.perf_counter()
        encoder = Encoder.load(
            model=args.model, pretrained=None, device=args.device, precision=precision
        )
        if encoder.calibration is not None:
            print(
                f"auto: {encoder.calibration.describe()}; loading took "
                f"{time.perf_counter() - started:.1f} s with the calibration"
            )
        rates = ceiling(encoder, max(len(images), 512 if encoder.device.type == "cuda" else 64))
        best_batch = max(rates, key=rates.get)
        top = rates[best_batch]
        print(f"clipfind encoder in {encoder.precision} on {encoder.device}{in_streams(encoder)}:")
        print(f"2. encoder ceiling (batch {best_batch}):        {top:6.2f} img/s")
        print("   by batch size: " + ", ".join(f"{b}: {r:.1f}" for b, r in rates.items()))
        fetch_side_by_side(encoder, images, best_batch)
        if args.profile:
            profile_loop(encoder, images)
        del encoder


def in_streams(encoder: Encoder) -> str:
    streams = getattr(encoder, "streams", 1)
    if streams == 1:
        return ""
    return f", {streams} streams of {encoder.threads_per_stream} thread(s), batches per stream"


def precisions_of(args: argparse.Namespace, *, with_auto: bool) -> list[str]:
    """The precisions ``--precision`` names: "all" is fp32 and the device's half precision
    (fp16 on a GPU, bf16 on a CPU, there with "auto" too when ``with_auto``)."""
    if args.precision != "all":
        return [args.precision]
    if args.device.startswith("cuda"):
        return ["fp32", "fp16"]
    return ["fp32", "bf16", "auto"] if with_auto else ["fp32", "bf16"]


def by_batch(args: argparse.Namespace, images) -> None:
    sizes = [int(size) for size in args.batches.split(",")]
    for precision in precisions_of(args, with_auto=False):
        encoder = Encoder.load(
            model=args.model, pretrained=None, device=args.device, precision=precision
        )
        rates = ceiling(encoder, max(len(images), 64), sizes=tuple(sorted(set(sizes))))
        best_batch = max(rates, key=rates.get)
        print(f"clipfind encoder in {encoder.precision} on {encoder.device}{in_streams(encoder)}:")
        by_size = ", ".join(f"{b}: {r:.1f}" for b, r in rates.items())
        print(f"2. encoder ceiling by batch size: {by_size}")
        asyncio.run(pipeline_way(encoder, images[: max(sizes) * 2], sizes[0], fetch_resized=True))
        batches_side_by_side(encoder, images, best_batch, sizes, args.rounds)
        del encoder


if __name__ == "__main__":
    main()
