"""``aeterna demo``: one central and two edges on embedded defaults, walked
through the spec's data flows, with what happened printed at each step.

The tour is a script of steps; each prints a title, one sentence on what the
spec says should happen, then what did happen. ``--report FILE`` writes the
results as JSON, which is how the tests check the tour.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aeterna_cli.api.clients import CentralClient, EdgeClient, wire_sizes
from aeterna_cli.central_db import CentralCounts, central_counts
from aeterna_cli.processes import ServiceFactory, ServiceProcess
from central_svc.store.embedded_postgres import EmbeddedPostgres

DIMENSION = 384

POLICY_V1 = {
    "read.cedar": 'permit(principal, action == Action::"read", resource);',
    "approve.cedar": 'permit(principal == User::"alice", action == Action::"approve", resource);',
}
POLICY_V2 = {
    **POLICY_V1,
    "approve.cedar": 'permit(principal in Group::"approvers", action == Action::"approve", resource);',
}
ENTITIES_V2: list[dict[str, Any]] = [
    {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": [{"type": "Group", "id": "approvers"}]},
    {"uid": {"type": "User", "id": "bob"}, "attrs": {}, "parents": [{"type": "Group", "id": "approvers"}]},
    {"uid": {"type": "Group", "id": "approvers"}, "attrs": {}, "parents": []},
]


@dataclass
class Report:
    """What the tour observed; written as JSON with ``--report``."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    ok: bool = True

    def lost(self) -> int:
        """Items written at an edge and not found at central."""
        return sum(row["lost"] for row in self.counts.values())


class Narrator:
    """Prints the tour: numbered steps, an explanation, then results."""

    def __init__(self, out: TextIO, total: int) -> None:
        self._out = out
        self._total = total
        self._index = 0
        self._started = time.monotonic()

    def _print(self, text: str = "") -> None:
        print(text, file=self._out, flush=True)

    @contextmanager
    def step(self, title: str, explanation: str, report: Report) -> Iterator[dict[str, Any]]:
        """One step; yields a dict the step fills with its results."""
        self._index += 1
        began = time.monotonic()
        self._print(f"\n[{self._index}/{self._total}] {title}")
        self._print(f"      {explanation}")
        results: dict[str, Any] = {}
        try:
            yield results
        except Exception as error:
            report.ok = False
            report.steps.append({"title": title, "ok": False, "error": str(error), **results})
            self._print(f"   ✗ {error}")
            raise
        seconds = time.monotonic() - began
        report.steps.append({"title": title, "ok": True, "seconds": round(seconds, 2), **results})
        self._print(f"   ({seconds:.1f} s)")

    def result(self, text: str) -> None:
        """One line of what happened."""
        self._print(f"   ✓ {text}")

    def progress(self, text: str) -> None:
        """A progress line for something being waited on."""
        self._print(f"   … {text}")

    def table(self, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        """A small aligned table."""
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
        for row in (header, *rows):
            self._print("   " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))

    def elapsed(self) -> float:
        """Seconds since the tour began."""
        return time.monotonic() - self._started


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, narrator: Narrator) -> float:
    """Poll ``predicate`` until it holds; returns how long it took."""
    began = time.monotonic()
    deadline = began + timeout
    last_note = began
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic() - began
        if time.monotonic() - last_note > 2:
            narrator.progress(f"waiting for {what} ({time.monotonic() - began:.0f} s)")
            last_note = time.monotonic()
        time.sleep(0.1)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")


def wait_for_policy(edge: EdgeClient, name: str, version: int, narrator: Narrator) -> float:
    """Wait until ``edge`` runs policy ``version`` or newer."""

    def applied() -> bool:
        return edge.status().policy_version >= version

    return wait_for(applied, 30, f"{name} on policy v{version}", narrator)


