"""Exponential backoff with full jitter, shared by every retrying loop of the edge.

Full jitter (a uniform draw between zero and the exponential cap) spreads a
thousand edges reconnecting at once over the whole window instead of
synchronizing them into waves.
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Delay before retry number ``attempt`` (0-based): uniform in [base/2, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, base * (2 ** min(attempt, 30)))
    return random.uniform(min(base / 2, ceiling), ceiling)


def jittered(interval: float, spread: float = 0.1) -> float:
    """``interval`` ± ``spread`` (a fraction), so periodic loops of many edges drift apart."""
    return max(interval * (1 + random.uniform(-spread, spread)), 0.001)
