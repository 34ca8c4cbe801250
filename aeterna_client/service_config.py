"""The published gRPC service config: which RPCs gRPC may retry, and each method's timeout.

``service_config.json`` (next to this module, shipped as package data) is the
one service config of the Aeterna services. Every Python client loads it
through ``open_channel`` (``ClientSettings.service_config``; a pinned channel
takes its timeouts only); the Go program in ``clients/go`` loads the same file,
and docs/clients.md shows how to load it in Go, Java, grpc-js and Python. The JSON is generated from ``RULES``
below (``python -m aeterna_client.service_config --write``); a test fails when
the file is stale, names a method the generated descriptors do not have, or
gives a retry policy to a method that is not idempotent.

Why each method is retried or not:

- A retry policy only where a repeat cannot do anything twice: the methods
  the protos mark ``NO_SIDE_EFFECTS`` or ``IDEMPOTENT``, and the health
  service. gRPC retries a streaming call only until the first response
  message arrives (then the call is committed), so a retried ``WatchPolicies``
  never repeats a bundle the caller already saw.
- The sync streams (``SyncSessions``, ``SyncVectors``) are idempotent by
  ``batch_id`` (central's ledger applies a batch at most once and answers a
  resend with the stored ack) but gRPC does not retry them: their only client
  is the edge, whose outbox resends every unacknowledged batch itself, signed
  again with a fresh ``sent_time``, and accounts for the broken stream; a gRPC
  retry would replay the buffered batches (up to ``sync.batch.maxBytes``
  each) with their first signature and hide the break from the edge.
- ``AppendEpisode`` is marked ``IDEMPOTENT`` in edge.proto, but an episode
  sent without an ``episode_id`` gets a new UUID on each attempt: a retry
  after a lost response would record it twice, so it is not retried.
- Never retried: ``Authorize`` (each call records a decision under a new
  ``decision_id``), ``AppendSessionMessages`` (appends), ``PublishPolicies``
  (each call makes a new bundle version), ``FlushSync`` (fails with
  UNAVAILABLE on purpose while the edge is offline: retrying only delays it).
- Retried on UNAVAILABLE only. RESOURCE_EXHAUSTED is not: the servers send
  their wait as ``google.rpc.RetryInfo``, which gRPC's retry does not read (it
  reads only ``grpc-retry-pushback-ms``, which no Aeterna server sends), so an
  automatic retry would hit a rate limit again at once.
- ``retryThrottling`` stops retries on a channel once about half its failures
  budget is spent (a failure costs 1 token of 10, a success gives 0.1 back),
  so a dead central is not stormed by every edge multiplying its calls.
- No ``waitForReady``: a call fails at once with UNAVAILABLE while the server
  is unreachable, which is what the edge's link state and offline mode, and
  callers' own error handling, rely on; the retry policy covers short blips.

Timeouts (a timeout in a service config is a cap: gRPC ends a call at the
smaller of the caller's deadline and the method's timeout):

- 10 s for what an edge answers from its local stores; 30 s where the edge may
  wait on central (read-through, vector fallback, strong episodes, large
  vector writes) and for central's operator and policy methods.
- None for streams (long-lived on purpose), for ``FlushSync`` (it runs as long
  as there is to send; callers set their own deadline), and for every method
  the edge calls on central with a deadline from its own config
  (``sync.centralServer.timeout``, ``healthCheck.timeout``): the operator's
  value stays the deadline, and is not cut short by a cap here.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

FILE_NAME = "service_config.json"
PATH = Path(__file__).with_name(FILE_NAME)
"""Where the JSON lives in a checkout (also inside the installed package)."""

EDGE = "aeterna.edge.v1.EdgeService"
SYNC = "aeterna.sync.v1.SyncService"
POLICY = "aeterna.policy.v1.PolicyService"
HEALTH = "grpc.health.v1.Health"

LOCAL = 10.0
"""Seconds: answered from the edge's local stores."""
CENTRAL = 30.0
"""Seconds: may wait on central (at the edge), or answered by central."""

RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
"""Up to 3 retries, after random waits of at most 0.1 s, 0.2 s and 0.4 s (gRPC's jittered backoff)."""

RETRY_THROTTLING: dict[str, Any] = {"maxTokens": 10, "tokenRatio": 0.1}
"""Per channel: retries stop while fewer than 5 of 10 tokens are left (failures cost 1, successes give 0.1)."""


@dataclass(frozen=True)
class Rule:
    """What the service config says about one method."""

    timeout: float | None
    """Seconds; None: no timeout in the config (the caller's deadline, if any, is the deadline)."""
    retry: bool
    """Whether gRPC may retry the method (``RETRY_POLICY``)."""