def wait_for_link(edge: EdgeClient, name: str, *, online: bool, narrator: Narrator) -> float:
    """Wait until ``edge`` reports the link state ``online``."""

    def reached() -> bool:
        return edge.status().online is online

    return wait_for(reached, 60, f"{name} to go {'online' if online else 'offline'}", narrator)


def clustered_vectors(count: int, seed: int, prefix: str) -> list[tuple[str, list[float], dict[str, Any]]]:
    """Unit vectors around one random centre, so that a query near the centre finds them."""
    rng = random.Random(seed)
    centre = [rng.gauss(0, 1) for _ in range(DIMENSION)]
    vectors = []
    for index in range(count):
        values = [c + rng.gauss(0, 0.15) for c in centre]
        norm = math.sqrt(sum(v * v for v in values))
        vectors.append((f"{prefix}-{index}", [v / norm for v in values], {"topic": prefix, "n": index}))
    return vectors


def central_document(data_dir: Path) -> dict[str, Any]:
    """Central on embedded defaults (its own PostgreSQL in ``data_dir``)."""
    return {
        "deploymentMode": "central",
        # A local setup: the public development signing key and auth method none are allowed here only.
        "development": True,
        "sync": {"listenPort": 0},
        "central": {"dataDir": str(data_dir)},
        # Approvals conflicting after an outage go to a person; everything else: latest wins.
        "aeterna": {
            "offline": {
                "conflictResolution": "timestamp",
                "conflictResolutionByAction": {'Action::"approve"': "manual"},
            }
        },
        "vectorDatabase": {"dimension": DIMENSION},
        "telemetry": {"metricsPort": 0, "logFormat": "text"},
    }


def edge_document(central_port: int, data_dir: Path, agent_id: str, region: str, fast: bool) -> dict[str, Any]:
    """An edge on embedded defaults (its own redis-server, Qdrant Edge shard and outbox)."""
    interval = "300ms" if fast else "1s"
    return {
        "deploymentMode": "edge",
        # A local setup: signs with the public development key and uses auth method none, on purpose.
        "development": True,
        "sync": {
            "centralServer": {"url": "http://127.0.0.1", "port": central_port, "timeout": "5s"},
            "memoryLayers": {"session": {"interval": "30s"}},
        },
        "centralServer": {"healthCheck": {"interval": interval, "timeout": "1s", "failureThreshold": 3}},
        "vectorDatabase": {"dimension": DIMENSION},
        "edge": {"agentId": agent_id, "region": region, "dataDir": str(data_dir), "listenPort": 0},
        "telemetry": {"metricsPort": 0, "logFormat": "text"},
    }


