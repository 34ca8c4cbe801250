"""Write a generated file, or (``--check``) fail when the committed one is stale."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def write_or_check(out: Path, render: Callable[[], str], description: str, command: str) -> int:
    """The whole ``main`` of a generator script: parse ``--check``, then write ``out`` or compare with it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help=f"fail if {out.name} is stale instead of writing it")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            print(f"{out} is stale; run: {command}", file=sys.stderr)
            return 1
        return 0
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0
