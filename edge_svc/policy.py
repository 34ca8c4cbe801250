"""The Cedar agent: decisions against the current bundle, online or offline.

A bundle is parsed once per version into cedarpy's ``PolicySet`` and
``Entities`` handles and swapped in with one attribute assignment, so a
decision in flight always sees one whole bundle. Bundles arrive over
``WatchPolicies`` (the ``PolicyWatcher`` reconnects with backoff and resumes
from the version it holds; a stream central ends after it lived a while, as
each does when its connection reaches ``central.maxConnectionAge``, is
re-opened at once, not after a growing delay) and are persisted, so an edge restarted without a
network decides with the last bundle it had. Before any bundle exists every
request is denied with an error that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import cedarpy

from aeterna_shared.errors import InvalidArgument
from edge_svc.backoff import backoff_delay
from edge_svc.link import LinkMonitor
from edge_svc.ports import Central
from edge_svc.records import DecisionRecord, JsonDict, PolicyBundleRecord, now_ns
from edge_svc.store.bundle_file import BundleFile
from edge_svc.sync import SyncEngine

_log = logging.getLogger(__name__)

NO_BUNDLE_ERROR = "no policy bundle has been received from central yet; every request is denied"


@dataclass(frozen=True)
class CompiledBundle:
    """A bundle parsed once: cedarpy handles plus the names of its positional policy ids."""

    record: PolicyBundleRecord
    policies: Any
    entities: Any
    names: dict[str, str]


@dataclass(frozen=True)
class Verdict:
    """The outcome of one authorization."""

    allowed: bool
    reasons: list[str]
    errors: list[str]
    policy_version: int
    decision_id: str
    offline: bool


def compile_bundle(record: PolicyBundleRecord) -> CompiledBundle:
    """Parse a bundle; raises ValueError naming the policy that does not parse."""
    names: dict[str, str] = {}
    position = 0
    for policy_id, text in record.policies:
        try:
            count = len(cedarpy.PolicySet.from_str(text))
        except ValueError as error:
            raise ValueError(f"policy {policy_id!r} does not parse: {error}") from None
        for index in range(count):
            names[f"policy{position}"] = policy_id if count == 1 else f"{policy_id}#{index}"
            position += 1
    policies = cedarpy.PolicySet.from_str("\n".join(text for _, text in record.policies))
    entities = cedarpy.Entities.from_json_str(record.entities_json or "[]")
    return CompiledBundle(record, policies, entities, names)


class CedarAgent:
    """Decides with the current bundle and records every decision for replay."""

    def __init__(self, bundle_file: BundleFile, sync: SyncEngine, link: LinkMonitor) -> None:
        self._file = bundle_file
        self._sync = sync
        self._link = link
        self._current: CompiledBundle | None = None
        persisted = bundle_file.load()
        if persisted is not None:
            try:
                self._current = compile_bundle(persisted)
                _log.info("loaded persisted policy bundle version %d", persisted.version)
            except ValueError as error:
                _log.error("persisted policy bundle version %d does not parse: %s", persisted.version, error)

    @property
    def version(self) -> int:
        """Version in force; 0 when none."""
        return self._current.record.version if self._current else 0

    def apply(self, record: PolicyBundleRecord) -> bool:
        """Parse, persist and swap in a newer bundle; returns whether it was applied."""
        if record.version <= self.version:
            return False
        try:
            compiled = compile_bundle(record)
        except ValueError as error:
            _log.error("policy bundle version %d refused, keeping %d: %s", record.version, self.version, error)
            return False
        self._file.save(record)
        self._current = compiled
        _log.info("policy bundle version %d in force", record.version)
        return True

    async def authorize(
        self, principal: str, action: str, resource: str, context: JsonDict, entities_json: str
    ) -> Verdict:
        """Decide, record the decision durably, and return the verdict."""
        for name, value in (("principal", principal), ("action", action), ("resource", resource)):
            if not value:
                raise InvalidArgument.for_field(name, 'must be a Cedar entity uid such as User::"alice"')
        bundle = self._current
        offline = not self._link.online
        decision_id = str(uuid.uuid4())
        if bundle is None:
            verdict = Verdict(False, [], [NO_BUNDLE_ERROR], 0, decision_id, offline)
        else:
            entities: Any = bundle.entities
            if entities_json:
                entities = _merge_entities(bundle.record.entities_json, entities_json)
            request = {"principal": principal, "action": action, "resource": resource, "context": context}
            try:
                result = cedarpy.is_authorized(request, bundle.policies, entities)
            except ValueError as error:
                raise InvalidArgument(f"the request is not a valid Cedar request: {error}") from None
            diagnostics = result.diagnostics
            verdict = Verdict(
                bool(result.allowed),
                [bundle.names.get(r, r) for r in diagnostics.reasons],
                [str(e) for e in diagnostics.errors],
                bundle.record.version,
                decision_id,
                offline,
            )
        await self._sync.record_decision(
            DecisionRecord(
                decision_id=decision_id,
                decide_time=now_ns(),
                principal=principal,
                action=action,
                resource=resource,
                allowed=verdict.allowed,
                policy_version=verdict.policy_version,
                metadata={"context": context} if context else {},
                offline=offline,
            )
        )
        return verdict


def _merge_entities(bundle_json: str, extra_json: str) -> Any:
    try:
        extra = json.loads(extra_json)
    except json.JSONDecodeError as error:
        raise InvalidArgument.for_field("entities_json", f"is not JSON: {error.msg}") from None
    if not isinstance(extra, list):
        raise InvalidArgument.for_field("entities_json", "must be a JSON list of Cedar entities")
    try:
        return cedarpy.Entities.from_json_str(json.dumps([*json.loads(bundle_json or "[]"), *extra]))
    except ValueError as error:
        raise InvalidArgument.for_field("entities_json", f"is not a valid Cedar entity list: {error}") from None


ESTABLISHED_SECONDS = 5.0
"""A watch stream open at least this long before it ended does not count as a failed attempt (no backoff growth)."""


def _why(error: Exception) -> str:
    """One line for how a watch stream ended (an RPC error's code and details, not its multi-line repr)."""
    code, details = getattr(error, "code", None), getattr(error, "details", None)
    if callable(code) and callable(details):
        return f"{getattr(code(), 'name', code())}: {details()}"
    return str(error) or type(error).__name__


class PolicyWatcher:
    """Keeps a ``WatchPolicies`` stream open while online and applies what it brings."""

    def __init__(self, agent: CedarAgent, central: Central, link: LinkMonitor, retry_base: float) -> None:
        self._agent = agent
        self._central = central
        self._link = link
        self._retry_base = retry_base
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="policy-watch")

    async def _run(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            await self._link.wait_online()
            opened = loop.time()
            try:
                async for bundle in self._central.watch_policies(self._agent.version):
                    attempt = 0
                    self._agent.apply(bundle)
                    if not self._link.online:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as error:
                _log.info("policy watch ended (%s); watching again from version %d", _why(error), self._agent.version)
            if loop.time() - opened >= ESTABLISHED_SECONDS:
                # A stream that lived was no failed attempt: central ended it (its connection reached
                # central.maxConnectionAge, a replica stopped), so the next one is opened without a growing delay.
                attempt = 0
            await asyncio.sleep(backoff_delay(attempt, self._retry_base, 30.0))
            attempt += 1

    async def stop(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
