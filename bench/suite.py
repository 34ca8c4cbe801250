"""The benchmark suite: figures, sizes, medians, ratios, the README table.

Every figure is measured next to a limit measured in the same run (raw
PostgreSQL upsert, a bare gRPC echo on the same server stack, raw cedarpy,
exact numpy search) and printed as a ratio, because the machines are shared
and noisy. Each figure runs ``--runs`` times and the median is reported.

A figure is an async function ``measure(env, size) -> list[Sample]`` that runs
once; the runner calls it ``runs`` times per size and takes medians. Sizes come
from the mode: ``smoke`` (tiny, one run, for CI), ``quick`` and ``full``.
No timing is asserted anywhere.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from central_svc.store.embedded_postgres import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = Path(__file__).resolve().parent / "results.json"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


@dataclass
class Sample:
    """One measured figure at one size, next to its limit from the same run.

    ``ratio`` is computed by the figure (value / limit, or limit / value for
    latencies, whichever the goal talks about); ``goal`` is a readable goal and
    ``met`` whether the median meets it (None when the figure has no goal).
    """

    metric: str
    value: float
    unit: str
    limit_name: str
    limit: float
    ratio: float
    goal: str = ""
    met: bool | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Row:
    """Median of one metric at one size over the runs."""

    figure: str
    size: str
    metric: str
    value: float
    unit: str
    limit_name: str
    limit: float
    ratio: float
    goal: str
    met: bool | None
    runs: int
    spread: tuple[float, float]
    extra: dict[str, float]


@dataclass
class Env:
    """What figures share in one suite run: a scratch dir and one embedded PostgreSQL."""

    scratch: Path
    mode: str
    _pg: Any = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def postgres_url(self) -> str:
        """The URL of the suite's PostgreSQL (embedded, started on first use; BENCH_DATABASE_URL overrides)."""
        url = os.environ.get("BENCH_DATABASE_URL")
        if url:
            return url
        if self._pg is None:
            self._pg = EmbeddedPostgres(self.scratch / "pg").start()
            self._closers.append(self._pg.stop)
        return str(self._pg.url)

    def close(self) -> None:
        """Stop what was started."""
        for closer in reversed(self._closers):
            closer()


Measure = Callable[[Env, int], Awaitable[list[Sample]]]


@dataclass(frozen=True)
class Figure:
    """A named figure with its sizes per mode and how to label a size."""

    name: str
    title: str
    measure: Measure
    sizes: dict[str, tuple[int, ...]]
    label: Callable[[int], str]
    goal_note: str = ""
    runs_at: Mapping[int, int] = field(default_factory=dict)
    """At most this many runs at these sizes (one that takes many minutes a run), whatever ``--runs`` says."""
    counts: bool = False
    """Its figures are byte counts of a seeded workload, not timings: one run gives them, more would repeat them."""

    def runs_for(self, size: int, runs: int) -> int:
        """How many runs this size gets when the suite asks for ``runs``."""
        return 1 if self.counts else min(runs, self.runs_at.get(size, runs))


def human(count: int) -> str:
    """1000 -> 1k, 100000 -> 100k."""
    if count >= 1000 and count % 1000 == 0:
        return f"{count // 1000}k"
    return str(count)


