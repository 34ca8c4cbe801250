"""Batch-signing keys: the edge's own key, and central's keyring by agent id."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import yaml

from aeterna_shared.config.model import SigningConfig
from aeterna_shared.errors import InvalidArgument

_log = logging.getLogger(__name__)

# Used only when nothing is configured, so that a development setup works out
# of the box. It is public, so it authenticates nothing; a warning says so.
DEVELOPMENT_KEY = b"aeterna-development-signing-key-not-secret"


class SigningKeyring:
    """Central's view: the HMAC key of each agent."""

    def __init__(self, keys: Mapping[str, bytes], default: bytes | None = None) -> None:
        self._keys = dict(keys)
        self._default = default

    def key_for(self, agent_id: str) -> bytes | None:
        """The agent's key, the development key when allowed, else None."""
        return self._keys.get(agent_id, self._default)

    @classmethod
    def from_config(cls, signing: SigningConfig) -> SigningKeyring:
        """Load ``sync.signing.keysFile`` (YAML/JSON mapping agent id -> key)."""
        path = signing.keys_file
        if path is None:
            _log.warning("no sync.signing.keysFile: accepting the public development signing key")
            return cls({}, DEVELOPMENT_KEY)
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise InvalidArgument(f"{path}: expected a mapping of agent id to key", reason="INVALID_CONFIG")
        return cls({str(agent): key.encode() for agent, key in loaded.items()})


def edge_signing_key(signing: SigningConfig) -> bytes:
    """The edge's own HMAC key: ``sync.signing.key``, ``keyFile``, or the development key."""
    if signing.key:
        return signing.key.encode()
    if signing.key_file:
        return Path(signing.key_file).read_text(encoding="utf-8").strip().encode()
    _log.warning("no sync.signing.key or keyFile: signing batches with the public development key")
    return DEVELOPMENT_KEY
