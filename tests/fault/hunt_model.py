"""The loss hunt's model of what an edge acknowledged, and the exact comparison with central's PostgreSQL.

The model only ever holds what an RPC answered OK. A call can end three ways (``classify``):

* ``ok``: acknowledged; it is in the model and must be at central, exactly once, with this content;
* ``refused``: a definite refusal (RESOURCE_EXHAUSTED, INVALID_ARGUMENT, ..., or the edge was not
  listening at all); it is not in the model and what it carried must NOT be at central;
* ``ambiguous``: the call may or may not have been applied (the edge died under it, the cache
  connection broke, INTERNAL); what it carried is *allowed* at central but not required.

Sessions are modelled as the list of their turns' ids (every turn carries an id; its content is the
same id, so a turn is still recognised if an older edge drops ``message_id``) and their state dict:

* ``PutSession`` replaces both (the turns it replaced must be gone at central);
* ``AppendSessionMessages`` appends its turns and shallow-merges its patch. Appends issued one after
  the other are a fixed order. Appends issued concurrently (one burst of appenders) form a *group*:
  each call's turns stay together and in order, but the calls may land in any order. Concurrent
  appenders patch disjoint keys, so the group's state does not depend on that order.

``compare`` reads nothing itself: ``read_central`` fetches the rows, ``compare`` judges them and
returns every finding as one precise line (which session/decision/vector, what was expected, what
central has), sorted into lost / duplicated / wrong.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aeterna.memory.v1 import memory_pb2
from google.protobuf import json_format
from grpc import StatusCode, aio

OK, REFUSED, AMBIGUOUS = "ok", "refused", "ambiguous"

_DEFINITE = {
    StatusCode.INVALID_ARGUMENT,
    StatusCode.RESOURCE_EXHAUSTED,
    StatusCode.FAILED_PRECONDITION,
    StatusCode.PERMISSION_DENIED,
    StatusCode.UNAUTHENTICATED,
    StatusCode.NOT_FOUND,
    StatusCode.ALREADY_EXISTS,
    StatusCode.OUT_OF_RANGE,
    StatusCode.UNIMPLEMENTED,
}
"""Codes the edge answers *before* it keeps anything (the design: it refuses before answering)."""


def classify(error: aio.AioRpcError) -> str:
    """``refused`` when the call was certainly not applied, else ``ambiguous``."""
    code = error.code()
    if code in _DEFINITE:
        return REFUSED
    details = (error.details() or "").lower()
    if code == StatusCode.UNAVAILABLE and ("connection refused" in details or "failed to connect" in details):
        return REFUSED  # nothing listened: the request never reached an edge
    return AMBIGUOUS


def _short(ids: list[str] | set[str], limit: int = 8) -> str:
    items = sorted(ids) if isinstance(ids, set) else list(ids)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more


def _state_text(state: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={_clip(v)}" for k, v in sorted(state.items())) + "}"


def _clip(value: object) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} chars)"


Group = list[tuple[str, ...]]
"""Turn sequences that landed in one burst: each stays whole and in order, the sequences in any order."""


@dataclass
class SessionModel:
    """What the edge acknowledged for one session (see the module docstring)."""

    session_id: str
    exists: bool = False
    segments: list[Group] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    maybe_ids: set[str] = field(default_factory=set)
    """Turns of calls that may or may not have been applied: allowed, not required."""
    maybe_state: dict[str, set[Any]] = field(default_factory=dict)
    replaced_ids: set[str] = field(default_factory=set)
    """Acknowledged turns that a later acknowledged PutSession replaced: they must be gone."""
    refused_ids: set[str] = field(default_factory=set)
    """Turns of refused calls: they must never appear."""
    uncertain: str = ""
    """Why this session cannot be judged exactly (a PutSession whose outcome stayed unknown)."""

    @property
    def expected_ids(self) -> list[str]:
        return [turn for group in self.segments for seq in group for turn in seq]

    def put(self, ids: list[str], state: dict[str, Any]) -> None:
        self.replaced_ids |= set(self.expected_ids)
        self.segments = [[tuple(ids)]] if ids else []
        self.state = dict(state)
        self.maybe_state = {}
        self.exists = True

    def append(self, calls: list[tuple[list[str], dict[str, Any]]]) -> None:
        """Acknowledged appends: one call is a fixed step, several (a burst) form one group."""
        group = [tuple(ids) for ids, _ in calls if ids]
        if group:
            self.segments.append(group)
        for _, patch in calls:
            self.state.update(patch)
        self.exists = self.exists or bool(calls)

    def maybe(self, ids: list[str], patch: dict[str, Any]) -> None:
        self.maybe_ids |= set(ids)
        for key, value in patch.items():
            self.maybe_state.setdefault(key, set()).add(value)

    def refused(self, ids: list[str]) -> None:
        self.refused_ids |= set(ids)


@dataclass
class HuntModel:
    """Everything one interleaving (one Hypothesis example) had acknowledged."""

    prefix: str
    agent_id: str
    sessions: dict[str, SessionModel] = field(default_factory=dict)
    decisions: set[str] = field(default_factory=set)
    vectors: dict[str, list[list[float]]] = field(default_factory=dict)
    """vector id -> every acknowledged version, oldest first (central must hold the last one)."""
    maybe_vectors: dict[str, list[list[float]]] = field(default_factory=dict)
    episodes: set[str] = field(default_factory=set)
    maybe_episodes: set[str] = field(default_factory=set)

    def session(self, session_id: str) -> SessionModel:
        return self.sessions.setdefault(session_id, SessionModel(session_id))

    @property
    def acked_turns(self) -> int:
        return sum(len(s.expected_ids) for s in self.sessions.values())


@dataclass
class CentralRows:
    """What central's PostgreSQL holds for the ids a model names."""

    sessions: dict[str, list[memory_pb2.Session]]
    decisions: dict[str, list[str]]
    """decision id -> owning agent ids (one per row)."""
    vectors: dict[str, list[list[float]]]
    episodes: dict[str, int]


