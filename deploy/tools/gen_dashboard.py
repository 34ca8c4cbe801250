"""Generate deploy/dashboards/aeterna-sync.json (Grafana) from the panel list below.

python deploy/tools/gen_dashboard.py           # rewrite the dashboard
python deploy/tools/gen_dashboard.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from generated_file import write_or_check  # the sibling helper; scripts run from this folder

OUT = Path(__file__).resolve().parents[1] / "dashboards" / "aeterna-sync.json"
SEL = 'namespace=~"$namespace"'
RATE = "$__rate_interval"

# (title, kind, unit, [(expr, legend)], description)
PANELS: list[tuple[str, str, str, list[tuple[str, str]], str]] = [
    (
        "Online edges",
        "stat",
        "none",
        [(f"max(aeterna_edges_online{{{SEL}}})", "online")],
        "Edges central considers online (a batch within sync.offlineAfter).",
    ),
    (
        "Outbox depth per layer",
        "timeseries",
        "none",
        [(f"sum by (channel) (aeterna_outbox_depth{{{SEL}}})", "{{channel}}")],
        "Items queued in edge outboxes, per channel (session, episodic, vectors, decisions).",
    ),
    (
        "Sync lag",
        "timeseries",
        "s",
        [(f"max by (channel) (aeterna_sync_lag_seconds{{{SEL}}})", "{{channel}}")],
        "Age of the oldest unacknowledged item, per channel (worst edge).",
    ),
    (
        "Time since last successful sync",
        "timeseries",
        "s",
        [(f"time() - max by (channel) (aeterna_last_sync_timestamp_seconds{{{SEL}}})", "{{channel}}")],
        "Seconds since central last acknowledged a batch, per channel.",
    ),
    (
        "Batches by status",
        "timeseries",
        "ops",
        [(f"sum by (channel, status) (rate(aeterna_sync_batches_total{{{SEL}}}[{RATE}]))", "{{channel}} {{status}}")],
        "Sync batches per second by outcome.",
    ),
    (
        "Items by status",
        "timeseries",
        "ops",
        [(f"sum by (channel, status) (rate(aeterna_sync_items_total{{{SEL}}}[{RATE}]))", "{{channel}} {{status}}")],
        "Synced items per second by outcome.",
    ),
    (
        "Rate-limited calls",
        "timeseries",
        "ops",
        [(f"sum by (method) (rate(aeterna_rpc_rate_limited_total{{{SEL}}}[{RATE}]))", "{{method}}")],
        "Calls refused with RESOURCE_EXHAUSTED by the per-edge rate limit (sync.rateLimit).",
    ),
    (
        "Dead letters",
        "timeseries",
        "short",
        [(f"sum by (channel, cause) (increase(aeterna_dead_letters_total{{{SEL}}}[{RATE}]))", "{{channel}} {{cause}}")],
        "Items moved to the dead-letter store (queue TTL expired, overflow, rejected).",
    ),
    (
        "Auth failures",
        "timeseries",
        "ops",
        [
            (
                f"sum by (method, reason) (rate(aeterna_rpc_auth_failures_total{{{SEL}}}[{RATE}]))",
                "{{method}} {{reason}}",
            )
        ],
        "Calls refused by authentication, by ErrorInfo reason (expired token, unknown key, pin mismatch...).",
    ),
    # The gRPC panels read the grpc-ecosystem series (go-grpc-prometheus names), as stock gRPC dashboards do.
    (
        "gRPC requests by method and code",
        "timeseries",
        "reqps",
        [
            (
                f"sum by (grpc_service, grpc_method, grpc_code) (rate(grpc_server_handled_total{{{SEL}}}[{RATE}]))",
                "{{grpc_service}}/{{grpc_method}} {{grpc_code}}",
            )
        ],
        "Completed RPCs per second by method and status code (grpc_server_handled_total).",
    ),
    (
        "gRPC error ratio",
        "timeseries",
        "percentunit",
        [
            (
                "sum by (grpc_service, grpc_method) "
                f'(rate(grpc_server_handled_total{{{SEL}, grpc_code!="OK"}}[{RATE}]))'
                f" / sum by (grpc_service, grpc_method) (rate(grpc_server_handled_total{{{SEL}}}[{RATE}]))",
                "{{grpc_service}}/{{grpc_method}}",
            )
        ],
        "Share of completed RPCs that did not end OK, per method.",
    ),
    (
        "gRPC errors by code",
        "timeseries",
        "reqps",
        [
            (
                f'sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total{{{SEL}, grpc_code!="OK"}}[{RATE}]))',
                "{{grpc_method}} {{grpc_code}}",
            )
        ],
        "Failed RPCs per second by method and gRPC status code (Go's spelling: Unauthenticated, Unavailable...).",
    ),
    (
        "gRPC unary latency p50 / p99",
        "timeseries",
        "s",
        [
            (
                "histogram_quantile(0.5, sum by (le, grpc_method) "
                f'(rate(grpc_server_handling_seconds_bucket{{{SEL}, grpc_type="unary"}}[{RATE}])))',
                "p50 {{grpc_method}}",
            ),
            (
                "histogram_quantile(0.99, sum by (le, grpc_method) "
                f'(rate(grpc_server_handling_seconds_bucket{{{SEL}, grpc_type="unary"}}[{RATE}])))',
                "p99 {{grpc_method}}",
            ),
        ],
        "Server-side handling time of unary RPCs from the histogram buckets (a stream's is its whole lifetime).",
    ),
    (
        "gRPC stream messages",
        "timeseries",
        "ops",
        [
            (
                f'sum by (grpc_method) (rate(grpc_server_msg_received_total{{{SEL}, grpc_type!="unary"}}[{RATE}]))',
                "received {{grpc_method}}",
            ),
            (
                f'sum by (grpc_method) (rate(grpc_server_msg_sent_total{{{SEL}, grpc_type!="unary"}}[{RATE}]))',
                "sent {{grpc_method}}",
            ),
        ],
        "Messages per second on streaming RPCs (sync batches and acks, policy updates).",
    ),
]


def build() -> dict[str, Any]:
    """The dashboard model."""
    panels = []
    for index, (title, kind, unit, targets, description) in enumerate(PANELS):
        width = 6 if kind == "stat" else 12
        panels.append(
            {
                "id": index + 1,
                "type": kind,
                "title": title,
                "description": description,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": width, "x": (index % 2) * 12, "y": (index // 2) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
                "targets": [
                    {
                        "refId": chr(ord("A") + n),
                        "expr": expr,
                        "legendFormat": legend,
                        "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    }
                    for n, (expr, legend) in enumerate(targets)
                ],
            }
        )
    return {
        "title": "Aeterna sync",
        "uid": "aeterna-sync",
        "description": "Edge-to-central sync: queues, lag, batches, online edges, rate limiting, dead letters; "
        "gRPC traffic from the standard grpc_server_* series.",
        "tags": ["aeterna", "grpc", "sync"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
                {
                    "name": "namespace",
                    "type": "query",
                    "label": "Namespace",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {"query": "label_values(grpc_server_handled_total, namespace)", "refId": "ns"},
                    "definition": "label_values(grpc_server_handled_total, namespace)",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "refresh": 2,
                },
            ]
        },
        "panels": panels,
    }


def render() -> str:
    """The dashboard file's text."""
    return json.dumps(build(), indent=2) + "\n"


def main() -> int:
    return write_or_check(OUT, render, __doc__.splitlines()[0], "python deploy/tools/gen_dashboard.py")


if __name__ == "__main__":
    sys.exit(main())