RULES: dict[str, Rule] = {
    # EdgeService: the agent-facing API of an edge.
    f"{EDGE}/SetWorkingMemory": Rule(LOCAL, retry=True),
    f"{EDGE}/GetWorkingMemory": Rule(LOCAL, retry=True),
    f"{EDGE}/PutSession": Rule(LOCAL, retry=True),
    f"{EDGE}/GetSession": Rule(CENTRAL, retry=True),
    f"{EDGE}/AppendSessionMessages": Rule(LOCAL, retry=False),
    f"{EDGE}/AppendEpisode": Rule(CENTRAL, retry=False),
    f"{EDGE}/UpsertVectors": Rule(CENTRAL, retry=True),
    f"{EDGE}/SearchVectors": Rule(CENTRAL, retry=True),
    f"{EDGE}/Authorize": Rule(LOCAL, retry=False),
    f"{EDGE}/GetEdgeStatus": Rule(LOCAL, retry=True),
    f"{EDGE}/FlushSync": Rule(None, retry=False),
    # SyncService: what the edge calls carries the edge's own deadline (no cap here).
    f"{SYNC}/SyncSessions": Rule(None, retry=False),
    f"{SYNC}/SyncVectors": Rule(None, retry=False),
    f"{SYNC}/SearchVectors": Rule(None, retry=True),
    f"{SYNC}/ReplayDecisions": Rule(None, retry=True),
    f"{SYNC}/GetSession": Rule(None, retry=True),
    f"{SYNC}/AppendEpisodes": Rule(None, retry=True),
    f"{SYNC}/GetSyncCheckpoint": Rule(None, retry=True),
    f"{SYNC}/AnnounceOffline": Rule(None, retry=True),
    # SyncService: operators' methods.
    f"{SYNC}/ListEpisodes": Rule(CENTRAL, retry=True),
    f"{SYNC}/ListConflicts": Rule(CENTRAL, retry=True),
    f"{SYNC}/ResolveConflict": Rule(CENTRAL, retry=True),
    f"{SYNC}/ListEdges": Rule(CENTRAL, retry=True),
    # PolicyService.
    f"{POLICY}/WatchPolicies": Rule(None, retry=True),
    f"{POLICY}/PublishPolicies": Rule(CENTRAL, retry=False),
    f"{POLICY}/GetPolicyBundle": Rule(CENTRAL, retry=True),
    # grpc.health.v1 (both servers); the edge's check of central carries healthCheck.timeout.
    f"{HEALTH}/Check": Rule(None, retry=True),
    f"{HEALTH}/List": Rule(LOCAL, retry=True),
    f"{HEALTH}/Watch": Rule(None, retry=True),
}
"""Every RPC of the four services (a test checks the list against the generated descriptors)."""

IDEMPOTENT_BY_DESIGN: dict[str, str] = {
    f"{HEALTH}/Check": "reads the serving status",
    f"{HEALTH}/List": "reads the serving statuses",
    f"{HEALTH}/Watch": "streams the serving status",
}
"""Retried although their protos carry no ``idempotency_level``, and why."""

NOT_RETRIED_DESPITE_PROTO: dict[str, str] = {
    f"{EDGE}/AppendEpisode": "an episode without episode_id gets a new UUID per attempt: a retry could record it twice",
}
"""Marked ``IDEMPOTENT`` in their protos but not retried, and why."""


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _name(method: str) -> dict[str, str]:
    service, _, name = method.partition("/")
    return {"service": service, "method": name}


def build() -> dict[str, Any]:
    """The service config document from ``RULES``: one ``methodConfig`` per (retry, timeout) pair."""
    groups: dict[tuple[bool, float | None], list[str]] = {}
    for method, rule in RULES.items():
        groups.setdefault((rule.retry, rule.timeout), []).append(method)
    configs: list[dict[str, Any]] = []
    for (retry, timeout), methods in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1] or 0.0)):
        entry: dict[str, Any] = {"name": [_name(method) for method in sorted(methods)]}
        if timeout is not None:
            entry["timeout"] = _seconds(timeout)
        if retry:
            entry["retryPolicy"] = RETRY_POLICY
        configs.append(entry)
    return {"methodConfig": configs, "retryThrottling": RETRY_THROTTLING}


def render() -> str:
    """``build()`` as the JSON text of ``service_config.json`` (one method name per line)."""
    text = json.dumps(build(), indent=2)
    text = re.sub(r'\{\s+("service": "[^"]+"),\s+("method": "[^"]+")\s+\}', r"{\1, \2}", text)
    text = re.sub(r'\[\s+("UNAVAILABLE")\s+\]', r"[\1]", text)
    return text + "\n"


@cache
def service_config_json(*, retries: bool = True) -> str:
    """The packaged ``service_config.json``, as the text gRPC's ``grpc.service_config`` option takes;
    ``retries=False``: without its retry policies and throttling (timeouts only)."""
    text = resources.files("aeterna_client").joinpath(FILE_NAME).read_text(encoding="utf-8")
    if retries:
        return text
    document = json.loads(text)
    document.pop("retryThrottling", None)
    for entry in document["methodConfig"]:
        entry.pop("retryPolicy", None)
    return json.dumps(document)


def method_timeouts(document: str | None = None) -> dict[str, float]:
    """``/package.Service/Method`` -> seconds, for the methods a service config (the packaged one when
    ``document`` is None) gives a timeout."""
    return dict(_timeouts(service_config_json() if document is None else document))


@cache
def _timeouts(document: str) -> tuple[tuple[str, float], ...]:
    timeouts: list[tuple[str, float]] = []
    for entry in json.loads(document).get("methodConfig", []):
        if "timeout" not in entry:
            continue
        seconds = float(entry["timeout"].removesuffix("s"))
        timeouts += [(f"/{name['service']}/{name.get('method', '')}", seconds) for name in entry["name"]]
    return tuple(timeouts)


def main(argv: list[str] | None = None) -> int:
    """Print the service config, or write it to ``service_config.json`` (``--write``)."""
    parser = argparse.ArgumentParser(
        prog="python -m aeterna_client.service_config",
        description="The gRPC service config of the Aeterna services (retries for idempotent RPCs, per-method "
        "timeouts), generated from aeterna_client/service_config.py's RULES.",
    )
    parser.add_argument("--write", action="store_true", help=f"write it to {PATH} instead of printing it")
    args = parser.parse_args(argv)
    if args.write:
        PATH.write_text(render(), encoding="utf-8")
        print(f"wrote {PATH}")
    else:
        sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
