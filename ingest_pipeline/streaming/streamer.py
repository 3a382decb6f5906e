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

API for the Dagster job (no Dagster import here)::

    streamer = Streamer(settings, StreamerConfig(...))
    await streamer.run(stop_event)          # or: streamer.run_until(threading_event)
    streamer.health()                       # JSON-able snapshot, any thread
"""

from __future__ import annotations

import asyncio
import bisect
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
from botocore.config import Config

from ingest_pipeline.aws import aws_client
from ingest_pipeline.binance.history import fetch_depth_snapshot
from ingest_pipeline.binance.normalize import (
    CONTROL,
    SERVER_SHUTDOWN,
    parse_ws_message,
    trade_from_rest,
)
from ingest_pipeline.binance.rest import (
    MAX_PAGE,
    WEIGHT_EXCHANGE_INFO,
    WEIGHT_HISTORICAL_TRADES,
    BinanceRestClient,
    BinanceUnavailable,
    depth_weight,
)
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
from ingest_pipeline.records import (
    BBA,
    DEPTH_DELTA,
    PRODUCER_EPOCH,
    TRADE,
    MalformedPayload,
    Record,
    record_key,
)
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.kinesis import (
    CircuitState,
    KinesisProducer,
    ProducerClosedError,
    ProducerConfig,
    ProducerFencedError,
    ProducerStats,
    RecordSink,
    RecordTooLargeError,
    producer_client,
)
from ingest_pipeline.storage.kinesis_reader import KinesisReader
from ingest_pipeline.streaming.continuity import (
    AckTracker,
    GapStore,
    Range,
    Resume,
    WeightPacer,
    covered,
    missing_ranges,
    resume_points,
    tail_trades,
)
from ingest_pipeline.streaming.deadletter import DeadLetterWriter
from ingest_pipeline.streaming.lease import LeaseLost, LeaseUnavailable, S3Lease, holder_identity
from ingest_pipeline.streaming.metrics import StreamerMetrics
from ingest_pipeline.symbols import parse_symbols

log = logging.getLogger(__name__)

DATA_TYPES = (TRADE, BBA, DEPTH_DELTA)
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


@dataclasses.dataclass
class _Trades:
    """One symbol's trade ids: ``last`` is the frontier (every id up to it was put, is on
    Kinesis from a predecessor, or is in a gap record); ``present`` the ids above it already on
    Kinesis; ``held`` the live trades waiting for a fill, sorted by id."""

    last: int | None = None
    last_ts: int | None = None  # trade time of ``last``, when known
    present: list[Range] = dataclasses.field(default_factory=list)
    held: list[tuple[int, Record, Any, int, Link | None]] = dataclasses.field(default_factory=list)
    fill: asyncio.Future[None] | None = None
    # Gap records waiting for the time of the first trade after them.
    open_gaps: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _DepthSync:
    """One symbol's depth resync: the ``U`` of the first diff after the latest gap, a counter
    of gaps (a gap during a fetch asks for another), and when the book went invalid."""

    need_from: int = 0
    generation: int = 0
    since: float = 0.0
    task: asyncio.Future[None] | None = None


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
        self._trades: dict[str, _Trades] = {s: _Trades() for s in self.symbols}
        self._depth: dict[str, _DepthSync] = {s: _DepthSync() for s in self.symbols}
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

    # --- trade ids: Binance numbers a symbol's trades consecutively -------------------------

    def _can_fill(self) -> bool:
        stop = self._stop
        return self.cfg.backfill_max_trades > 0 and stop is not None and not stop.is_set()

    def _on_trade(
        self, tid: int, record: Record, raw: Any, ingest_ts: int, link: Link | None
    ) -> None:
        """A live trade: out now when it continues its symbol's ids, else held for a fill."""
        symbol = record["symbol"]
        st = self._trades[symbol]
        if st.fill is not None:
            bisect.insort(st.held, (tid, record, raw, ingest_ts, link), key=lambda h: h[0])
            return
        if st.last is not None and tid > st.last + 1:
            missing = missing_ranges(st.last + 1, tid - 1, st.present)
            if missing:
                self.counts["trade_gaps"] += 1
                self.counts["trade_gap_ids"] += sum(b - a + 1 for a, b in missing)
                if self._can_fill():
                    log.warning("%s: trade ids %d..%d missing before %d: filling over REST",
                                symbol, missing[0][0], missing[-1][1], tid)  # fmt: skip
                    st.held.append((tid, record, raw, ingest_ts, link))
                    self._start_fill(symbol, open_ended=False)
                    return
                if self._stop is not None and self._stop.is_set():
                    # Stopping: a put beyond the hole would move the frontier past it; the next
                    # process fills the hole and this trade from REST.
                    self.counts["held_dropped_at_stop"] += 1
                    return
                for a, b in missing:
                    self._unfilled(symbol, a, b, "backfill off (backfill_max_trades = 0)")
        self._put_trade(symbol, st, record, raw, ingest_ts, link)

    def _put_trade(
        self, symbol: str, st: _Trades, record: Record, raw: Any, ingest_ts: int,
        link: Link | None,
    ) -> bool:  # fmt: skip
        tid = record["trade_id"]
        put = self._emit(TRADE, self._routes[TRADE], record, symbol, raw, ingest_ts, link)
        if st.last is None or tid > st.last:
            self._advance(st, tid)
            st.last_ts = record["event_ts"]
            if st.open_gaps:
                self._close_gaps(st, tid, record["event_ts"])
        return put

    @staticmethod
    def _advance(st: _Trades, tid: int) -> None:
        st.last = tid
        while st.present and st.present[0][1] <= tid:
            st.present.pop(0)

    @staticmethod
    def _next_missing(st: _Trades) -> int:
        assert st.last is not None
        n = st.last + 1
        for a, b in st.present:
            if a <= n <= b:
                n = b + 1
        return n

    def _start_fill(self, symbol: str, open_ended: bool) -> None:
        st = self._trades[symbol]
        st.fill = self._spawn(self._fill(symbol, open_ended))

    def _spawn(self, coro: Any) -> asyncio.Future[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _release_held(self, symbol: str, st: _Trades) -> None:
        """Emit the held trades that continue the frontier (they may have come on another link
        while the fill waited)."""
        held = st.held
        i = 0
        while i < len(held) and (st.last is None or held[i][0] <= self._next_missing(st)):
            _, record, raw, ingest_ts, link = held[i]
            self._put_trade(symbol, st, record, raw, ingest_ts, link)
            i += 1
        del held[:i]  # once: tens of thousands may be held

    async def _fill(self, symbol: str, open_ended: bool) -> None:
        """Fill ``symbol``'s hole above its frontier from REST while its live trades are held.

        Bounded (mid-stream, or once a live trade is held): up to the first held id. Open-ended
        (at start, before any live trade came): up to REST's newest trade, or until live trades
        arrive. Either way at most ``backfill_max_trades`` ids; older ones become a gap record.
        """
        st = self._trades[symbol]
        began = time.monotonic()
        at_start = open_ended
        first_id = self._next_missing(st) if st.last is not None else None
        filled = pages = 0
        outcome = "filled"
        try:
            if not open_ended and self.cfg.fill_delay_s > 0:
                await asyncio.sleep(self.cfg.fill_delay_s)
            if open_ended:
                # The first live trade bounds the hole, so that a hole longer than the maximum
                # is filled for its newest part; a quiet symbol goes on without one.
                deadline = time.monotonic() + self.cfg.resume_wait_s
                while not st.held and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            budget = self.cfg.backfill_max_trades
            while True:
                self._release_held(symbol, st)
                if st.held:
                    # Live trades came: they bound the hole, and once the fill reaches them the
                    # stream has caught up (no open-ended page more).
                    open_ended = False
                    hi: int | None = st.held[0][0] - 1
                elif open_ended:
                    hi = None
                else:
                    break
                nxt = self._next_missing(st)
                if hi is not None:
                    if len(st.held) > self.cfg.max_held_trades:
                        self._unfilled(symbol, nxt, hi, f"more than {self.cfg.max_held_trades} "
                                       "live trades held during the fill")  # fmt: skip
                        self._advance(st, hi)
                        outcome = "cut"
                        continue
                    if hi - nxt + 1 > budget:
                        cut = hi - budget
                        self._unfilled(symbol, nxt, cut, f"hole longer than {budget} ids "
                                       "(backfill_max_trades)")  # fmt: skip
                        self._advance(st, cut)
                        outcome = "cut"
                        continue
                elif budget <= 0:
                    break  # the next live trade shows what is left, as a hole of its own
                limit = min(MAX_PAGE, budget)
                page = await self._rest_get(
                    "/api/v3/historicalTrades",
                    {"symbol": symbol, "fromId": nxt, "limit": limit},
                    WEIGHT_HISTORICAL_TRADES,
                )
                pages += 1
                budget -= len(page.items)
                emitted = self._emit_fill(symbol, st, page.items, page.received_ms, nxt, hi)
                filled += emitted
                if not page.items or st.last is None or st.last < nxt:
                    if hi is None:
                        break  # nothing newer on REST yet
                    self._unfilled(symbol, nxt, hi, "REST returned none of these ids")
                    self._advance(st, hi)
                    outcome = "cut"
                elif hi is None and len(page.items) < limit:
                    break  # REST's newest trade reached; live ones continue from it
        except asyncio.CancelledError:
            # Stopping: what was held is not put (a put beyond the hole would move the
            # frontier past it); the checkpoint still points below the hole, and the next
            # process fills it and sends the held trades again.
            outcome = "cancelled"
            dropped, st.held = len(st.held), []
            self.counts["held_dropped_at_stop"] += dropped
            raise
        except StreamerStopping:
            outcome = "stopped"
            dropped, st.held = len(st.held), []
            self.counts["held_dropped_at_stop"] += dropped
        except Exception as exc:
            self.counts["backfill_failures"] += 1
            outcome = f"failed: {exc!r}"
            log.error("fill of %s trades from %s failed: %r", symbol, first_id, exc)
            if st.held and st.last is not None:
                hi = st.held[0][0] - 1
                nxt = self._next_missing(st)
                if nxt <= hi:
                    self._unfilled(symbol, nxt, hi, f"REST failed: {exc!r}")
                    self._advance(st, hi)
        finally:
            st.fill = None
            seconds = round(time.monotonic() - began, 3)
            self.counts["trades_backfilled"] += filled
            self.fills.append({"symbol": symbol, "from_id": first_id, "to_id": st.last,
                               "filled": filled, "pages": pages, "seconds": seconds,
                               "at_start": at_start, "outcome": outcome})  # fmt: skip
            if filled or outcome != "filled":
                log.info("%s: fill from id %s: %d trades in %d pages, %.2f s (%s)", symbol,
                         first_id, filled, pages, seconds, outcome)  # fmt: skip
            held, st.held = st.held, []
            for tid, record, raw, ingest_ts, link in held:
                self._on_trade(tid, record, raw, ingest_ts, link)

    def _emit_fill(
        self, symbol: str, st: _Trades, items: list[Any], received_ms: int, nxt: int,
        hi: int | None,
    ) -> int:  # fmt: skip
        records: list[tuple[int, Record, Any]] = []
        for item in items:
            try:
                rec = trade_from_rest(item, symbol, received_ms)
            except MalformedPayload as exc:
                self._dead_letter(f"backfill: {exc.reason}", item, received_ms, None)
                continue
            records.append((rec["trade_id"], rec, item))
        records.sort(key=lambda r: r[0])
        n = 0
        for tid, rec, item in records:
            if tid < nxt or covered(tid, st.present):
                continue
            if hi is not None and tid > hi:
                break
            # Held trades below this one (come on another link meanwhile) go first.
            while st.held and st.held[0][0] < tid:
                _, hrec, hraw, hts, hlink = st.held.pop(0)
                self._put_trade(symbol, st, hrec, hraw, hts, hlink)
            n += self._put_trade(symbol, st, rec, item, received_ms, None)
        return n

    def _unfilled(self, symbol: str, first: int, last: int, reason: str) -> None:
        """Ids that will not reach Kinesis: counted, logged, and written down as a gap record
        once the first trade after them gives its end in time."""
        n = last - first + 1
        self.counts["trade_ids_unfilled"] += n
        log.error("%s: trade ids %d..%d (%d) not on Kinesis: %s", symbol, first, last, n, reason)
        st = self._trades[symbol]
        gap = {"symbol": symbol, "first_id": first, "last_id": last, "ids": n, "reason": reason,
               "from_ts": st.last_ts, "to_ts": None}  # fmt: skip
        self.gap_records.append(gap)
        st.open_gaps.append(gap)

    def _close_gaps(self, st: _Trades, tid: int, ts: int | None) -> None:
        for gap in [g for g in st.open_gaps if tid > g["last_id"]]:
            st.open_gaps.remove(gap)
            gap["to_ts"] = ts
            if self._gap_store is not None and self._loop is not None:
                task = asyncio.ensure_future(self._write_gap(gap))
                self._gap_writes.add(task)
                task.add_done_callback(self._gap_writes.discard)

    async def _write_gap(self, gap: dict[str, Any]) -> None:
        store = self._gap_store
        assert store is not None
        detail = {"reason": gap["reason"], "epoch": self.epoch, "streamer": self.cfg.name,
                  "from_ts": gap["from_ts"], "to_ts": gap["to_ts"]}  # fmt: skip
        try:
            gap["uri"] = await asyncio.to_thread(
                store.write, gap["symbol"], gap["first_id"], gap["last_id"], **detail
            )
        except Exception as exc:  # the log line and the counters still tell
            self.counts["gap_record_failures"] += 1
            log.error("gap record %s not written: %r", gap, exc)

    # --- REST --------------------------------------------------------------------------------

    def _rest_client(self) -> BinanceRestClient:
        if self._rest is None:
            self._rest = BinanceRestClient(self.settings.binance_rest_url, sleep=self._rest_sleep)
        return self._rest

    def _rest_sleep(self, seconds: float) -> None:
        """The REST client's backoff sleep, cut short when the streamer stops: a fill retrying
        an unreachable REST must not hold the process (its hole is the next process's)."""
        if self._rest_stop.wait(seconds):
            raise StreamerStopping("the streamer is stopping")

    async def _rest_get(self, path: str, params: dict[str, Any], weight: int) -> Any:
        await self.pacer.acquire(weight, urgent=True)
        client = self._rest_client()
        return await asyncio.to_thread(client.get, path, params, weight)

    async def _check_symbols(self) -> None:
        """One ``exchangeInfo`` call: every configured symbol must be listed by Binance.

        With a short retry budget: when REST cannot be reached the check is skipped (logged,
        counted) and the stream starts anyway; the symbols passed this check before, and a
        stream without REST still beats no stream."""
        await self.pacer.acquire(WEIGHT_EXCHANGE_INFO, urgent=True)
        check = BinanceRestClient(self.settings.binance_rest_url, max_attempts=3,
                                  backoff_cap_s=1.0, sleep=self._rest_sleep)  # fmt: skip
        try:
            info = await asyncio.to_thread(check.exchange_info)
        except BinanceUnavailable as exc:
            self.counts["symbol_check_skipped"] += 1
            log.warning("symbols not checked against exchangeInfo (REST unreachable): %s", exc)
            return
        # The limit Binance announces is the one the fills and resyncs keep to.
        self._rest_client().weight_limit = check.weight_limit
        listed = {s.get("symbol"): s.get("status") for s in info.get("symbols", [])}
        unknown = [s for s in self.symbols if s not in listed]
        if unknown:
            raise UnknownSymbolError(
                f"Binance does not list {', '.join(unknown)} (GET /api/v3/exchangeInfo): "
                "fix the configured symbols; nothing was streamed"
            )
        idle = {s: listed[s] for s in self.symbols if listed[s] != "TRADING"}
        if idle:
            log.warning("symbols listed but not trading (no trades will come): %s", idle)

    # --- depth resync --------------------------------------------------------------------------

    def _need_resync(self, symbol: str, first_update_id: int) -> None:
        if self.cfg.resync_depth_limit <= 0 or self._loop is None or self._stop is None:
            return
        ds = self._depth[symbol]
        ds.need_from = first_update_id
        ds.generation += 1
        if ds.task is None:
            ds.since = time.monotonic()
            if not self._stop.is_set():
                ds.task = self._spawn(self._resync(symbol))

    async def _resync(self, symbol: str) -> None:
        """Fetch ``symbol``'s book and publish it on the depth stream as a DepthSnapshot, once
        it is new enough to bridge to the diffs put since the gap (``L + 1 >= U``)."""
        ds = self._depth[symbol]
        limit = self.cfg.resync_depth_limit
        attempts = 0
        try:
            while True:
                generation, need = ds.generation, ds.need_from
                await self.pacer.acquire(1 + depth_weight(limit))
                fetched = await asyncio.to_thread(
                    fetch_depth_snapshot, self._rest_client(), symbol, limit
                )
                for bad in fetched.rejects:
                    reason = f"depth snapshot: {bad['reason']}"
                    self._dead_letter(reason, bad["raw"], now_ms(), None)
                snap = fetched.records[0] if fetched.records else None
                if snap is None or snap["last_update_id"] + 1 < need:
                    attempts += 1
                    if attempts >= RESYNC_ATTEMPTS:
                        self.counts["resync_failures"] += 1
                        log.error("%s: no usable depth snapshot after %d tries (need L >= %d)",
                                  symbol, attempts, need - 1)  # fmt: skip
                        return
                    await asyncio.sleep(0.2 * attempts)
                    continue
                if self.lease is not None and not self.lease.valid():
                    self._lapsed()
                    return
                if self.epoch is not None:
                    snap[PRODUCER_EPOCH] = self.epoch
                try:
                    self._producer.put(  # type: ignore[union-attr]
                        self._routes[DEPTH_DELTA], symbol, orjson.dumps(snap)
                    )
                except ProducerClosedError as exc:
                    self._refused(exc)
                    return
                self.counts["depth_snapshots"] += 1
                # Counted with the depth stream's records: ``records_out`` is per stream.
                self.records_out[DEPTH_DELTA] += 1
                self._m_out[DEPTH_DELTA].inc()
                seconds = round(time.monotonic() - ds.since, 3)
                self.resyncs.append({"symbol": symbol, "last_update_id": snap["last_update_id"],
                                     "after_u": need - 1, "seconds": seconds,
                                     "tries": attempts + 1})  # fmt: skip
                log.info("%s: depth snapshot L=%d published %.2f s after the book broke",
                         symbol, snap["last_update_id"], seconds)  # fmt: skip
                if ds.generation == generation:
                    return
                ds.since = time.monotonic()  # another gap while fetching: once more
        except StreamerStopping:
            return
        except Exception as exc:
            self.counts["resync_failures"] += 1
            log.error("%s: depth resync failed: %r", symbol, exc)
        finally:
            ds.task = None

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
            self._need_resync(symbol, first)
        elif symbol not in self._depth_started:
            # The first diff of this process: books downstream need a snapshot to start from.
            self._need_resync(symbol, first)
        self._depth_started.add(symbol)
        self._last_u[symbol] = final

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

    def _gate(self) -> bool:
        """The producer's fencing gate: the lease is held. Before it is acquired (a spill file
        adopted at start waits for it) the answer is "not now" (raising), never "no", which
        would fence the producer for good."""
        lease = self.lease
        if lease is None or lease.epoch is None:
            raise LeaseUnavailable("the lease is not acquired yet", 1.0)
        return lease.valid()

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
                if t is not waiter and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
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

    # --- continuity ----------------------------------------------------------------------------

    async def _take_over(self, stop: asyncio.Event) -> None:
        """Acquire the lease (waiting while another process holds it), then learn where the
        previous holder stopped: its checkpoint, corrected by the trade stream's tail."""
        settings = self.settings
        s3 = aws_client("s3", settings, STATE_S3_CONFIG)
        prefix = self.cfg.state_prefix
        self._gap_store = GapStore(aws_client("s3", settings), settings.bucket, prefix)
        self.lease = lease = S3Lease(
            s3, settings.bucket, self.cfg.state_prefix, self.cfg.name, self.symbols,
            ttl_s=self.cfg.lease_ttl_s, skew_s=self.cfg.lease_skew_s,
            holder=holder_identity(self.cfg.name),
        )  # fmt: skip
        began = time.monotonic()
        while True:
            try:
                previous = await asyncio.to_thread(lease.try_acquire)
                break
            except LeaseUnavailable as exc:
                self.state = "standby"
                self.takeover["waiting_for"] = str(exc)
                log.warning("waiting for the lease: %s (retry in %.1f s)", exc, exc.retry_in_s)
                try:
                    await asyncio.wait_for(stop.wait(), min(exc.retry_in_s, self.cfg.lease_renew_s))
                    return
                except TimeoutError:
                    continue
        self.state = "starting"
        self.epoch = lease.epoch
        checkpoint = (previous or {}).get("payload")
        now = now_ms()
        if checkpoint and checkpoint.get("written_at_ms"):
            from_ms = checkpoint["written_at_ms"] - int(self.cfg.tail_lead_s * 1000)
        else:
            from_ms = now - int(self.cfg.tail_lookback_s * 1000)
        t0 = time.monotonic()
        reader = KinesisReader(aws_client("kinesis", settings))
        tail = await asyncio.to_thread(reader.read_tail, self._routes[TRADE], from_ms, now + 1)
        self.resume = resume_points(checkpoint, tail_trades(tail.records, self.symbols),
                                    self.symbols)  # fmt: skip
        for sym, r in self.resume.items():
            self._trades[sym].last = r.frontier
            self._trades[sym].last_ts = r.frontier_ts
            self._trades[sym].present = list(r.present)
            if r.depth_u is not None:
                self._last_u[sym] = r.depth_u
        if self._acks is not None:
            self._acks.seed({s: (r.frontier, r.frontier_ts) for s, r in self.resume.items()
                             if r.frontier is not None})  # fmt: skip
        self.takeover = {
            "epoch": self.epoch,
            "waited_s": round(t0 - began, 3),
            "previous_holder": (previous or {}).get("holder"),
            "previous_released": (previous or {}).get("released"),
            "checkpoint_age_s": round((now - checkpoint["written_at_ms"]) / 1000, 3)
            if checkpoint and checkpoint.get("written_at_ms") else None,
            "tail_from_ms": from_ms,
            "tail_records": len(tail.records),
            "tail_read_s": round(time.monotonic() - t0, 3),
            "frontiers": {s: r.frontier for s, r in self.resume.items()},
            "sources": {s: r.source for s, r in self.resume.items()},
        }  # fmt: skip
        log.info("took over as epoch %d: %s", self.epoch, self.takeover)

    def _checkpoint(self) -> dict[str, Any]:
        """The payload stored with every lease renewal (``continuity.py``)."""
        acked = self._acks.snapshot() if self._acks is not None else {}
        previous = (self.lease.payload or {}) if self.lease is not None else {}
        entries = dict(previous.get("symbols", {}))  # symbols no longer streamed keep theirs
        # Called from the lease thread: dict() copies in one step under the GIL.
        last_u = dict(self._last_u)
        for sym in self.symbols:
            entry = dict(entries.get(sym, {}))
            if sym in acked:
                entry["trade_id"], entry["trade_ts"] = acked[sym]
            if sym in last_u:
                entry["depth_u"] = last_u[sym]
            if entry:
                entries[sym] = entry
        return {"written_at_ms": now_ms(), "epoch": self.epoch, "symbols": entries}

    def _keep_lease(self, stop: threading.Event) -> None:
        """Renew the lease (with the checkpoint) every ``lease_renew_s``, on a thread of its
        own: a busy event loop must not let the lease lapse."""
        lease = self.lease
        assert lease is not None
        while not stop.wait(self.cfg.lease_renew_s):
            try:
                lease.renew(self._checkpoint())
                self._checkpoint_at = time.monotonic()
            except LeaseLost as exc:
                self.fenced = str(exc)
                log.error("lease lost: %s; stopping (nothing more is sent)", exc)
                self.stop()
                return
            except Exception as exc:  # S3 trouble: retried; the lease lapses if it lasts
                self.counts["lease_renew_errors"] += 1
                log.warning("lease renewal failed (%.1f s of lease left): %r",
                            lease.remaining_s(), exc)  # fmt: skip

    async def _shutdown(
        self,
        tasks: list[asyncio.Task[None]],
        session: aiohttp.ClientSession | None,
        keeper_stop: threading.Event,
        keeper: threading.Thread | None,
    ) -> None:
        # Fills and resyncs in progress are abandoned, their REST retries cut short: the
        # checkpoint stays below an unfilled hole, and the next process fills it.
        self._rest_stop.set()
        for sh in self.shards:
            sh.stop()
        for t in tasks:
            if t.get_name() == "progress":
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if session is not None:
            await session.close()
        pending = list(self._tasks)
        for t in pending:
            t.cancel()
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
        if self.state == "standby":
            down.append(f"waiting for the lease: {self.takeover.get('waiting_for')}")
        if self.fenced is not None:
            down.append(f"fenced: {self.fenced}")
        filling = sum(1 for st in self._trades.values() if st.fill is not None)
        resyncing = sum(1 for ds in self._depth.values() if ds.task is not None)
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
            "fills_running": filling,
            "continuity": self._continuity_health(filling, resyncing),
            "streams": streams,
            "symbols": symbols,
            "kinesis": kinesis,
            "shards": shards,
        }

    def _continuity_health(self, filling: int, resyncing: int) -> dict[str, Any]:
        lease = self.lease
        fills = list(self.fills)
        last_fills = fills[-5:]
        last_resyncs = list(self.resyncs)[-5:]
        at_start = [f for f in fills if f["at_start"]]
        return {
            # The hole this process filled after its predecessor stopped.
            "start_fill": {
                "ids": sum(f["filled"] for f in at_start),
                "seconds": max((f["seconds"] for f in at_start), default=None),
                "by_symbol": {f["symbol"]: f["filled"] for f in at_start[:20]},
            },
            "name": self.cfg.name,
            "epoch": self.epoch,
            "lease": None if lease is None else {
                "held": lease.valid(),
                "remaining_s": round(lease.remaining_s(), 3),
                "renewals": lease.renewals,
                "lost": lease.lost,
            },
            "checkpoint_age_s": None if self._checkpoint_at is None
            else round(time.monotonic() - self._checkpoint_at, 3),
            "takeover": {k: v for k, v in self.takeover.items() if k != "frontiers"},
            "fills": {"running": filling, "done": len(self.fills), "last": last_fills},
            "gap_records": len(self.gap_records),
            "gap_ids": sum(g["ids"] for g in self.gap_records),
            "held_dropped_at_stop": self.counts["held_dropped_at_stop"],
            "depth_resyncs": {"published": self.counts["depth_snapshots"],
                              "running": resyncing, "failed": self.counts["resync_failures"],
                              "last": last_resyncs},
            "rest": {"weight_spent": self.pacer.spent,
                     "weight_wait_s": round(self.pacer.waited_s, 3),
                     "budget_per_minute": self.cfg.rest_weight_per_minute},
        }  # fmt: skip

    def refresh_metrics(self) -> None:
        """Update the scrape-time gauges (ages, open connections)."""
        now = time.monotonic()
        for t in DATA_TYPES:
            last = self._last_msg.get(t)
            if last is not None:
                self.metrics.last_message_age.labels(t).set(now - last)
        self.metrics.connections.set(sum(len(sh.links) for sh in self.shards))
