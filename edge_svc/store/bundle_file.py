"""Persistence of the current policy bundle, so that a restarted edge with no network still decides."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from edge_svc.records import PolicyBundleRecord

_log = logging.getLogger(__name__)


class BundleFile:
    """One JSON file, replaced atomically (write, fsync, rename, fsync the directory)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def load(self) -> PolicyBundleRecord | None:
        """The persisted bundle, or None when there is none (or it is unreadable, which is logged)."""
        try:
            return PolicyBundleRecord.from_json(json.loads(self._path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            _log.error("persisted policy bundle %s is unreadable, ignoring it: %s", self._path, error)
            return None

    def save(self, bundle: PolicyBundleRecord) -> None:
        """Replace the persisted bundle."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(bundle.to_json(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self._path)
        fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
