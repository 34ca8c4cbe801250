"""Process capacity: the open-file limit a server needs for thousands of streams.

Every edge holds one HTTP/2 connection to central (one socket, one file
descriptor), and central also holds its PostgreSQL pool, the LISTEN
connection, log files and the embedded database's sockets. Linux starts most
processes with a soft ``RLIMIT_NOFILE`` of 1,024 (systemd, Docker's default
and many shells), far below 10,000 edges, while the hard limit is usually
524,288 or 1,048,576. Raising the soft limit up to the hard one needs no
privilege, so central and edge do it themselves at start instead of asking
every operator to remember ``ulimit -n``: a server that runs out of
descriptors refuses connections with ``EMFILE`` in gRPC core's log, which is
hard to tell from a network fault at 3 a.m.

The limit is raised to ``min(hard, WANTED_OPEN_FILES)``, never lowered; where
the hard limit itself is below what ``streams`` need, one WARNING says so and
names the setting that helps (``ulimit -Hn`` / the container runtime's
``nofile`` ulimit).
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

WANTED_OPEN_FILES = 65_536
"""The soft limit asked for: 10,000 edge streams with room for pools, files and sockets to spare."""
DESCRIPTORS_PER_STREAM = 1
"""An HTTP/2 connection is one socket, whatever the number of streams on it."""
RESERVED_DESCRIPTORS = 256
"""Pools, the LISTEN connection, logs, SQLite/Redis/PostgreSQL sockets, the metrics server."""

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenFileLimit:
    """The soft limit before and after, and the hard limit."""

    before: int
    after: int
    hard: int

    def streams(self) -> int:
        """How many edge connections fit under the soft limit, after the reserve."""
        return max(0, (self.after - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_STREAM)


def _finite(value: int) -> int:
    return WANTED_OPEN_FILES * 16 if value == resource.RLIM_INFINITY else value


def raise_open_file_limit(wanted: int = WANTED_OPEN_FILES, *, expected_streams: int = 10_000) -> OpenFileLimit:
    """Raise the soft ``RLIMIT_NOFILE`` toward ``wanted`` (capped by the hard limit); log what was done."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, _finite(hard))
    after = soft
    if _finite(soft) < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            after = target
        except (ValueError, OSError) as error:  # a sandbox may forbid it; the old limit stays
            _log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, error)
    limit = OpenFileLimit(before=soft, after=after, hard=hard)
    if after != soft:
        _log.info("open-file limit raised from %d to %d (hard limit %d)", soft, after, hard)
    if limit.streams() < expected_streams:
        _log.warning(
            "the open-file limit %d leaves room for about %d connections (fewer than %d); raise the hard limit "
            "(ulimit -Hn, or the container runtime's nofile ulimit)",
            after,
            limit.streams(),
            expected_streams,
        )
    return limit
