"""``aeterna bench`` / ``python -m bench``: run the whole benchmark suite with one command."""

from __future__ import annotations

import argparse
from typing import Any

MODES = ("smoke", "quick", "full")


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny sizes, one run (CI: keeps the suite working)")
    size.add_argument("--quick", action="store_true", help="medium sizes, a few minutes")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this figure (repeatable)")
    parser.add_argument("--runs", type=int, help="median over N runs (default 3; 1 with --smoke)")
    parser.add_argument(
        "--write-readme", action="store_true", help="write the results table into README.md and bench/results.json"
    )
    parser.add_argument("--list", action="store_true", help="list the figures and exit")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m bench``."""
    return _configure(
        argparse.ArgumentParser(
            prog="python -m bench",
            description="Run the benchmark suite: every figure next to a limit measured in the same run, as a ratio.",
        )
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m bench``."""
    return run_args(build_parser().parse_args(argv))


def run_args(args: argparse.Namespace) -> int:
    """Run the suite as the arguments say."""
    # Imported on use, so that `aeterna --help` does not load the whole suite.
    from bench.figures import FIGURES  # noqa: PLC0415
    from bench.suite import run_blocking, write_outputs  # noqa: PLC0415

    if args.list:
        for figure in FIGURES:
            print(f"{figure.name:<12} {figure.title}")
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    runs = args.runs or (1 if mode == "smoke" else 3)
    chosen = FIGURES
    if args.only:
        known = {f.name for f in FIGURES}
        unknown = [name for name in args.only if name not in known]
        if unknown:
            print(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            return 2
        chosen = [f for f in FIGURES if f.name in args.only]
    rows, failures = run_blocking(chosen, mode, runs)
    if args.write_readme:
        write_outputs(rows, chosen, mode, runs)
    return 1 if failures else 0


def add_commands(subparsers: Any) -> None:
    """Register ``aeterna bench``."""
    parser = subparsers.add_parser("bench", help="run the benchmark suite (ratios against same-run limits)")
    _configure(parser)
    parser.set_defaults(handler=run_args)
