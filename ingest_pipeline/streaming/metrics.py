"""Prometheus metrics of one streamer, in its own ``CollectorRegistry`` (never the global one,
so a process or a test can run several streamers)."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ingest_pipeline.storage.kinesis import ProducerStats

# Receive -> PutRecords acknowledged, seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 200, 300, 400, 500)


class _ProducerCollector(Collector):
    """Producer counters read from ``stats()`` at scrape time (the producer keeps the totals)."""

    def __init__(self, stats: Callable[[], ProducerStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self._stats()
        if s is None:
            return
        counters = {
            "put": ("records handed to the producer", s.put),
            "acknowledged": ("records acknowledged by Kinesis", s.acknowledged),
            "failed_entries": ("PutRecords entries refused (retried)", s.failed_entries),
            "retried": ("records sent again after a failure", s.retried),
            "call_failures": ("PutRecords calls that failed as a whole", s.call_failures),
            "spilled": ("records written to the spill directory", s.spilled),
            "replayed": ("records replayed from spill files", s.replayed),
            "batches": ("PutRecords calls made", s.batches_sent),
            "circuit_opens": ("times the circuit breaker opened", s.circuit_opens),
            "journaled": ("records also journaled to disk while queued", s.journaled),
            "disk_errors": ("failed spill disk operations", s.disk_errors),
            "spill_unreadable_bytes": ("spill file bytes unreadable", s.spill_unreadable_bytes),
            "spill_adopted_files": ("spill files adopted from dead producers", s.adopted_files),
        }
        for name, (doc, value) in counters.items():
            c = CounterMetricFamily(f"streamer_kinesis_records_{name}", doc)
            if name in (
                "batches",
                "circuit_opens",
                "call_failures",
                "disk_errors",
                "spill_unreadable_bytes",
                "spill_adopted_files",
            ):
                c = CounterMetricFamily(f"streamer_kinesis_{name}", doc)
            c.add_metric([], value)
            yield c
        gauges = {
            "streamer_kinesis_buffer_records": ("records buffered in memory", s.buffer_records),
            "streamer_kinesis_buffer_bytes": ("bytes buffered in memory", s.buffer_bytes),
            "streamer_kinesis_spill_files": ("spill files not yet replayed", s.spill_files),
            "streamer_kinesis_last_batch_records": (
                "records in the last batch",
                s.last_batch_records,
            ),
            "streamer_kinesis_max_batch_records": ("largest batch sent", s.max_batch_records_seen),
            "streamer_kinesis_unspilled_records": (
                "records waiting in memory for the spill disk",
                s.unspilled_records,
            ),
            "streamer_kinesis_disk_error": (
                "1 while the spill disk fails",
                s.disk_error is not None,
            ),
            "streamer_kinesis_fenced": ("1 once the gate fenced the producer", s.fenced),
        }
        for name, (doc, value) in gauges.items():
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        g = GaugeMetricFamily(
            "streamer_kinesis_circuit_state", "circuit breaker state", labels=["state"]
        )
        for state in ("closed", "open", "half_open"):
            g.add_metric([state], 1.0 if s.circuit_state == state else 0.0)
        yield g
        c = CounterMetricFamily(
            "streamer_kinesis_records_dropped", "records given up, by reason", labels=["reason"]
        )
        for reason, n in sorted(s.dropped_reasons.items()):
            c.add_metric([reason], n)
        yield c


class _ReconnectCollector(Collector):
    def __init__(self, reasons: Callable[[], dict[str, int]]) -> None:
        self._reasons = reasons

    def collect(self) -> Iterator[CounterMetricFamily]:
        c = CounterMetricFamily(
            "streamer_reconnects", "connection replacements, by reason", labels=["reason"]
        )
        # A label value must be a str, whatever type a reason is counted under; one series each.
        by_label: collections.Counter[str] = collections.Counter()
        for reason, n in self._reasons().items():
            by_label[str(reason)] += n
        for reason, n in sorted(by_label.items()):
            c.add_metric([reason], n)
        yield c


class StreamerMetrics:
    def __init__(
        self,
        producer_stats: Callable[[], ProducerStats | None],
        reconnect_reasons: Callable[[], dict[str, int]],
    ) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.messages_in = Counter(
            "streamer_messages_in", "frames received, by data type", ["data_type"], registry=r
        )
        self.messages_out = Counter(
            "streamer_messages_out",
            "records handed to the Kinesis producer, by Kinesis stream",
            ["stream"],
            registry=r,
        )
        self.duplicates = Counter(
            "streamer_duplicates", "records dropped as duplicates", ["data_type"], registry=r
        )
        self.malformed = Counter(
            "streamer_malformed", "malformed frames (dead-lettered)", registry=r
        )
        self.control = Counter("streamer_control_messages", "control replies", registry=r)
        self.server_shutdowns = Counter(
            "streamer_server_shutdowns", "serverShutdown events", registry=r
        )
        self.gaps = Counter("streamer_depth_gaps", "depth diff gaps", ["symbol"], registry=r)
        self.connections = Gauge("streamer_connections_open", "open WebSocket links", registry=r)
        self.last_message_age = Gauge(
            "streamer_last_message_age_seconds",
            "seconds since the last message, by data type",
            ["data_type"],
            registry=r,
        )
        self.batch_size = Histogram(
            "streamer_kinesis_ack_batch_records",
            "records acknowledged per PutRecords call",
            ["stream"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "streamer_receive_to_ack_seconds",
            "receive time (ingest_ts) -> PutRecords acknowledged, oldest record of each batch",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_ProducerCollector(producer_stats))
        r.register(_ReconnectCollector(reconnect_reasons))
