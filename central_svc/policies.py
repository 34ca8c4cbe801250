"""The policy authority: validated, versioned Cedar bundles, and pushing every new version to watchers.

Publishing validates every policy with cedarpy (its parser, and the validator
when a schema is given) and refuses the whole bundle, naming the policy and
cedarpy's message, when one is invalid. Versions are assigned by the database
(one sequence of versions for all replicas). Every replica keeps one
``PolicyHub`` that fans new versions out to its watchers; the hub learns of
new versions through PostgreSQL ``LISTEN/NOTIFY`` (see ``store.policy_listener``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import cedarpy

from aeterna_shared.errors import Aborted, InvalidArgument
from central_svc.ports import PolicyStore

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyContent:
    """What a publisher sends."""

    policies: tuple[tuple[str, str], ...]
    """(policy id, Cedar text) pairs."""
    schema_json: str = ""
    entities_json: str = ""

    def checksum(self) -> str:
        """Hex SHA-256 over a canonical JSON of the content."""
        canonical = json.dumps(
            {"policies": [list(p) for p in self.policies], "schema": self.schema_json, "entities": self.entities_json},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> bytes:
        """Storage encoding."""
        return json.dumps(
            {"policies": [list(p) for p in self.policies], "schema": self.schema_json, "entities": self.entities_json}
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PolicyContent:
        """Inverse of ``to_json``."""
        document = json.loads(raw)
        return cls(
            policies=tuple((str(p[0]), str(p[1])) for p in document["policies"]),
            schema_json=document.get("schema", ""),
            entities_json=document.get("entities", ""),
        )


@dataclass(frozen=True)
class Bundle:
    """A published version."""

    version: int
    content: PolicyContent
    checksum: str
    publisher: str
    published_at: datetime


def validate(content: PolicyContent) -> None:
    """INVALID_ARGUMENT naming the first invalid policy and cedarpy's message."""
    if not content.policies:
        raise InvalidArgument.for_field("policies", "a bundle needs at least one policy", reason="EMPTY_BUNDLE")
    seen: set[str] = set()
    schema: Any = None
    if content.schema_json:
        schema = _schema(content.schema_json)
    if content.entities_json:
        try:
            cedarpy.Entities.from_json_str(content.entities_json)
        except (ValueError, TypeError) as error:
            raise InvalidArgument.for_field("entities_json", str(error), reason="INVALID_ENTITIES") from None
    for index, (policy_id, text) in enumerate(content.policies):
        field = f"policies[{index}]"
        if not policy_id or policy_id in seen:
            raise InvalidArgument.for_field(
                f"{field}.policy_id", f"policy id {policy_id!r} is empty or repeated", reason="INVALID_POLICY"
            )
        seen.add(policy_id)
        try:
            cedarpy.PolicySet.from_str(text)
        except ValueError as error:
            raise InvalidArgument(
                f"policy {policy_id!r} is not valid Cedar: {error}",
                reason="INVALID_POLICY",
                metadata={"policy_id": policy_id},
                violations=(),
            ) from None
        if schema is not None:
            try:
                result = cedarpy.validate_policies(text, schema)
            except (TypeError, ValueError) as error:
                raise InvalidArgument(
                    f"policy {policy_id!r} cannot be validated against the schema: {error}",
                    reason="INVALID_POLICY",
                    metadata={"policy_id": policy_id},
                ) from None
            if not result.validation_passed:
                problems = "; ".join(str(getattr(e, "error", e)) for e in result.errors)
                raise InvalidArgument(
                    f"policy {policy_id!r} does not validate against the schema: {problems}",
                    reason="INVALID_POLICY",
                    metadata={"policy_id": policy_id},
                )