class Tour:
    """The steps of the demo, sharing the processes and clients they start."""

    TOTAL_STEPS = 11

    def __init__(self, workdir: Path, narrator: Narrator, report: Report, fast: bool) -> None:
        self.workdir = workdir
        self.narrator = narrator
        self.report = report
        self.fast = fast
        self.factory = ServiceFactory(workdir)
        self.central_process: ServiceProcess | None = None
        self.edges: dict[str, EdgeClient] = {}
        self.edge_processes: dict[str, ServiceProcess] = {}
        self.central: CentralClient | None = None
        self.sessions_written: set[str] = set()
        self.vectors_written: list[tuple[str, list[float], dict[str, Any]]] = []
        self.vector_ids: set[str] = set()
        self.decision_ids: list[str] = []

    # -- helpers -----------------------------------------------------------------------

    def _central(self) -> CentralClient:
        assert self.central is not None, "central is not running"
        return self.central

    def _both(self) -> list[tuple[str, EdgeClient]]:
        return list(self.edges.items())

    def _step(self, title: str, explanation: str) -> Any:
        return self.narrator.step(title, explanation, self.report)

    # -- steps -------------------------------------------------------------------------

    def start_central(self) -> None:
        with self._step(
            "Start central",
            "The source of truth: PostgreSQL 18 + pgvector (embedded), sync and policy services over gRPC.",
        ) as results:
            self.central_process = self.factory.make("central", "central", central_document(self.workdir / "central"))
            self.central_process.start()
            self.central_process.keep_port()
            self.central = CentralClient(self.central_process.target)
            results["target"] = self.central_process.target
            self.narrator.result(f"central serving on {self.central_process.target} (embedded PostgreSQL ready)")

    def start_edges(self) -> None:
        assert self.central_process is not None
        with self._step(
            "Start two edges",
            "Each edge owns a redis-server (working + session memory), a Qdrant Edge shard and a durable outbox.",
        ) as results:
            for agent_id, region in (("edge-us", "us-west-2"), ("edge-eu", "eu-central-1")):
                document = edge_document(
                    self.central_process.port, self.workdir / agent_id / "data", agent_id, region, self.fast
                )
                process = self.factory.make("edge", agent_id, document).start()
                process.keep_port()
                self.edge_processes[agent_id] = process
                self.edges[agent_id] = EdgeClient(process.target, agent_id="agent-" + region)
                results[agent_id] = process.target
                self.narrator.result(f"{agent_id} ({region}) serving on {process.target}")

    def publish_policy(self) -> None:
        with self._step(
            "Publish Cedar policy v1",
            "Central validates the policies with Cedar, stores a versioned bundle and pushes it to every edge.",
        ) as results:
            version = self._central().publish(POLICY_V1)
            for name, edge in self._both():
                took = wait_for_policy(edge, name, version, self.narrator)
                self.narrator.result(f"{name} runs policy v{version} ({took * 1000:.0f} ms after publish)")
            results["version"] = version

    def working_memory(self) -> None:
        edge = self.edges["edge-us"]
        with self._step(
            "Working memory",
            "Short-lived request context in the edge's Redis: a TTL of seconds, never synced to central.",
        ) as results:
            edge.set_working("request:42:context", {"tool": "search", "attempt": 1}, ttl_seconds=1.0)
            value = edge.get_working("request:42:context")
            self.narrator.result(f"set and read back {value}")
            took = wait_for(lambda: edge.get_working("request:42:context") is None, 10, "the TTL", self.narrator)
            self.narrator.result(f"gone after its TTL ({took + 0:.1f} s later): working memory never leaves the edge")
            results["expired"] = True

    def session_sync(self) -> None:
        edge = self.edges["edge-us"]
        with self._step(
            "Session memory sync",
            "Agents write sessions at the edge; a batch (gzip, HMAC-signed, sequenced) upserts them at central.",
        ) as results:
            for index in range(5):
                session_id = f"sess-{index}"
                edge.append_messages(
                    session_id,
                    f"user-{index}",
                    [f"Hello, I need help with order {1000 + index}.", "Can you check the delivery date?"],
                    {"step": index, "locale": "en-US"},
                )
                self.sessions_written.add(session_id)
            pending = edge.status().pending_items.get("sessions", 0)
            self.narrator.result(f"5 sessions written at edge-us; dirty sessions waiting for the next sync: {pending}")
            raw_json, proto, gzipped = wire_sizes([edge.raw_session(s) for s in sorted(self.sessions_written)])
            batches, items, left = edge.flush()
            self.narrator.result(f"flush: {batches} batch(es), {items} item(s) acknowledged by central, {left} pending")
            self.narrator.result(
                f"bytes for this batch: JSON {raw_json} → protobuf {proto} → protobuf+gzip {gzipped} "
                f"({100 * gzipped / raw_json:.0f}% of JSON)"
            )
            found = sum(self._central().has_session(s) for s in self.sessions_written)
            self.narrator.result(f"central holds {found}/{len(self.sessions_written)} of them")
            results.update(batches=batches, items=items, json_bytes=raw_json, gzip_bytes=gzipped, at_central=found)

    def read_through(self) -> None:
        edge = self.edges["edge-eu"]
        with self._step(
            "Read-through from another region",
            "edge-eu has never seen sess-0: it asks central, answers, and caches the session locally.",
        ) as results:
            first = edge.get_session("sess-0")
            second = edge.get_session("sess-0")
            if first is None or second is None:
                raise LookupError("sess-0 was not found through edge-eu")
            self.narrator.result(f"first read answered from {first[1]}, second from {second[1]}")
            results.update(first=first[1], second=second[1])

    def vector_search(self) -> None:
        us, eu = self.edges["edge-us"], self.edges["edge-eu"]
        with self._step(
            "Vector search with central fallback",
            "edge-eu searches its local subset; too few hits, so central fills in, and edge-eu caches them.",
        ) as results:
            count = 60 if self.fast else 300
            self.vectors_written = clustered_vectors(count, seed=7, prefix="shipping")
            billing = clustered_vectors(5, seed=99, prefix="billing")
            us.upsert_vectors(self.vectors_written)
            eu.upsert_vectors(billing)
            self.vector_ids = {v[0] for v in self.vectors_written + billing}
            us.flush()
            query = self.vectors_written[0][1]
            first = eu.search(query, limit=5, threshold=0.5)
            self.narrator.result(
                f"first search: {first.local_count} local + {first.central_count} from central "
                f"(partial={first.partial})"
            )
            second = wait_for_cached(eu, query, self.narrator)
            self.narrator.result(f"again: {second.local_count} local + {second.central_count} from central (cached)")
            results.update(first_central=first.central_count, second_local=second.local_count)

    def authorize(self) -> None:
        with self._step(
            "Authorize at the edges, then change the policy",
            "Each edge decides with its Cedar bundle; a new version published at central changes decisions live.",
        ) as results:
            rows = []
            # Each edge decides on its own region's invoice: decisions on one resource from two
            # edges within a replay interval are a conflict, which is the next steps' subject.
            invoices = {"edge-us": 'Invoice::"inv-7"', "edge-eu": 'Invoice::"inv-8"'}
            for name, edge in self._both():
                for principal in ("alice", "bob"):
                    decision = edge.authorize(f'User::"{principal}"', 'Action::"approve"', invoices[name])
                    self.decision_ids.append(decision.decision_id)
                    rows.append((name, principal, "approve", decision.effect, f"v{decision.policy_version}"))
            version = self._central().publish(POLICY_V2, ENTITIES_V2)
            for name, edge in self._both():
                wait_for_policy(edge, name, version, self.narrator)
                decision = edge.authorize('User::"bob"', 'Action::"approve"', invoices[name])
                self.decision_ids.append(decision.decision_id)
                rows.append((name, "bob", "approve", decision.effect, f"v{decision.policy_version}"))
            self.narrator.table(("edge", "principal", "action", "effect", "policy"), rows)
            results["bob_after_v2"] = rows[-1][3]

    def outage(self) -> None:
        assert self.central_process is not None
        with self._step(
            "Central outage",
            "Central stops. After 3 failed health checks each edge goes offline, keeps deciding and queues.",
        ) as results:
            self.central_process.stop()
            for name, edge in self._both():
                took = wait_for_link(edge, name, online=False, narrator=self.narrator)
                self.narrator.result(f"{name} offline after {took:.1f} s")
            # While apart, both edges decide on the same invoice and the same document;
            # edge-us first, so edge-eu's decisions are the later ones.
            rows = []
            approver = {"edge-us": "alice", "edge-eu": "mallory"}
            for name in ("edge-us", "edge-eu"):
                edge = self.edges[name]
                for principal, action, resource in (
                    (approver[name], "approve", 'Invoice::"inv-9"'),
                    ("alice", "read", 'Document::"doc-5"'),
                ):
                    decision = edge.authorize(f'User::"{principal}"', f'Action::"{action}"', resource)
                    self.decision_ids.append(decision.decision_id)
                    rows.append((name, action, resource, decision.effect, "yes" if decision.offline else "no"))
                    time.sleep(0.01)
            self.narrator.table(("edge", "action", "resource", "effect", "offline"), rows)
            cached = self.edges["edge-us"].get_session("sess-1")
            self.narrator.result(f"session read while offline answered from {cached[1] if cached else 'nowhere'}")
            queued = {name: edge.status().pending_items.get("decisions", 0) for name, edge in self._both()}
            self.narrator.result(f"decisions queued in the outboxes: {queued}")
            # edge-us is also restarted while offline: its queue is on disk and must survive.
            self.edge_processes["edge-us"].stop()
            self.narrator.result("edge-us stopped with its queue on disk (it will replay after edge-eu)")
            results.update(queued=queued)

    def reconnect(self) -> None:
        assert self.central_process is not None
        with self._step(
            "Central returns: replay and conflicts",
            "Edges drain their outboxes; edge-us replays decisions older than edge-eu's, so they conflict.",
        ) as results:
            self.central_process.start()
            if self.central is not None:
                self.central.close()
            self.central = CentralClient(self.central_process.target)
            eu = self.edges["edge-eu"]
            took = wait_for_link(eu, "edge-eu", online=True, narrator=self.narrator)
            eu.flush()
            self.narrator.result(f"edge-eu online after {took:.1f} s and replayed its queue")
            self.edge_processes["edge-us"].start()
            us = self.edges["edge-us"]
            took = wait_for_link(us, "edge-us", online=True, narrator=self.narrator)
            us.flush()
            self.narrator.result(f"edge-us restarted, online after {took:.1f} s, replayed its queue from disk")
            statuses = self._central_counts().decision_statuses
            self.narrator.result(
                "read on doc-5 (policy: timestamp): the later decision wins, the earlier is kept as "
                f"history (decisions superseded so far: {statuses.get('superseded', 0)})"
            )
            conflicts = wait_for_conflicts(self._central(), self.narrator)
            for conflict in conflicts:
                self.narrator.result(
                    f"approve on {conflict.resource} (policy: manual): held for review; "
                    f"edge said {conflict.edge_effect}, central has {conflict.central_effect}"
                )
            if conflicts:
                resolver = self._central().resolve(conflicts[0].conflict_id, keep_edge=False, note="demo: keep central")
                self.narrator.result(f"resolved with 'keep central' by {resolver}; 'aeterna conflicts list' shows it")
            results.update(conflicts=len(conflicts), statuses=statuses)

    def _central_counts(self) -> CentralCounts:
        conninfo = EmbeddedPostgres(self.workdir / "central" / "postgres").conninfo()
        return central_counts(conninfo, self.sessions_written, self.vector_ids, self.decision_ids)

    def final_table(self) -> None:
        with self._step(
            "Nothing lost",
            "Counted in central's PostgreSQL: every item written at an edge is there exactly once.",
        ) as results:
            counts = self._central_counts()
            statuses = {name: edge.status() for name, edge in self._both()}
            pending = sum(sum(s.pending_items.values()) for s in statuses.values())
            dead = sum(sum(s.dead_letters.values()) for s in statuses.values())
            self.report.counts = {
                "sessions": {"written": len(self.sessions_written), "at_central": counts.sessions},
                "vectors": {"written": len(self.vector_ids), "at_central": counts.vectors},
                "decisions": {"written": len(self.decision_ids), "at_central": counts.decisions},
            }
            for row in self.report.counts.values():
                row["lost"] = row["written"] - row["at_central"]
            rows = [(layer, r["written"], r["at_central"], r["lost"]) for layer, r in self.report.counts.items()]
            self.narrator.table(("layer", "written at edges", "at central", "lost"), rows)
            self.narrator.result(f"decisions at central by status: {counts.decision_statuses}")
            self.narrator.result(f"outbox items still pending: {pending}; dead letters: {dead}")
            results.update(pending=pending, dead_letters=dead, lost=self.report.lost())

    def run(self) -> None:
        self.start_central()
        self.start_edges()
        self.publish_policy()
        self.working_memory()
        self.session_sync()
        self.read_through()
        self.vector_search()
        self.authorize()
        self.outage()
        self.reconnect()
        self.final_table()

    def close(self) -> None:
        for edge in self.edges.values():
            edge.close()
        if self.central is not None:
            self.central.close()
        self.factory.close()