@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Deviations that lose nothing by themselves (a turn stored without its message_id: the hunt still
    knows it by its content, and a duplicate it causes is reported as such)."""

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.wrong)

    def text(self, limit: int = 40) -> str:
        lines: list[str] = []
        for name in ("lost", "duplicated", "wrong", "uncertain", "notes"):
            found: list[str] = getattr(self, name)
            lines += [f"  {name.upper()}: {line}" for line in found[:limit]]
            if len(found) > limit:
                lines.append(f"  ... {len(found) - limit} more {name}")
        return "\n".join(lines)


def read_central(conninfo: str, model: HuntModel) -> CentralRows:
    """Read the rows of every id the model names, straight from central's PostgreSQL."""
    vector_ids = sorted(set(model.vectors) | set(model.maybe_vectors))
    episode_ids = sorted(model.episodes | model.maybe_episodes)
    with psycopg.connect(conninfo) as conn:
        sessions: dict[str, list[memory_pb2.Session]] = {}
        for sid, data in conn.execute(
            "SELECT session_id, data FROM session_memory WHERE session_id = ANY(%s)", (list(model.sessions),)
        ):
            sessions.setdefault(str(sid), []).append(memory_pb2.Session.FromString(bytes(data)))
        decisions: dict[str, list[str]] = {}
        for did, agent in conn.execute(
            "SELECT decision_id, agent_id FROM decisions WHERE decision_id = ANY(%s)", (sorted(model.decisions),)
        ):
            decisions.setdefault(str(did), []).append(str(agent))
        vectors: dict[str, list[list[float]]] = {}
        for vid, text in conn.execute(
            "SELECT vector_id, embedding::text FROM vectors WHERE vector_id = ANY(%s)", (vector_ids,)
        ):
            vectors.setdefault(str(vid), []).append([float(x) for x in str(text).strip("[]").split(",")])
        episodes = {
            str(eid): int(n)
            for eid, n in conn.execute(
                "SELECT episode_id, count(*) FROM episodes WHERE episode_id = ANY(%s) GROUP BY episode_id",
                (episode_ids,),
            )
        }
    return CentralRows(sessions, decisions, vectors, episodes)


