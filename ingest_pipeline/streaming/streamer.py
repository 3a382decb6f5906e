"""The streamer: Binance WebSocket frames -> records -> Kinesis (SPEC §1-§3, §5).

Per frame, on the event loop thread: ``parse_ws_message`` (with the configured symbols), route
by data type (trade / bba / depth_delta -> the three Kinesis streams), drop duplicates by record
key over a bounded window (rollover overlaps, reconnect replays), check the depth chain per
symbol (``U == previous u + 1``; the first diff after a gap carries ``"gap": true``), then
``KinesisProducer.put(stream, symbol, orjson.dumps(record))``, which never blocks on the
network. Malformed frames are counted, logged and dead-lettered with the raw frame. Every
record carries ``epoch``: the lease epoch of the process that put it (``records.PRODUCER_EPOCH``).

Delivery is at least once end to end: the producer retries, spills and replays; duplicates
that reach Kinesis (a timed-out call that was stored) carry the same record key, so a consumer
deduplicates by key exactly like bronze does.

Continuity across processes (``continuity.py``, ``lease.py``). At start, before any record:
1. ``exchangeInfo`` (one call): a symbol Binance does not list stops the start, named.
2. The lease of ``cfg.name`` in S3 (waiting, as a standby, while another process holds it).
   It is renewed every ``lease_renew_s`` with the checkpoint as its payload; the producer may
   only call PutRecords while it is valid, and a lost lease stops the streamer (``LeaseLost``).
3. The checkpoint left by the previous holder plus the trade stream's tail since it: per symbol
   the id up to which everything is on Kinesis (the *frontier*).
Then it streams. Trades go out in id order per symbol: a symbol whose next id is not the one
after its frontier (the hole left by a restart, or a dropped connection) holds its live trades
while ``historicalTrades`` fills the hole, then emits the fill, then what it held. Holes longer
than ``backfill_max_trades`` (or that REST cannot fill) become durable gap records. Depth: the
first diff after a start or a chain gap triggers a REST snapshot of that symbol, published on
the depth stream as a ``DepthSnapshot`` record (a resync point for every book downstream). All
REST calls share one weight pacer (``rest_weight_per_minute``).

The class is in five modules along its seams: this one (the hot path: routing, dedup, chain
checks; the lifecycle: start, run, stop, flush), ``takeover`` (continuity across processes:
the lease, the checkpoint, the resume points), ``gapfill`` (trade-id holes: REST fills, gap
records), ``resync`` (depth chain gaps: REST snapshots) and ``report`` (progress, ``/health``,
``/metrics``); ``config`` holds ``StreamerConfig``.

API for the Dagster job (no Dagster import here)::

    streamer = Streamer(settings, StreamerConfig(...))
    await streamer.run(stop_event)          # or: streamer.run_until(threading_event)
    streamer.health()                       # JSON-able snapshot, any thread
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import aiohttp
import orjson

from ingest_pipeline.binance.normalize import (
    CONTROL,
    SERVER_SHUTDOWN,
    parse_ws_message,
)
from ingest_pipeline.binance.rest import (
    BinanceRestClient,
)
from ingest_pipeline.binance.stream import (
    DEFAULT_KINDS,
    AttemptLimiter,
    Link,
    ShardConnection,
    shard_streams,
)
from ingest_pipeline.records import (
    DEPTH_DELTA,
    PRODUCER_EPOCH,
    TRADE,
    MalformedPayload,
    record_key,
)
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.circuit import CircuitState
from ingest_pipeline.storage.kinesis import (
    KinesisProducer,
    ProducerClosedError,
    ProducerFencedError,
    ProducerStats,
    RecordSink,
    RecordTooLargeError,
    producer_client,
)
from ingest_pipeline.streaming.config import (
    DATA_TYPES,
    StreamerConfig,
)
from ingest_pipeline.streaming.continuity import (
    AckTracker,
    GapStore,
    Resume,
    WeightPacer,
)
from ingest_pipeline.streaming.deadletter import DeadLetterWriter
from ingest_pipeline.streaming.gapfill import GapFill, TradeIds
from ingest_pipeline.streaming.health import HealthServer
from ingest_pipeline.streaming.lease import LeaseLost, S3Lease
from ingest_pipeline.streaming.metrics import StreamerMetrics
from ingest_pipeline.streaming.report import Reporting
from ingest_pipeline.streaming.resync import DepthResync, DepthSync
from ingest_pipeline.streaming.takeover import Takeover
from ingest_pipeline.symbols import parse_symbols

log = logging.getLogger(__name__)


class DedupWindow:
    """The last ``capacity`` keys seen; ``add`` is False for a key still in the window."""

    __slots__ = ("_order", "_seen", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: set[Hashable] = set()
        self._order: collections.deque[Hashable] = collections.deque()

    def add(self, key: Hashable) -> bool:
        seen = self._seen
        if key in seen:
            return False
        seen.add(key)
        order = self._order
        order.append(key)
        if len(order) > self.capacity:
            seen.discard(order.popleft())
        return True

    def __len__(self) -> int:
        return len(self._seen)


class Streamer(GapFill, DepthResync, Takeover, Reporting):
    """Streams ``symbols`` from Binance into the three Kinesis streams until stopped.

    ``kinesis_client``: what the producer calls (default: ``producer_client(settings)``; a
    ``NoopKinesisClient`` for benchmarks). ``producer``: a ready ``RecordSink`` instead (the
    streamer then only flushes it, and the ack-latency metrics stay empty).
    """

    def __init__(
        self,
        settings: Settings,
        config: StreamerConfig | None = None,
        *,
        kinesis_client: Any = None,
        producer: RecordSink | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = cfg = config or StreamerConfig()
        # The one symbol check for every origin (ingest_pipeline.symbols): unsafe ones refused.
        self.symbols = parse_symbols(cfg.symbols or settings.symbols)
        self._symbol_set = frozenset(self.symbols)
        self._routes = {t: settings.stream_of(t) for t in DATA_TYPES}
        self._keys = {t: record_key(t) for t in DATA_TYPES}
        self._dedup = {t: DedupWindow(cfg.dedup_window) for t in DATA_TYPES}
        self._kinesis_client = kinesis_client
        self._producer: RecordSink | None = producer
        self._owns_producer = producer is None
        self.deadletter = DeadLetterWriter(cfg.deadletter_dir)

        self.counts: collections.Counter[str] = collections.Counter()
        self.messages_in = dict.fromkeys(DATA_TYPES, 0)
        self.records_out = dict.fromkeys(DATA_TYPES, 0)
        self.duplicates = dict.fromkeys(DATA_TYPES, 0)
        self.gaps: collections.Counter[str] = collections.Counter()
        self._last_gap: float | None = None
        self._last_u: dict[str, int] = {}
        self._trades: dict[str, TradeIds] = {s: TradeIds() for s in self.symbols}
        self._depth: dict[str, DepthSync] = {s: DepthSync() for s in self.symbols}
        self._depth_started: set[str] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._gap_writes: set[asyncio.Future[None]] = set()  # awaited at stop, never cancelled
        self._rest: BinanceRestClient | None = None
        self._rest_stop = threading.Event()
        self.pacer = WeightPacer(cfg.rest_weight_per_minute, cfg.rest_burst_weight)
        # Continuity (set up by ``run``).
        self.lease: S3Lease | None = None
        self.epoch: int | None = None
        self._acks: AckTracker | None = None
        self._gap_store: GapStore | None = None
        self.resume: dict[str, Resume] = {}
        self.takeover: dict[str, Any] = {}
        self.fills: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self.resyncs: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self.gap_records: list[dict[str, Any]] = []
        self.fenced: str | None = None
        self._checkpoint_at: float | None = None
        self._last_msg: dict[str, float] = {}
        self._last_msg_symbol: dict[tuple[str, str], float] = {}
        self.circuit_changes: list[tuple[str, str]] = []

        self.shards: list[ShardConnection] = []
        self.metrics = StreamerMetrics(self._producer_stats, self._reconnect_reasons)
        m = self.metrics
        self._m_in = {t: m.messages_in.labels(t) for t in DATA_TYPES}
        self._m_out = {t: m.messages_out.labels(self._routes[t]) for t in DATA_TYPES}
        self._m_dup = {t: m.duplicates.labels(t) for t in DATA_TYPES}

        self.state = "created"
        self.started_at: float | None = None
        self.health_url: str | None = None
        self.flushed_clean: bool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # --- the hot path ----------------------------------------------------------------------

    def on_frame(self, raw: str | bytes, ingest_ts: int, link: Link | None = None) -> bool:
        """Handle one frame; True when it announced a server shutdown (hand over now)."""
        try:
            data_type, record = parse_ws_message(raw, ingest_ts, self._symbol_set)
        except MalformedPayload as exc:
            self._dead_letter(exc.reason, raw, ingest_ts, link)
            return False
        stream = self._routes.get(data_type)
        if stream is None:
            if data_type == SERVER_SHUTDOWN:
                self.counts["server_shutdown"] += 1
                self.metrics.server_shutdowns.inc()
                log.warning("serverShutdown on link %s: handing over", link and link.id)
                return True
            if data_type == CONTROL:
                self.counts["control"] += 1
                self.metrics.control.inc()
                log.info("control message: %s", record)
                return False
            # A valid record of a type we did not subscribe to: kept aside, not dropped.
            self._dead_letter(f"unexpected data type {data_type!r}", raw, ingest_ts, link)
            return False
        self.messages_in[data_type] += 1
        self._m_in[data_type].inc()
        now = time.monotonic()
        symbol = record["symbol"]
        self._last_msg[data_type] = now
        self._last_msg_symbol[(data_type, symbol)] = now
        if data_type == TRADE:
            self._on_trade(record["trade_id"], record, raw, ingest_ts, link)
        else:
            self._emit(data_type, stream, record, symbol, raw, ingest_ts, link)
        return False

    def _emit(
        self,
        data_type: str,
        stream: str,
        record: dict[str, Any],
        symbol: str,
        raw: Any,
        ingest_ts: int,
        link: Link | None,
    ) -> bool:
        """Put one record (unless its key was seen in the window); True when it was put."""
        if self.lease is not None and not self.lease.valid():
            self._lapsed()
            return False
        if not self._dedup[data_type].add(self._keys[data_type](record)):
            self.duplicates[data_type] += 1
            self._m_dup[data_type].inc()
            return False
        if data_type == DEPTH_DELTA:
            self._check_chain(record, symbol)
        if self.epoch is not None:
            record[PRODUCER_EPOCH] = self.epoch
        try:
            # run() sets the producer before the first frame: no None check on the hot path.
            self._producer.put(stream, symbol, orjson.dumps(record))  # type: ignore[union-attr]
        except RecordTooLargeError as exc:
            self._dead_letter(str(exc), raw, ingest_ts, link)
            return False
        except ProducerClosedError as exc:
            self._refused(exc)
            return False
        self.records_out[data_type] += 1
        self._m_out[data_type].inc()
        return True

    def _lapsed(self) -> None:
        """The lease lapsed (a frozen process that woke up, S3 out of reach past the ttl):
        nothing taken in from now on is put, not even into the spill a successor would replay.
        What it was is not lost: the successor fills trades from the last checkpoint."""
        self.counts["put_refused"] += 1
        if self.fenced is None:
            assert self.lease is not None
            self.fenced = f"lease epoch {self.epoch} lapsed ({self.lease.lost or 'not renewed'})"
            log.error("%s; stopping", self.fenced)
            if self._stop is not None:
                self._stop.set()

    def _refused(self, exc: ProducerClosedError) -> None:
        """The producer takes nothing more: it was fenced (the lease was lost) or closed. The
        record is not lost: the next holder fills from the last checkpoint."""
        self.counts["put_refused"] += 1
        if self.fenced is None and isinstance(exc, ProducerFencedError):
            self.fenced = f"the Kinesis producer was fenced: {exc}"
            log.error("%s; stopping", self.fenced)
            if self._stop is not None:
                self._stop.set()

    def _dead_letter(self, reason: str, raw: Any, ingest_ts: int, link: Link | None) -> None:
        self.counts["malformed"] += 1
        self.metrics.malformed.inc()
        log.warning("malformed frame dead-lettered: %s", reason)
        try:
            self.deadletter.write(reason, raw, ingest_ts, link=link.id if link else None)
        except OSError:
            self.counts["deadletter_errors"] += 1
            log.exception("cannot write dead-letter file; frame was: %r", raw)

    # --- producer hooks (sender thread) ------------------------------------------------------

    def _on_ack(self, stream: str, n: int, oldest_enqueue: float) -> None:
        self.metrics.batch_size.labels(stream).observe(n)
        self.metrics.latency.labels(stream).observe(time.monotonic() - oldest_enqueue)

    def _on_circuit_change(self, old: CircuitState, new: CircuitState) -> None:
        self.circuit_changes.append((str(old), str(new)))
        log.warning("kinesis circuit %s -> %s", old, new)

    def _producer_stats(self) -> ProducerStats | None:
        return self._producer.stats() if self._producer is not None else None

    def _reconnect_reasons(self) -> dict[str, int]:
        total: collections.Counter[str] = collections.Counter()
        for sh in self.shards:
            total.update({str(k): v for k, v in sh.reconnect_reasons.items()})
        return dict(total)

    # --- lifecycle ---------------------------------------------------------------------------

    def _make_producer(self) -> RecordSink:
        client = self._kinesis_client or producer_client(self.settings)
        gate = self._gate if self.cfg.continuity else None
        self._acks = AckTracker(client, self._routes[TRADE], gate)
        return KinesisProducer(
            self._acks,
            self.cfg.spill_dir,
            self.cfg.producer,
            on_ack=self._on_ack,
            on_circuit_change=self._on_circuit_change,
            gate=gate,
            adopt_from=self.cfg.spill_root,
        )

    def stop(self) -> None:
        """Ask a running ``run`` to stop (thread-safe)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(
        self, stop_event: asyncio.Event | None = None, *, install_signal_handlers: bool = False
    ) -> None:
        """Stream until ``stop_event`` is set (or SIGTERM/SIGINT when asked to handle them),
        then stop reading, flush the producer and return. Raises ``UnknownSymbolError`` before
        streaming anything, and ``LeaseLost`` after stopping when another process took over."""
        if self.state != "created":
            raise RuntimeError("a Streamer runs once")
        self._loop = loop = asyncio.get_running_loop()
        self._stop = stop = stop_event or asyncio.Event()
        signals: list[signal.Signals] = []
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
                signals.append(sig)
        self.state = "starting"
        self.started_at = time.monotonic()
        health: HealthServer | None = None
        session: aiohttp.ClientSession | None = None
        tasks: list[asyncio.Task[None]] = []
        keeper_stop = threading.Event()
        keeper: threading.Thread | None = None
        try:
            if self.cfg.health_port is not None:
                health = HealthServer(self, self.cfg.health_host, self.cfg.health_port)
                self.health_url = await health.start()
                log.info("health on %s/health, metrics on %s/metrics", self.health_url,
                         self.health_url)  # fmt: skip
            # The spill dir first: a local lock held by another producer fails the start at
            # once. What the producer adopts from dead predecessors waits for the lease.
            if self._producer is None:
                self._producer = self._make_producer()
            if self.cfg.check_symbols:
                await self._check_symbols()
            if self.cfg.continuity:
                await self._take_over(stop)
                if stop.is_set():
                    return
            session = aiohttp.ClientSession()
            limiter = AttemptLimiter()
            kinds = DEFAULT_KINDS
            self.shards = [
                ShardConnection(
                    i,
                    self.settings.binance_ws_url,
                    streams,
                    self.on_frame,
                    session,
                    limiter,
                    self.cfg.stream,
                )  # fmt: skip
                for i, streams in enumerate(
                    shard_streams(self.symbols, kinds, self.cfg.max_streams_per_connection)
                )
            ]
            tasks = [asyncio.create_task(sh.run(), name=f"shard-{sh.shard}") for sh in self.shards]
            if self.lease is not None:
                keeper = threading.Thread(
                    target=self._keep_lease, args=(keeper_stop,), name="lease", daemon=True
                )
                keeper.start()
            if self.cfg.progress_interval_s > 0:
                tasks.append(asyncio.create_task(self._progress(), name="progress"))
            # Symbols with a known frontier fill the hole since it at once: quiet ones too.
            for sym, r in self.resume.items():
                if r.frontier is not None and self.cfg.backfill_max_trades > 0:
                    self._start_fill(sym, open_ended=True)
            self.state = "running"
            log.info("streaming %d symbols over %d connections (lease epoch %s)",
                     len(self.symbols), len(self.shards), self.epoch)  # fmt: skip
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            for t in done:
                if t is not waiter and (exc := t.exception()) is not None:
                    raise exc
        finally:
            self.state = "stopping"
            await self._shutdown(tasks, session, keeper_stop, keeper)
            if health is not None:
                await health.stop()
            for sig in signals:
                loop.remove_signal_handler(sig)
            self.state = "stopped"
        if self.fenced is not None:
            raise LeaseLost(self.fenced)

    async def _shutdown(
        self,
        tasks: list[asyncio.Task[None]],
        session: aiohttp.ClientSession | None,
        keeper_stop: threading.Event,
        keeper: threading.Thread | None,
    ) -> None:
        for sh in self.shards:
            sh.stop()
        for t in tasks:
            if t.get_name() == "progress":
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Fills in progress get a short grace (not when fenced: nothing may go out); past it
        # they and the resyncs are abandoned, their REST retries cut short: the checkpoint
        # stays below an unfilled hole, and the next process fills it.
        fills = [st.fill for st in self._trades.values() if st.fill is not None]
        if fills and not self.fenced and self.cfg.stop_fill_grace_s > 0:
            await asyncio.wait(fills, timeout=self.cfg.stop_fill_grace_s)
        self._rest_stop.set()
        if session is not None:
            await session.close()
        pending = list(self._tasks)
        for fut in pending:
            fut.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # Gaps whose next trade never came: written with an open end.
        for st in self._trades.values():
            if st.open_gaps:
                self._close_gaps(st, max(g["last_id"] for g in st.open_gaps) + 1, None)
        await asyncio.gather(*list(self._gap_writes), return_exceptions=True)
        producer = self._producer
        if producer is None:
            self.flushed_clean = True  # stopped before streaming: nothing was put
        else:
            # Fenced: nothing may be sent any more; what is pending goes to the spill dir.
            timeout = 1.0 if self.fenced else self.cfg.shutdown_flush_timeout_s
            if self._owns_producer:
                self.flushed_clean = await asyncio.to_thread(producer.close, timeout)
            else:
                self.flushed_clean = await asyncio.to_thread(producer.flush, timeout)
        # The lease is kept through the flush (it may take the whole flush timeout), then the
        # renewals stop. A renewal in flight ends within the state client's timeouts.
        keeper_stop.set()
        if keeper is not None:
            await asyncio.to_thread(keeper.join, 30)
        if self.lease is not None and self.fenced is None and self.epoch is not None:
            # The final checkpoint: everything acknowledged is in it; the lease is released
            # so the next process starts at once.
            try:
                released = await asyncio.to_thread(self.lease.release, self._checkpoint())
                log.info("lease epoch %d released: %s", self.epoch, released)
            except Exception as exc:
                log.warning("lease not released (the next holder waits for its expiry): %r", exc)
        self.deadletter.close()
        log.info("streamer stopped: %s", self.progress_line())

    def run_until(
        self,
        stop: threading.Event | Callable[[], bool] | None = None,
        duration_s: float | None = None,
        *,
        install_signal_handlers: bool = False,
    ) -> dict[str, Any]:
        """Blocking: run on a fresh event loop until ``stop`` is set/true or ``duration_s`` has
        passed; returns the final ``health()``."""
        is_set: Callable[[], bool]
        if stop is None:
            is_set = lambda: False  # noqa: E731
        elif isinstance(stop, threading.Event):
            is_set = stop.is_set
        else:
            is_set = stop
        deadline = None if duration_s is None else time.monotonic() + duration_s

        async def main() -> None:
            ev = asyncio.Event()

            async def watch() -> None:
                while not (is_set() or (deadline is not None and time.monotonic() >= deadline)):
                    await asyncio.sleep(0.1)
                ev.set()

            watcher = asyncio.create_task(watch())
            try:
                await self.run(ev, install_signal_handlers=install_signal_handlers)
            finally:
                watcher.cancel()

        asyncio.run(main())
        return self.health()

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.progress_interval_s)
            log.info("%s", self.progress_line())