_JSON_KINDS: dict[type, str] = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _schema(schema_json: str) -> Any:
    """The parsed Cedar schema (JSON format); INVALID_ARGUMENT with a readable message for a bad one.

    cedarpy takes a schema handle or Cedar text: handing it any other JSON value
    (a list, a number) raised a TypeError that surfaced as INTERNAL, and a JSON
    object that is no schema failed every policy with a parse error instead of
    naming the schema.
    """
    try:
        document = json.loads(schema_json)
    except json.JSONDecodeError as error:
        raise InvalidArgument.for_field("schema_json", f"not JSON: {error}", reason="INVALID_SCHEMA") from None
    if not isinstance(document, dict):
        raise InvalidArgument.for_field(
            "schema_json",
            f"must be a JSON object (a Cedar schema in JSON format), not {_JSON_KINDS.get(type(document), 'that')}",
            reason="INVALID_SCHEMA",
        )
    try:
        return cedarpy.Schema.from_json_str(schema_json)
    except (TypeError, ValueError) as error:
        raise InvalidArgument.for_field(
            "schema_json", f"is not a valid Cedar schema: {error}", reason="INVALID_SCHEMA"
        ) from None


class PolicyHub:
    """Per-process fan-out of new bundle versions to the watchers connected to this replica."""

    def __init__(self, store: PolicyStore) -> None:
        self._store = store
        # None in a queue tells its watcher that the replica is shutting down.
        self._watchers: set[asyncio.Queue[Bundle | None]] = set()
        self._version = 0
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def watcher_count(self) -> int:
        """How many watchers are connected to this replica."""
        return len(self._watchers)

    async def refresh(self) -> None:
        """Re-read the store and push every version newer than the last one pushed.

        Called on each notification and after the listener reconnects, so a
        version published while the listener was down is pushed too.
        """
        async with self._lock:
            bundles = await self._store.newer_than(self._version)
            for bundle in bundles:
                self._version = max(self._version, bundle.version)
                for queue in list(self._watchers):
                    queue.put_nowait(bundle)
            if bundles:
                _log.info("policy version %d pushed to %d watcher(s)", self._version, len(self._watchers))

    def close(self) -> None:
        """End every watch stream, so a shutting-down replica is not held open by them.

        Watch streams never finish on their own; without this, a graceful stop
        would wait its whole grace period. Edges reconnect (to another replica)
        with backoff and resume from the version they know.
        """
        self._closed = True
        for queue in list(self._watchers):
            queue.put_nowait(None)

    async def watch(self, known_version: int) -> AsyncIterator[Bundle]:
        """The current bundle when newer than ``known_version``, then every new version, until ``close``."""
        queue: asyncio.Queue[Bundle | None] = asyncio.Queue()
        # Subscribe before reading, so that a version published in between is not missed.
        self._watchers.add(queue)
        if self._closed:
            queue.put_nowait(None)
        try:
            last = known_version
            current = await self._store.latest()
            if current is not None and current.version > last:
                last = current.version
                yield current
            while (bundle := await queue.get()) is not None:
                if bundle.version > last:
                    last = bundle.version
                    yield bundle
        finally:
            self._watchers.discard(queue)


class PolicyAuthority:
    """Publishing and reading bundles."""

    def __init__(self, store: PolicyStore, hub: PolicyHub) -> None:
        self._store = store
        self.hub = hub

    async def publish(self, content: PolicyContent, publisher: str, expected_version: int) -> Bundle:
        """Validate and store the next version; watchers everywhere get it through NOTIFY."""
        validate(content)
        bundle = await self._store.publish(content, content.checksum(), publisher, expected_version)
        _log.info("policy version %d published by %s (%d policies)", bundle.version, publisher, len(content.policies))
        # This replica need not wait for its own notification.
        await self.hub.refresh()
        return bundle

    async def get(self, version: int) -> Bundle | None:
        """A version, or the newest when ``version`` is 0."""
        return await (self._store.latest() if version == 0 else self._store.get(version))


def stale_version(expected: int, current: int) -> Aborted:
    """The error for an optimistic-concurrency miss."""
    return Aborted(
        f"expected current policy version {expected}, but it is {current}; re-read and retry",
        reason="POLICY_VERSION_CONFLICT",
        metadata={"current_version": str(current)},
    )
