"""What a soak found (`benchmarks/soak.py`): the figures it prints and the promises it checks."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import percentile
from benchmarks.soak_cluster import Role
from benchmarks.soak_load import Load

MEMORY_GROWTH = 0.10  # what "flat after the warm-up" allows


@dataclass
class Options:
    minutes: float = 30.0
    rate: float = 3.0  # member actions per second
    hostile: float = 0.01  # share of posts that are hostile inputs
    postgres_every_s: float = 240.0
    postgres_down_s: float = 5.0
    kill_every_s: float = 150.0
    kill_down_s: float = 3.0
    # Chaos the run must have seen before its load ends, however slow the machine: the load goes
    # on past ``minutes`` (at most ``overtime_s``) until it has.
    least_postgres_restarts: int = 0
    least_kills: int = 0
    overtime_s: float = 300.0
    # Share of the load time before memory is compared: the gateway's caches fill for a quarter
    # of an hour (answers' buttons live 14 minutes, discord.py keeps the last 1,000 messages).
    warmup: float = 0.5
    servers: int = 2
    members: int = 8
    seed: int = 1
    sample_s: float = 5.0
    drain_s: float = 300.0
    workdir: Path | None = None


@dataclass
class Report:
    options: Options
    started: float = 0.0  # monotonic time the load began
    load_s: float = 0.0
    drain_s: float = 0.0  # from the end of the load to the checks passing (or giving up)
    posted: int = 0
    stored: int = 0
    lost: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)
    unfindable: list[str] = field(default_factory=list)
    due_jobs: int = 0
    later_jobs: int = 0
    most_jobs: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # index_failures, by reason
    # MB after the warm-up and at the end, of each process that lives throughout
    memory: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    roles: list[Role] = field(default_factory=list)
    stops: dict[str, tuple[int, float]] = field(default_factory=dict)
    died: list[str] = field(default_factory=list)
    unhandled: Counter[str] = field(default_factory=Counter)
    postgres_restarts: int = 0
    load: Load | None = None
    loadavg: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())
    workdir: Path | None = None

    def failures(self) -> list[str]:
        """The promises that did not hold, one line each; empty when all did."""
        tally = self.load.tally
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} good images lost: {self.lost[:5]}")
        if self.forbidden:
            found.append(f"{len(self.forbidden)} forbidden rows stored: {self.forbidden[:5]}")
        if self.unfindable:
            found.append(f"{len(self.unfindable)} stored images not found: {self.unfindable[:5]}")
        if self.due_jobs:
            found.append(f"queue not drained: {self.due_jobs} jobs due")
        for name, figures in self.memory.items():
            if figures is None:
                found.append(f"{name}'s memory was not sampled after the warm-up")
            elif figures[1] > figures[0] * (1 + MEMORY_GROWTH):
                before, after = figures
                found.append(f"{name}'s memory grew {after / before - 1:.0%} after the warm-up")
        for role in self.roles:
            if role.unhealthy:
                found.append(
                    f"{role.name} was unhealthy {len(role.unhealthy)} times: {role.unhealthy[:3]}"
                )
        found += [f"{d} during the soak" for d in self.died]
        if self.unhandled:
            found.append(f"errors nothing handled: {dict(self.unhandled)}")
        found += [
            f"{name} stopped with {status}"
            for name, (status, _) in self.stops.items()
            if status != 0
        ]
        if tally.shown_forbidden:
            found.append(f"searches showed what they must not: {tally.shown_forbidden[:5]}")
        found += tally.privacy_failures
        return found


def print_report(report: Report) -> None:
    o, tally = report.options, report.load.tally
    print(
        f"soak: {report.load_s / 60:.1f} min of load on PostgreSQL, 1 gateway "
        f"(ENCODE_IMAGES=false) + 2 workers, tiny model; {o.rate:g} actions/s, "
        f"{o.hostile:.0%} hostile, seed {o.seed}; {os.cpu_count()} cores"
    )
    print(
        f"load average (1, 5, 15 min) at start {_loads(report.loadavg[0])}, "
        f"at end {_loads(report.loadavg[1])}"
    )
    print(
        f"chaos: PostgreSQL restarted {report.postgres_restarts} times (down "
        f"{o.postgres_down_s:g} s each, fast stop and crash in turn); worker-b killed "
        f"{len(report.roles[2].lives) - 1} times (SIGKILL, back after {o.kill_down_s:g} s)"
    )
    print("actions: " + ", ".join(f"{k} {n}" for k, n in sorted(tally.actions.items())))
    print(
        f"pictures posted {report.posted}, stored at the end {report.stored}: "
        f"{report.posted / report.load_s:.2f}/s posted; queue at most {report.most_jobs} "
        f"jobs; drained {report.drain_s:.0f} s after the load ended"
    )
    stored = {role.name: role.stored for role in report.roles}
    encoded_s = report.load_s + report.drain_s
    print(
        f"images stored by process (each life's /metrics): {stored}; "
        f"{sum(stored.values()) / encoded_s:.2f}/s over the load and the drain"
    )
    if tally.find_s:
        seconds = sorted(tally.find_s)
        print(
            f"/find answered with results {len(seconds)} times: p50 "
            f"{percentile(seconds, 0.5):.2f} s, p95 {percentile(seconds, 0.95):.2f} s"
        )
    print(f"/find other answers: {dict(tally.answers - Counter(results=tally.answers['results']))}")
    print(f"opt-out/in retries while the database was away: {tally.privacy_retries}")
    print(f"hostile inputs sent: {dict(tally.hostile)}")
    print(f"refused or dropped for good, by reason (index_failures): {dict(report.refused)}")
    failed = {role.name: dict(role.failed) for role in report.roles if role.failed}
    print(f"images dropped by process and reason (/metrics): {failed}")
    for role in report.roles:
        peaks = [max(kb for _, kb in life.rss_kb) / 1024 for life in role.lives if life.rss_kb]
        print(
            f"{role.name}: {len(role.lives)} processes, peak RSS "
            f"{', '.join(f'{p:.0f}' for p in peaks)} MB; restarts by task "
            f"{dict(role.restarts) or 'none'}; unhealthy {len(role.unhealthy)} times; "
            f"/healthz unanswered {dict(role.silent) or 'never'}; "
            f"stop: {_stop(report.stops.get(role.name))}"
        )
    for name, (before, after) in ((n, m) for n, m in report.memory.items() if m):
        print(
            f"memory of {name}: {before:.0f} MB after the warm-up, {after:.0f} MB at the end "
            f"({after / before - 1:+.1%}); by tenth of the run: {_series(report, name)} MB"
        )
    print(
        f"good images lost: {len(report.lost)}; forbidden rows stored: {len(report.forbidden)}; "
        f"not findable: {len(report.unfindable)}; jobs due: {report.due_jobs} (later: "
        f"{report.later_jobs}); searches showing what they must not: {len(tally.shown_forbidden)}"
    )
    print(f"logs: {report.workdir}")


def _series(report: Report, name: str) -> str:
    """The RSS of ``name``'s process at each tenth of the load time, then at the end."""
    (role,) = [r for r in report.roles if r.name == name]
    samples = role.life.rss_kb
    marks = [report.started + report.load_s * i / 10 for i in range(1, 10)]
    picked = [min(samples, key=lambda s, m=m: abs(s[0] - m))[1] for m in marks]
    return " ".join(f"{kb / 1024:.0f}" for kb in [*picked, samples[-1][1]])


def _stop(stop: tuple[int, float] | None) -> str:
    return "not stopped" if stop is None else f"exit {stop[0]} in {stop[1]:.1f} s"


def _loads(values: tuple[float, ...]) -> str:
    return " ".join(f"{v:.2f}" for v in values)