def wait_for_cached(edge: EdgeClient, query: list[float], narrator: Narrator) -> Any:
    """Search until the central hits have been cached locally (caching does not block answers)."""
    holder: dict[str, Any] = {}

    def cached() -> bool:
        holder["result"] = edge.search(query, limit=5, threshold=0.5)
        return bool(holder["result"].central_count == 0)

    wait_for(cached, 30, "the edge to cache central's hits", narrator)
    return holder["result"]


def wait_for_conflicts(central: CentralClient, narrator: Narrator) -> list[Any]:
    """The conflicts central flagged once both edges replayed."""
    holder: dict[str, Any] = {}

    def flagged() -> bool:
        holder["conflicts"] = central.conflicts()
        return bool(holder["conflicts"])

    try:
        wait_for(flagged, 20, "the replayed decisions to be reconciled", narrator)
    except TimeoutError:
        return []
    return list(holder["conflicts"])


def run(args: argparse.Namespace) -> int:
    """Handler of ``aeterna demo``."""
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="aeterna-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = Report()
    narrator = Narrator(sys.stdout, Tour.TOTAL_STEPS)
    print(f"Aeterna Hybrid demo — working directory {workdir}")
    tour = Tour(workdir, narrator, report, fast=args.fast)
    code = 0
    try:
        tour.run()
        print(f"\nDone in {narrator.elapsed():.0f} s; {report.lost()} item(s) lost.")
        if args.keep_running:
            _keep_running(tour)
    except KeyboardInterrupt:
        code = 130
    except Exception as error:
        print(f"\nThe demo stopped: {error}\nLogs are in {workdir}/*/service.log", file=sys.stderr)
        code = 1
    finally:
        if args.report:
            Path(args.report).write_text(json.dumps({"ok": report.ok and code == 0, **report.__dict__}, indent=2))
        tour.close()
    return code


