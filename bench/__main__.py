"""``python -m bench``: the whole benchmark suite (parser in bench/cli.py, runner in bench/suite.py)."""

import sys

from bench.cli import main

sys.exit(main())
