"""The edge's Prometheus metrics (names in docs/observability.md and the Grafana dashboard).

Outbox depths, dead letters and last-sync times are read from the outbox when
Prometheus scrapes, so they can never drift from what ``GetEdgeStatus`` says;
so is ``aeterna_sync_degraded`` (1 while a channel cannot make progress
although the link is online). Batch and item outcomes, and the items central
refused (``aeterna_sync_refused_items_total``, dead-lettered), are counted as
acks arrive.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_svc.ports import Outbox
from edge_svc.records import Ack, Channel


class SyncMetrics:
    """Batch and item outcomes of the sync loops."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batches = Counter(
            "aeterna_sync_batches",
            "Batches sent to central, by channel and outcome.",
            ["channel", "status"],
            registry=registry,
        )
        self.items = Counter(
            "aeterna_sync_items",
            "Items sent to central, by channel and outcome.",
            ["channel", "status"],
            registry=registry,
        )
        self.refused = Counter(
            "aeterna_sync_refused_items",
            "Items central refused (one by one in an ack, or as a whole batch), moved to the dead letters.",
            ["channel", "reason"],
            registry=registry,
        )

    def acked(self, channel: Channel, ack: Ack) -> None:
        """Count one acknowledged batch."""
        status = "partial" if ack.failed else "accepted"
        self.batches.labels(channel.value, status).inc()
        self.items.labels(channel.value, "applied").inc(ack.processed)
        if ack.failed:
            self.items.labels(channel.value, "refused").inc(ack.failed)

    def dead_lettered(self, channel: Channel, reason: str, items: int) -> None:
        """Count items central refused that were moved to the dead letters (``reason`` is central's)."""
        self.refused.labels(channel.value, reason).inc(items)

    def send_failed(self, channel: Channel, batches: int) -> None:
        """Count batches whose send failed (they stay queued and are retried)."""
        self.batches.labels(channel.value, "failed").inc(batches)


class OutboxCollector(Collector):
    """Scrape-time gauges from the outbox and the link."""

    def __init__(
        self,
        outbox: Outbox,
        online: Callable[[], bool],
        policy_version: Callable[[], int],
        degraded: Callable[[], Mapping[Channel, str]] | None = None,
    ) -> None:
        """``degraded`` gives the channels that cannot make progress (``SyncEngine.degraded``)."""
        self._outbox = outbox
        self._online = online
        self._policy_version = policy_version
        self._degraded = degraded

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        depth = GaugeMetricFamily("aeterna_outbox_depth", "Items queued for central, by channel.", labels=["channel"])
        batches = GaugeMetricFamily("aeterna_outbox_batches", "Batches queued, by channel.", labels=["channel"])
        last = GaugeMetricFamily(
            "aeterna_last_sync_timestamp_seconds", "When a batch of the channel was last acked.", labels=["channel"]
        )
        lag = GaugeMetricFamily(
            "aeterna_sync_lag_seconds",
            "Seconds since the last ack while the channel has items waiting; 0 when nothing waits.",
            labels=["channel"],
        )
        dead = CounterMetricFamily(
            "aeterna_dead_letters",
            "Items moved to the dead-letter store, by channel and cause.",
            labels=["channel", "cause"],
        )
        now = time.time()
        for stats in self._outbox.stats():
            name = stats.channel.value
            depth.add_metric([name], stats.pending_items)
            batches.add_metric([name], stats.pending_batches)
            if stats.last_sync is not None:
                last.add_metric([name], stats.last_sync)
            waiting_since = stats.last_sync if stats.last_sync is not None else now
            lag.add_metric([name], max(now - waiting_since, 0.0) if stats.pending_items else 0.0)
        for channel, cause, items in self._outbox.dead_letter_counts():
            dead.add_metric([channel.value, cause], items)
        online = GaugeMetricFamily("aeterna_edge_online", "1 while the edge's link to central is online.")
        online.add_metric([], 1.0 if self._online() else 0.0)
        version = GaugeMetricFamily("aeterna_policy_version", "Version of the Cedar bundle in force.")
        version.add_metric([], float(self._policy_version()))
        degraded = GaugeMetricFamily(
            "aeterna_sync_degraded",
            "1 while the channel cannot make progress although the link is online (see GetEdgeStatus).",
            labels=["channel"],
        )
        stuck = self._degraded() if self._degraded is not None else {}
        for channel in Channel:
            degraded.add_metric([channel.value], 1.0 if channel in stuck else 0.0)
        yield from (depth, batches, last, lag, dead, online, version, degraded)
