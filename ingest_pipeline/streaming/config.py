"""What a streamer is told (``StreamerConfig``) and the errors it stops with."""

from __future__ import annotations

import dataclasses

from botocore.config import Config

from ingest_pipeline.binance.stream import (
    MAX_STREAMS_PER_CONNECTION,
    StreamConfig,
)
from ingest_pipeline.records import STREAMED
from ingest_pipeline.storage.kinesis import ProducerConfig

# What the streamer reads from the WebSocket and puts on Kinesis (the registry's streamed types).
DATA_TYPES = tuple(t.name for t in STREAMED)
# S3 calls of the lease and checkpoint: short, so that a slow renewal lets the lease lapse
# (and the producer stop) rather than hold the process in one call past the lease's end.
STATE_S3_CONFIG = Config(
    connect_timeout=2, read_timeout=5, retries={"total_max_attempts": 2, "mode": "standard"}
)
# A depth snapshot older than the first diff after a gap cannot be bridged: fetched again.
RESYNC_ATTEMPTS = 5


class UnknownSymbolError(ValueError):
    """A configured symbol that Binance does not list (``exchangeInfo``)."""


class StreamerStopping(Exception):
    """Raised inside a REST backoff sleep once the streamer stops."""


@dataclasses.dataclass(frozen=True)
class StreamerConfig:
    symbols: tuple[str, ...] | None = None  # default: settings.symbols
    deadletter_dir: str = "var/streamer/deadletter"
    spill_dir: str = "var/streamer/spill"
    # The parent of every run's own spill dir: spill files a dead or fenced predecessor left
    # there are adopted and replayed (None: only ``spill_dir`` itself).
    spill_root: str | None = None
    # Keys remembered per data type. Must cover a rollover overlap or a reconnect replay:
    # 100k keys is minutes of BTCUSDT trades; ~100 bytes a key.
    dedup_window: int = 100_000
    stream: StreamConfig = dataclasses.field(default_factory=StreamConfig)
    # Online consumers want records now: a quiet stream's record waits at most 5 ms for
    # company, while under load batches fill by count anyway (bench/stream_latency.py: p99
    # ~22 ms at 5k msg/s with 5 ms, ~160 ms with the producer's default 50 ms).
    producer: ProducerConfig = dataclasses.field(
        default_factory=lambda: ProducerConfig(linger_s=0.005)
    )
    max_streams_per_connection: int = MAX_STREAMS_PER_CONNECTION
    health_host: str = "127.0.0.1"
    health_port: int | None = None  # None: no health server; 0: a free port
    shutdown_flush_timeout_s: float = 30.0
    # /health: a data type silent this long (with connections open) makes the status degraded.
    stale_after_s: float = 60.0
    # /health: a depth gap this recent makes the status degraded.
    recent_gap_s: float = 60.0
    progress_interval_s: float = 0.0  # 0: no progress log line
    # Trade ids missed on the stream (a restart, a dropped connection) are fetched from REST
    # historicalTrades, up to this many per hole (0: off); the older rest of a longer hole is
    # a gap record. 50,000 ids are 50 pages (1,250 weight): ~25 min of BTCUSDT at its busiest.
    backfill_max_trades: int = 50_000
    # A symbol holds at most this many live trades while its hole is filled; past that the
    # unfilled rest of the hole becomes a gap record (memory stays bounded).
    max_held_trades: int = 20_000
    # A hole found mid-stream waits this long before REST: the missing ids are often still on
    # their way on the other link of a rollover overlap.
    fill_delay_s: float = 0.25
    # At start, a symbol's fill waits this long for its first live trade (see ``_fill``).
    resume_wait_s: float = 3.0
    # A graceful stop lets the fills in progress finish for up to this long (usually one
    # REST page), so the live trades they hold go out instead of waiting for the next process.
    stop_fill_grace_s: float = 5.0
    # Check the symbols against exchangeInfo at start.
    check_symbols: bool = True
    # Durable continuity (lease, checkpoint, tail read, gap records) under
    # s3://{bucket}/{state_prefix}/; the lease and checkpoint are per ``name``.
    continuity: bool = True
    name: str = "default"
    state_prefix: str = "streamer"
    lease_ttl_s: float = 30.0
    lease_renew_s: float = 5.0
    lease_skew_s: float = 1.0
    # The tail read starts this long before the checkpoint's time (clock skew, acks in
    # flight); without any checkpoint it reads this far back.
    tail_lead_s: float = 60.0
    tail_lookback_s: float = 900.0
    # Depth snapshot after a start or a gap, published on the depth stream (0 levels: off).
    resync_depth_limit: int = 1000
    # The streamer's REST weight budget (fills, resyncs, exchangeInfo), a share of the IP's
    # 6000/min so that the bronze assets always keep room; bursts up to ``rest_burst_weight``.
    rest_weight_per_minute: int = 3000
    rest_burst_weight: int = 500