def _keep_running(tour: Tour) -> None:
    assert tour.central_process is not None
    print("\nServices are still running (Ctrl-C stops them):")
    print(f"  central  {tour.central_process.target}")
    for name, edge in tour.edges.items():
        print(f"  {name:8} {edge.target}")
    edge_target = next(iter(tour.edges.values())).target
    print("\nTry:")
    print(f"  aeterna status --target {edge_target}")
    print(f"  grpcurl -plaintext {edge_target} list")
    central_target = tour.central_process.target
    print(f"  grpcurl -plaintext -H 'x-aeterna-agent-id: me' {central_target} aeterna.sync.v1.SyncService/ListEdges")
    while True:
        time.sleep(3600)


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``aeterna demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="start a central and two edges on embedded defaults and tour the data flows",
        description=(
            "Starts one central (embedded PostgreSQL 18 + pgvector) and two edges in two regions "
            "(each with its own redis-server, Qdrant Edge shard and outbox) and walks through the "
            "spec's data flows: working and session memory, session sync, read-through, vector "
            "fallback, policy push, a central outage, replay with conflicts, and a final tally."
        ),
    )
    parser.add_argument("--keep-running", action="store_true", help="leave the services up afterwards")
    parser.add_argument("--fast", action="store_true", help="shorter health-check intervals and smaller data")
    parser.add_argument("--workdir", help="where the services keep their data (default: a new temp folder)")
    parser.add_argument("--report", help="write what happened as JSON to this file")
    parser.set_defaults(handler=run)
