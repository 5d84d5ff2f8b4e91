"""Which number format runs the model fastest on this machine: measured once, then remembered.

A CPU flag says whether bf16 is native, not whether it is faster. On CPUs of one kind (AVX-512
BF16, no AMX) bf16 encoded ViT-B-32 2.2x faster than fp32 on one machine and 38% slower on
another. So on a CPU with native bf16, `CLIP_PRECISION=auto` times a few batches of each at
start (retrieval/encoding/clip.py runs them) and keeps the faster; the answer is stored in a small
JSON file under the cache directory, keyed by what decides it (CPU model and flags, threads,
torch version, model, batch size), so later starts of the same setup skip the measurement.

Pure: the caller passes the function that encodes one batch, and the clock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_FILE = "precision.json"
_FORMAT = 1  # of the cache file; another one is ignored (and replaced)
_KEEP = 32  # entries kept in the file, the most recent first


@dataclass(frozen=True)
class CalibrationKey:
    """What decides which precision is faster; another value means measure again."""

    cpu: str  # the CPU's model name
    cpu_flags: str  # a digest of its feature flags
    threads: int  # torch's intra-op threads
    torch: str
    model_id: str
    batch_size: int

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Calibration:
    """The precision chosen, and the seconds per batch each took."""

    choice: str
    seconds: dict[str, float]
    batch_size: int
    measured_at: str  # ISO time
    cached: bool = False  # read back from the cache file rather than measured now

    def describe(self) -> str:
        figures = ", ".join(
            f"{name} {1000 * s / self.batch_size:.1f} ms/image" for name, s in self.seconds.items()
        )
        how = f"measured {self.measured_at}, cached" if self.cached else "measured now"
        return f"{self.choice} ({figures} at batch {self.batch_size}; {how})"


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, str]:
    """(model name, digest of the flags) of the first CPU; ("unknown", "") off Linux."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return "unknown", ""
    name, flags = "unknown", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "CPU part") and name == "unknown":
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = hashlib.sha256(" ".join(sorted(value.split())).encode()).hexdigest()[:16]
        if not line.strip() and flags:  # the first processor's block is enough
            break
    return name, flags


def time_batches(
    run: Callable[[str], object],
    *,
    precisions: Sequence[str],
    batches: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Seconds per batch of each precision: the best of `batches` runs each.

    One warm-up batch each first, not counted (first calls allocate and pick kernels). Then the
    precisions take turns, a b a b a b: the best run of each is what the machine does when
    nothing else gets in the way, and a burst of load from elsewhere would have to last through
    all of one precision's turns, spread over the whole measurement, to decide it. (With only
    two turns each, or with a b b a, one burst of a second or two on a shared machine made the
    slower precision win.)
    """
    for precision in precisions:
        run(precision)
    best = {precision: float("inf") for precision in precisions}
    for _ in range(batches):
        for precision in precisions:
            started = clock()
            run(precision)
            best[precision] = min(best[precision], clock() - started)
    return best


def fastest(seconds: Mapping[str, float]) -> str:
    """The precision of the fewest seconds; a tie goes to the first (the exact one)."""
    return min(seconds, key=lambda precision: seconds[precision])


class CalibrationCache:
    """Calibrations by key in one JSON file; a file that cannot be read or written costs a new
    measurement at the next start, never the start itself."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def get(self, key: CalibrationKey) -> Calibration | None:
        entry = self._entries().get(key.digest())
        if entry is None or entry.get("key") != asdict(key):
            return None
        try:
            return Calibration(
                choice=str(entry["choice"]),
                seconds={str(k): float(v) for k, v in entry["seconds"].items()},
                batch_size=key.batch_size,
                measured_at=str(entry["measured_at"]),
                cached=True,
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def put(self, key: CalibrationKey, calibration: Calibration) -> None:
        if self.path is None:
            return
        entries = self._entries()
        entries[key.digest()] = {
            "key": asdict(key),
            "choice": calibration.choice,
            "seconds": calibration.seconds,
            "measured_at": calibration.measured_at,
        }
        newest = sorted(entries.items(), key=lambda kv: str(kv[1].get("measured_at")), reverse=True)
        text = json.dumps({"format": _FORMAT, "entries": dict(newest[:_KEEP])}, indent=1)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".precision-", suffix=".json")
        except OSError as exc:
            log.warning("could not save the precision calibration to %s: %s", self.path, exc)
            return
        try:
            # Written whole, then renamed: a process killed half way leaves the old file.
            with os.fdopen(fd, "w") as out:
                out.write(text)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            log.warning("could not save the precision calibration to %s: %s", self.path, exc)

    def _entries(self) -> dict[str, dict]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring the precision cache %s: %s", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            return {}
        entries = data.get("entries")
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, dict)}


def calibrate(
    *,
    key: CalibrationKey,
    cache: CalibrationCache,
    run: Callable[[str], object],
    precisions: Sequence[str] = ("fp32", "bf16"),
    batches: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> Calibration:
    """The cached calibration for `key`, or a new one measured with `run` (and cached)."""
    cached = cache.get(key)
    if cached is not None and cached.choice in precisions:
        return cached
    seconds = time_batches(run, precisions=precisions, batches=batches, clock=clock)
    calibration = Calibration(
        choice=fastest(seconds),
        seconds=seconds,
        batch_size=key.batch_size,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    cache.put(key, calibration)
    return calibration