def _turn_key(message: memory_pb2.SessionMessage) -> str:
    """A turn's identity: its id, or its content (which the hunt sets to the id) if the id was dropped."""
    return message.message_id or message.content


def match_groups(segments: list[Group], got: list[str]) -> bool:
    """Does ``got`` read as the groups in order, each group's sequences whole but in any order?"""
    pos = 0
    for group in segments:
        remaining = [seq for seq in group if seq]
        while remaining:
            if pos >= len(got):
                return False
            seq = next((s for s in remaining if s[0] == got[pos]), None)
            if seq is None or tuple(got[pos : pos + len(seq)]) != seq:
                return False
            pos += len(seq)
            remaining.remove(seq)
    return pos == len(got)


def _render(segments: list[Group]) -> str:
    parts = []
    for group in segments:
        if len(group) == 1:
            parts.append(" ".join(group[0]))
        else:
            parts.append("{" + " | ".join(" ".join(seq) for seq in group) + "}")
    return " ; ".join(parts)


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(1.0, abs(a))


def _same_vector(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))


def check_session(expected: SessionModel, rows: list[memory_pb2.Session], verdict: Verdict) -> None:
    """Judge one session against central's rows for its id."""
    sid = expected.session_id
    if len(rows) > 1:
        verdict.duplicated.append(f"session {sid}: {len(rows)} rows at central")
    if not expected.exists:
        for row in rows:
            keys = [_turn_key(m) for m in row.messages]
            bad = [k for k in keys if k not in expected.maybe_ids]
            if bad:
                verdict.wrong.append(
                    f"session {sid}: never acknowledged, yet central holds turns {_short(bad)} "
                    f"(refused: {_short([k for k in bad if k in expected.refused_ids])})"
                )
        return
    want = expected.expected_ids
    if not rows:
        verdict.lost.append(
            f"session {sid}: missing at central; expected {len(want)} turns {_short(want)} "
            f"state {_state_text(expected.state)}"
        )
        return
    row = rows[0]
    keys = [_turn_key(m) for m in row.messages]
    dropped_ids = [m.content for m in row.messages if not m.message_id]
    if dropped_ids:
        verdict.notes.append(
            f"session {sid}: {len(dropped_ids)} turns without message_id at central, e.g. {dropped_ids[:3]}"
        )
    if expected.uncertain:
        verdict.uncertain.append(f"session {sid}: {expected.uncertain}; central has {len(keys)} turns")
        counts = Counter(keys)
        verdict.duplicated += [f"session {sid}: turn {k} x{n}" for k, n in counts.items() if n > 1]
        return
    counts = Counter(keys)
    for key, n in counts.items():
        if n > 1:
            verdict.duplicated.append(f"session {sid}: turn {key} stored {n} times (positions {_positions(keys, key)})")
    present = set(keys)
    lost = [t for t in want if t not in present]
    if lost:
        verdict.lost.append(
            f"session {sid}: {len(lost)} of {len(want)} acknowledged turns missing: {_short(lost)}; "
            f"central has {len(keys)} turns {_short(keys, 12)}"
        )
    allowed = set(want) | expected.maybe_ids
    stale = [k for k in present if k in expected.replaced_ids and k not in allowed]
    if stale:
        verdict.wrong.append(
            f"session {sid}: {len(stale)} turns replaced by a later acknowledged PutSession are still at central: "
            f"{_short(set(stale))}"
        )
    refused = [k for k in present if k in expected.refused_ids and k not in allowed]
    if refused:
        verdict.wrong.append(f"session {sid}: turns of refused calls are at central: {_short(set(refused))}")
    unknown = [k for k in present if k not in allowed | expected.replaced_ids | expected.refused_ids]
    if unknown:
        verdict.wrong.append(f"session {sid}: turns nobody sent to this session: {_short(set(unknown))}")
    want_set = set(want)
    seen: set[str] = set()
    order: list[str] = []
    for key in keys:
        if key in want_set and key not in seen:
            seen.add(key)
            order.append(key)
    kept = [[tuple(t for t in seq if t in present) for seq in group] for group in expected.segments]
    if not match_groups(kept, order):
        verdict.wrong.append(
            f"session {sid}: turn order differs; expected {_render(kept)} ; central has {' '.join(order)}"
        )
    state = json_format.MessageToDict(row.state) if row.HasField("state") else {}
    for key, value in expected.state.items():
        if key not in state:
            if key not in expected.maybe_state:
                verdict.lost.append(
                    f"session {sid}: state key {key!r} (acknowledged {_clip(value)}) missing at central"
                )
        elif state[key] != value and state[key] not in expected.maybe_state.get(key, set()):
            verdict.wrong.append(
                f"session {sid}: state {key!r} is {_clip(state[key])} at central, acknowledged {_clip(value)}"
            )
    extra = [k for k in state if k not in expected.state and k not in expected.maybe_state]
    if extra:
        verdict.wrong.append(
            f"session {sid}: state keys at central that no acknowledged write since the last put holds: "
            f"{_state_text({k: state[k] for k in extra})}"
        )


