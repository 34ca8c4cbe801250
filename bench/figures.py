"""Every figure of the suite, in the order it runs."""

from __future__ import annotations

from bench import central_bench, cluster_bench, edge_bench, fleet_bench, wire_bench
from bench.suite import Figure

FIGURES: list[Figure] = [
    *central_bench.FIGURES,
    *edge_bench.FIGURES,
    *fleet_bench.FIGURES,
    *cluster_bench.FIGURES,
    *wire_bench.FIGURES,
]
