"""The streamer: Binance WebSocket frames -> records -> Kinesis (SPEC §1-§3, §5).

Per frame, on the event loop thread: ``parse_ws_message`` (with the configured symbols), route
by data type (trade / bba / depth_delta -> the three Kinesis streams), drop duplicates by record
key over a bounded window (rollover overlaps, reconnect replays), check the depth chain per
symbol (``U == previous u + 1``; the first diff after a gap carries ``"gap": true``), then
``KinesisProducer.put(stream, symbol, orjson.dumps(record))``, which never blocks on the
network. Malformed frames are counted, logged and dead-lettered with the raw frame.

Delivery is at least once end to end: the producer retries, spills and replays; duplicates
that reach Kinesis (a timed-out call that was stored) carry the same record key, so a consumer
deduplicates by key exactly like bronze does.

API for the Dagster job (no Dagster import here)::

    streamer = Streamer(settings, StreamerConfig(...))
    await streamer.run(stop_event)          # or: streamer.run_until(threading_event)
    streamer.health()                       # JSON-able snapshot, any thread
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
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
    trade_from_rest,
)
from ingest_pipeline.binance.rest import WEIGHT_HISTORICAL_TRADES, BinanceRestClient
from ingest_pipeline.binance.stream import (
    DEFAULT_KINDS,
    MAX_STREAMS_PER_CONNECTION,
    AttemptLimiter,
    Link,
    ShardConnection,
    StreamConfig,
    now_ms,
    shard_streams,
)
from ingest_pipeline.records import BBA, DEPTH_DELTA, TRADE, MalformedPayload, record_key
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.kinesis import (
    CircuitState,
    KinesisProducer,
    ProducerConfig,
    ProducerStats,
    RecordSink,
    RecordTooLargeError,
    producer_client,
)
from ingest_pipeline.streaming.deadletter import DeadLetterWriter
from ingest_pipeline.streaming.metrics import StreamerMetrics
from ingest_pipeline.symbols import parse_symbols

log = logging.getLogger(__name__)

DATA_TYPES = (TRADE, BBA, DEPTH_DELTA)


@dataclasses.dataclass(frozen=True)
class StreamerConfig:
    symbols: tuple[str, ...] | None = None  # default: settings.symbols
    deadletter_dir: str = "var/streamer/deadletter"
    spill_dir: str = "var/streamer/spill"
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
    # Trade ids missed on the stream (a dropped connection) are fetched from REST
    # historicalTrades, up to this many per gap (0: off).
    backfill_max_trades: int = 50_000


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


class Streamer:
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
        self._routes = {
            TRADE: settings.kinesis_trade_stream,
            BBA: settings.kinesis_bba_stream,
            DEPTH_DELTA: settings.kinesis_depth_stream,
        }
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
        self._last_tid: dict[str, int] = {}
        # The link that delivered a symbol's last trade: if it was replaced since, trades sent
        # on it after that one may have been cut off with it (checked at shutdown).
        self._tid_link: dict[str, int] = {}
        self._backfills: set[asyncio.Future[None]] = set()
        self._rest: BinanceRestClient | None = None
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
    ) -> None:
        if not self._dedup[data_type].add(self._keys[data_type](record)):
            self.duplicates[data_type] += 1
            self._m_dup[data_type].inc()
            return
        if data_type == DEPTH_DELTA:
            self._check_chain(record, symbol)
        elif data_type == TRADE:
            if self._check_trade_ids(record["trade_id"], symbol):
                # Only the newest id moves the tail: a backfilled trade or a late one of an old
                # link must not hide that the newest came on a link since replaced.
                self._tid_link[symbol] = link.id if link is not None else -1
        try:
            self._producer.put(stream, symbol, orjson.dumps(record))  # type: ignore[union-attr]
        except RecordTooLargeError as exc:
            self._dead_letter(str(exc), raw, ingest_ts, link)
            return
        self.records_out[data_type] += 1
        self._m_out[data_type].inc()

    # --- trade ids: Binance numbers a symbol's trades consecutively -------------------------

    def _check_trade_ids(self, tid: int, symbol: str) -> bool:
        """Track the newest id of ``symbol`` (a hole before it is backfilled); True when
        ``tid`` is that newest id now."""
        prev = self._last_tid.get(symbol)
        if prev is None or tid > prev:
            self._last_tid[symbol] = tid
            if prev is not None and tid > prev + 1:
                self._trade_gap(symbol, prev + 1, tid - 1)
            return True
        return False

    def _trade_gap(self, symbol: str, first: int, last: int) -> None:
        n = last - first + 1
        self.counts["trade_gaps"] += 1
        self.counts["trade_gap_ids"] += n
        if self.cfg.backfill_max_trades <= 0 or self._loop is None:
            self.counts["trade_ids_unfilled"] += n
            log.error("trade ids %d..%d of %s missed (backfill off)", first, last, symbol)
            return
        if n > self.cfg.backfill_max_trades:
            # Too long an outage for this path: the hourly REST bronze covers it.
            self.counts["trade_ids_unfilled"] += n - self.cfg.backfill_max_trades
            log.error("trade ids %d..%d of %s missed; backfilling the last %d only", first,
                      last, symbol, self.cfg.backfill_max_trades)  # fmt: skip
            first = last - self.cfg.backfill_max_trades + 1
            n = self.cfg.backfill_max_trades
        log.warning("trade ids %d..%d of %s missed on the stream: backfilling %d over REST",
                    first, last, symbol, n)  # fmt: skip
        self._spawn_backfill(symbol, first, last)

    def _spawn_backfill(
        self, symbol: str, first: int, last: int | None, until_ms: int | None = None
    ) -> None:
        task = asyncio.ensure_future(self._backfill(symbol, first, last, until_ms))
        self._backfills.add(task)
        task.add_done_callback(self._backfills.discard)

    async def _backfill(
        self, symbol: str, first: int, last: int | None, until_ms: int | None = None
    ) -> None:
        """Trades ``first..last`` from REST; with ``last=None``, the trades from ``first`` with a
        trade time <= ``until_ms`` (a tail check at shutdown, one page)."""

        def fetch() -> list[Any]:
            if self._rest is None:
                self._rest = BinanceRestClient(self.settings.binance_rest_url)
            items: list[Any] = []
            if last is None:
                page = self._rest.get(
                    "/api/v3/historicalTrades",
                    {"symbol": symbol, "fromId": first, "limit": 1000},
                    WEIGHT_HISTORICAL_TRADES,
                )
                return [
                    t for t in page.items if isinstance(t, dict) and t.get("time", 0) <= until_ms
                ]
            for page in self._rest.historical_trades_range(symbol, first, last):
                items.extend(page.items)
            return items

        try:
            items = await asyncio.to_thread(fetch)
        except Exception as exc:
            self.counts["backfill_failures"] += 1
            self.counts["trade_ids_unfilled"] += 0 if last is None else last - first + 1
            log.error("backfill of %s trades %d..%d failed: %r", symbol, first, last, exc)
            return
        ingest_ts = now_ms()
        stream = self._routes[TRADE]
        for item in items:
            try:
                record = trade_from_rest(item, symbol, ingest_ts)
            except MalformedPayload as exc:
                self._dead_letter(f"backfill: {exc.reason}", item, ingest_ts, None)
                continue
            self.counts["trades_backfilled"] += 1
            self._emit(TRADE, stream, record, symbol, item, ingest_ts, None)
        if last is None:
            if items:
                log.warning("tail check of %s: %d trades after id %d recovered over REST",
                            symbol, len(items), first - 1)  # fmt: skip
            return
        missing = (last - first + 1) - len(items)
        if missing > 0:
            self.counts["trade_ids_unfilled"] += missing
            log.error("backfill of %s trades %d..%d returned %d of them", symbol, first, last,
                      len(items))  # fmt: skip

    def _check_chain(self, record: dict[str, Any], symbol: str) -> None:
        first, final = record["first_update_id"], record["final_update_id"]
        prev = self._last_u.get(symbol)
        if prev is not None and first != prev + 1:
            if final <= prev:
                # An older diff of another batching (never seen on one chain): delivered, but
                # it neither extends nor breaks the chain.
                self.counts["depth_stale"] += 1
                return
            record["gap"] = True
            self.gaps[symbol] += 1
            self.metrics.gaps.labels(symbol).inc()
            self._last_gap = time.monotonic()
            log.warning(
                "depth gap on %s: U=%d after u=%d (%d update ids missing)",
                symbol, first, prev, first - prev - 1,
            )  # fmt: skip
        self._last_u[symbol] = final

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
        return KinesisProducer(
            client,
            self.cfg.spill_dir,
            self.cfg.producer,
            on_ack=self._on_ack,
            on_circuit_change=self._on_circuit_change,
        )

    def stop(self) -> None:
        """Ask a running ``run`` to stop (thread-safe)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(
        self, stop_event: asyncio.Event | None = None, *, install_signal_handlers: bool = False
    ) -> None:
        """Stream until ``stop_event`` is set (or SIGTERM/SIGINT when asked to handle them),
        then stop reading, flush the producer and return."""
        from ingest_pipeline.streaming.health import HealthServer

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
        if self._producer is None:
            self._producer = self._make_producer()
        health: HealthServer | None = None
        session = aiohttp.ClientSession()
        tasks: list[asyncio.Task[None]] = []
        try:
            if self.cfg.health_port is not None:
                health = HealthServer(self, self.cfg.health_host, self.cfg.health_port)
                self.health_url = await health.start()
                log.info("health on %s/health, metrics on %s/metrics", self.health_url,
                         self.health_url)  # fmt: skip
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
            if self.cfg.progress_interval_s > 0:
                tasks.append(asyncio.create_task(self._progress(), name="progress"))
            self.state = "running"
            log.info("streaming %d symbols over %d connections", len(self.symbols),
                     len(self.shards))  # fmt: skip
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            for t in done:
                if t is not waiter and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            self.state = "stopping"
            await self._shutdown(tasks, session)
            if health is not None:
                await health.stop()
            for sig in signals:
                loop.remove_signal_handler(sig)
            self.state = "stopped"

    async def _shutdown(
        self, tasks: list[asyncio.Task[None]], session: aiohttp.ClientSession
    ) -> None:
        stop_ms = now_ms()
        live = {link.id for sh in self.shards for link in sh.links}
        suspects = [sym for sym, lid in self._tid_link.items() if lid >= 0 and lid not in live]
        for sh in self.shards:
            sh.stop()
        for t in tasks:
            if t.get_name() == "progress":
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
        if self.cfg.backfill_max_trades > 0:
            # A symbol whose last trade came on a link that has been replaced since, with no
            # trade after it: the link's last frames may be lost, and no later id shows the hole.
            for sym in suspects:
                self._spawn_backfill(sym, self._last_tid[sym] + 1, None, stop_ms)
        if self._backfills:
            # Trades already known missing: fetch them before the final flush.
            await asyncio.wait(list(self._backfills), timeout=self.cfg.shutdown_flush_timeout_s)
        # No frame arrives any more: everything put is in the producer.
        producer = self._producer
        assert producer is not None
        timeout = self.cfg.shutdown_flush_timeout_s
        if self._owns_producer:
            self.flushed_clean = await asyncio.to_thread(producer.close, timeout)
        else:
            self.flushed_clean = await asyncio.to_thread(producer.flush, timeout)
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

    # --- reporting ---------------------------------------------------------------------------

    def progress_line(self) -> str:
        s = self._producer_stats()
        ins = " ".join(f"{t}={self.messages_in[t]}" for t in DATA_TYPES)
        dups = sum(self.duplicates.values())
        line = (
            f"in {ins} | out {sum(self.records_out.values())} dup {dups} "
            f"gaps {sum(self.gaps.values())} malformed {self.counts['malformed']} "
            f"reconnects {sum(sh.reconnects for sh in self.shards)}"
        )
        if s is not None:
            line += (
                f" | kinesis acked {s.acknowledged} buffer {s.buffer_records} "
                f"spilled {s.spilled} retried {s.retried} circuit {s.circuit_state}"
            )
        return line

    def health(self) -> dict[str, Any]:
        """A JSON-able snapshot: ``status`` ok/degraded/down with ``reasons``, and the figures."""
        now = time.monotonic()
        s = self._producer_stats()
        shards = [sh.snapshot() for sh in self.shards]
        connected = sum(1 for sh in self.shards if sh.connected)
        down: list[str] = []
        degraded: list[str] = []
        if self.state != "running":
            down.append(f"streamer {self.state}")
        elif connected == 0:
            down.append("no WebSocket connection open")
        elif connected < len(self.shards):
            n = len(self.shards)
            degraded.append(f"{n - connected} of {n} connections down")
        streams: dict[str, Any] = {}
        for t in DATA_TYPES:
            last = self._last_msg.get(t)
            age = None if last is None else round(now - last, 3)
            streams[t] = {
                "kinesis_stream": self._routes[t],
                "messages_in": self.messages_in[t],
                "records_out": self.records_out[t],
                "duplicates": self.duplicates[t],
                "last_message_age_s": age,
            }
            if self.state == "running" and connected:
                since = now - (last if last is not None else (self.started_at or now))
                if since > self.cfg.stale_after_s:
                    degraded.append(f"no {t} message for {since:.0f} s")
        symbols = {
            sym: {
                t: round(now - self._last_msg_symbol[(t, sym)], 3)
                if (t, sym) in self._last_msg_symbol
                else None
                for t in DATA_TYPES
            }
            for sym in self.symbols
        }
        kinesis: dict[str, Any] = {}
        if s is not None:
            kinesis = {
                "circuit_state": str(s.circuit_state),
                "circuit_opens": s.circuit_opens,
                "buffer_records": s.buffer_records,
                "buffer_bytes": s.buffer_bytes,
                "put": s.put,
                "acknowledged": s.acknowledged,
                "failed_entries": s.failed_entries,
                "retried": s.retried,
                "call_failures": s.call_failures,
                "spilled": s.spilled,
                "replayed": s.replayed,
                "spill_files": s.spill_files,
                "journaled": s.journaled,
                "unspilled_records": s.unspilled_records,
                "disk_error": s.disk_error,
                "disk_errors": s.disk_errors,
                "dropped": s.dropped,
                "dropped_reasons": dict(s.dropped_reasons),
                "fenced": s.fenced,
                "spill_damaged_regions": s.spill_damaged_regions,
                "adopted_files": s.adopted_files,
                "problems": s.problems,
            }
            degraded += s.problems
            if s.circuit_state != CircuitState.CLOSED:
                degraded.append(f"kinesis circuit {s.circuit_state}")
            if s.spill_files:
                degraded.append(f"kinesis spilling ({s.spill_files} spill files)")
        if self.counts["trade_ids_unfilled"]:
            degraded.append(f"{self.counts['trade_ids_unfilled']} trade ids missed and unfilled")
        if self._last_gap is not None and now - self._last_gap < self.cfg.recent_gap_s:
            degraded.append(f"depth gap in the last {self.cfg.recent_gap_s:.0f} s")
        status = "down" if down else "degraded" if degraded else "ok"
        return {
            "status": status,
            "reasons": down + degraded,
            "state": self.state,
            "uptime_s": round(now - self.started_at, 3) if self.started_at else 0.0,
            "symbols_count": len(self.symbols),
            "connections": {"shards": len(self.shards), "connected": connected},
            "reconnects": sum(sh.reconnects for sh in self.shards),
            "reconnect_reasons": self._reconnect_reasons(),
            "gaps": sum(self.gaps.values()),
            "gaps_by_symbol": dict(self.gaps),
            "malformed": self.counts["malformed"],
            "server_shutdowns": self.counts["server_shutdown"],
            "control_messages": self.counts["control"],
            "depth_stale": self.counts["depth_stale"],
            "trade_gaps": self.counts["trade_gaps"],
            "trades_backfilled": self.counts["trades_backfilled"],
            "trade_ids_unfilled": self.counts["trade_ids_unfilled"],
            "backfills_pending": len(self._backfills),
            "streams": streams,
            "symbols": symbols,
            "kinesis": kinesis,
            "shards": shards,
        }

    def refresh_metrics(self) -> None:
        """Update the scrape-time gauges (ages, open connections)."""
        now = time.monotonic()
        for t in DATA_TYPES:
            last = self._last_msg.get(t)
            if last is not None:
                self.metrics.last_message_age.labels(t).set(now - last)
        self.metrics.connections.set(sum(len(sh.links) for sh in self.shards))