def _positions(keys: list[str], key: str) -> list[int]:
    return [i for i, k in enumerate(keys) if k == key]


def compare(model: HuntModel, rows: CentralRows) -> Verdict:
    """Every acknowledged item at central exactly once with its acknowledged content."""
    verdict = Verdict()
    for sid in sorted(model.sessions):
        check_session(model.sessions[sid], rows.sessions.get(sid, []), verdict)
    for did in sorted(model.decisions):
        owners = rows.decisions.get(did, [])
        if not owners:
            verdict.lost.append(f"decision {did}: acknowledged by Authorize, missing at central")
        elif len(owners) > 1:
            verdict.duplicated.append(f"decision {did}: {len(owners)} rows at central")
        elif owners[0] != model.agent_id:
            verdict.wrong.append(f"decision {did}: owned by {owners[0]!r} at central, decided by {model.agent_id!r}")
    for vid in sorted(set(model.vectors) | set(model.maybe_vectors)):
        versions = model.vectors.get(vid, [])
        maybe = model.maybe_vectors.get(vid, [])
        stored = rows.vectors.get(vid, [])
        if len(stored) > 1:
            verdict.duplicated.append(f"vector {vid}: {len(stored)} rows at central")
        if not versions:
            continue
        if not stored:
            verdict.lost.append(f"vector {vid}: {len(versions)} acknowledged versions, none at central")
            continue
        got = stored[0]
        if _same_vector(got, versions[-1]) or any(_same_vector(got, m) for m in maybe):
            continue
        older = next((i for i, v in enumerate(versions[:-1]) if _same_vector(got, v)), None)
        what = (
            f"acknowledged version {older + 1} of {len(versions)} (an older one)"
            if older is not None
            else "no acknowledged version"
        )
        verdict.wrong.append(
            f"vector {vid}: central holds {what}: {got[:3]}..., newest acknowledged {versions[-1][:3]}..."
        )
    for eid in sorted(model.episodes):
        n = rows.episodes.get(eid, 0)
        if n == 0:
            verdict.lost.append(f"episode {eid}: acknowledged, missing at central")
        elif n > 1:
            verdict.duplicated.append(f"episode {eid}: {n} rows at central")
    return verdict