def fmt(value: float) -> str:
    """A number with a sensible number of digits."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


def median_row(figure: Figure, size: int, runs: list[list[Sample]]) -> list[Row]:
    """Medians per metric over the runs (the verdict is re-derived from the median ratio's run)."""
    rows: list[Row] = []
    for index, first in enumerate(runs[0]):
        samples = [run[index] for run in runs]
        ordered = sorted(samples, key=lambda s: s.ratio)
        middle = ordered[(len(ordered) - 1) // 2]
        extra = {key: statistics.median(s.extra[key] for s in samples) for key in first.extra}
        rows.append(
            Row(
                figure=figure.name,
                size=figure.label(size),
                metric=first.metric,
                value=statistics.median(s.value for s in samples),
                unit=first.unit,
                limit_name=first.limit_name,
                limit=statistics.median(s.limit for s in samples),
                ratio=middle.ratio,
                goal=first.goal,
                met=middle.met,
                runs=len(samples),
                spread=(min(s.ratio for s in samples), max(s.ratio for s in samples)),
                extra=extra,
            )
        )
    return rows


def print_row(row: Row) -> None:
    """One RATIO line per figure/size/metric (the smoke test looks for these)."""
    verdict = "" if row.met is None else ("  [goal met]" if row.met else "  [goal MISSED]")
    extra = "".join(f"  {k}={fmt(v)}" for k, v in row.extra.items())
    print(
        f"RATIO {row.figure:<12} {row.size:>6}  {row.metric:<28} {fmt(row.value):>10} {row.unit:<12}"
        f" vs {row.limit_name} {fmt(row.limit)}  ratio {row.ratio:.3f} (goal {row.goal or '-'},"
        f" runs {row.runs}, range {row.spread[0]:.3f}-{row.spread[1]:.3f}){verdict}{extra}",
        flush=True,
    )


async def run_suite(figures: list[Figure], mode: str, runs: int) -> tuple[list[Row], list[str]]:
    """Run every figure at every size of ``mode``, ``runs`` times each; print and return the medians."""
    rows: list[Row] = []
    failures: list[str] = []
    logging.getLogger().setLevel(logging.ERROR)  # the services' start-up warnings would drown the figures
    with tempfile.TemporaryDirectory(prefix="aeterna-bench-") as scratch:
        env = Env(Path(scratch), mode)
        try:
            for figure in figures:
                print(f"== {figure.name}: {figure.title}", flush=True)
                for size in figure.sizes[mode]:
                    started = time.perf_counter()
                    try:
                        samples = [await figure.measure(env, size) for _ in range(figure.runs_for(size, runs))]
                    except Exception as error:  # report and go on: one broken figure must not hide the rest
                        print(f"ERROR {figure.name} {figure.label(size)}: {type(error).__name__}: {error}", flush=True)
                        failures.append(f"{figure.name} {figure.label(size)}")
                        continue
                    for row in median_row(figure, size, samples):
                        print_row(row)
                        rows.append(row)
                    print(f"   ({figure.label(size)} took {time.perf_counter() - started:.1f} s)", flush=True)
        finally:
            env.close()
    if failures:
        print(f"ERROR figures that failed: {', '.join(failures)}", flush=True)
    return rows, failures


def machine() -> dict[str, str]:
    """Cores, memory, Python, CPU model and date of this run."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return {
        "cores": str(os.cpu_count()),
        "memory": memory,
        "python": platform.python_version(),
        "cpu": model,
        "os": platform.platform(terse=True),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def table(rows: list[Row], figures: list[Figure], mode: str, runs: int) -> str:
    """The Markdown block that goes between the README markers."""
    info = machine()
    lines = [
        f"Last run: `python -m bench{'' if mode == 'full' else ' --' + mode} --runs {runs} --write-readme`"
        f" on {info['date']}: {info['cores']} cores ({info['cpu']}), {info['memory']},"
        f" Python {info['python']}, {info['os']}; machine shared with other work, medians of {runs} run(s)"
        ' (a size marked "1 run" ran once: byte counts of a seeded workload, or a size that takes many minutes).',
        "",
        "| figure | size | measured | limit (same run) | ratio | goal | |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        mark = "" if row.met is None else ("met" if row.met else "**missed**")
        extra = "; ".join(f"{k} {fmt(v)}" for k, v in row.extra.items())
        lines.append(
            f"| {row.figure} | {row.size}{'' if row.runs == runs else f' ({row.runs} run)'} |"
            f" {row.metric}: {fmt(row.value)} {row.unit}"
            f"{' (' + extra + ')' if extra else ''} | {row.limit_name}: {fmt(row.limit)} |"
            f" {row.ratio:.3f} | {row.goal or '-'} | {mark} |"
        )
    notes = [f for f in figures if f.goal_note and any(r.figure == f.name and r.met is False for r in rows)]
    if notes:
        lines += ["", "Missed goals, why, and what would fix them:", ""]
        lines += [f"- **{f.name}**: {f.goal_note}" for f in notes]
    lines += ["", "Details, profiles and the scaling estimate: [docs/performance.md](docs/performance.md)."]
    return "\n".join(lines)


def write_outputs(rows: list[Row], figures: list[Figure], mode: str, runs: int) -> None:
    """Replace the README block between the markers and write bench/results.json."""
    text = README.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{table(rows, figures, mode, runs)}\n{END}{tail}")
    RESULTS.write_text(
        json.dumps({"machine": machine(), "mode": mode, "runs": runs, "rows": [asdict(r) for r in rows]}, indent=1)
        + "\n"
    )
    print(f"wrote {README.relative_to(ROOT)} (bench block) and {RESULTS.relative_to(ROOT)}")


def run_blocking(figures: list[Figure], mode: str, runs: int) -> tuple[list[Row], list[str]]:
    """Run the suite in a fresh event loop."""
    return asyncio.run(run_suite(figures, mode, runs))
