"""How every ``aeterna`` command prints: ``--json`` documents on stdout, progress on stderr.

A command that prints data takes ``--json`` and then prints exactly one JSON
document on stdout (sorted keys, so the same data always reads the same) and
nothing else there; progress lines always go to stderr, so that
``aeterna ... --json | jq`` works while a long command reports how far it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

JSON_HELP = "print one JSON document (stable keys) instead of the table"


def add_json(parser: argparse.ArgumentParser) -> None:
    """The ``--json`` flag of a command that prints data."""
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def print_json(document: Any) -> None:
    """Print ``document`` as the command's one JSON document."""
    print(json.dumps(document, indent=2, sort_keys=True))


def progress(line: str) -> None:
    """One progress line on stderr, flushed at once (a pipe would otherwise hold it until the end)."""
    print(line, file=sys.stderr, flush=True)
