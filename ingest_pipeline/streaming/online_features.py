"""The online feature engine as a consumer: Kinesis trade / bba / depth streams -> final rows.

One :class:`OnlineFeatureEngine` per symbol, fed from every shard of the three streams the
streamer writes (SPEC §3 "Real time": the record as compact JSON, partition key = symbol).
Each row is handed to ``on_row`` as soon as it is *final* (its longest label horizon has
passed); the ``features`` command prints them as JSON lines.

Reading. Every shard of each stream gets an iterator: ``AT_TIMESTAMP`` at ``start - lead`` when
a start time is given (Kinesis positions by *arrival* time; ``lead`` absorbs the producer's
clock skew, records with ``event_ts < start`` are skipped), else ``LATEST``. Each shard is
polled with ``GetRecords`` at most every ``poll_interval_s`` (200 ms: Kinesis allows 5 reads
per second per shard); throttling backs that shard off, an expired iterator resumes after the
last sequence number handed out. Shards are re-listed now and then (children of a reshard).
Timeouts and retries are the boto3 client's (``ingest_pipeline.aws.CLIENT_CONFIG``).

When steps close (event time). The streams are read independently, so one can run ahead of
another (catching up from a past start). Steps therefore close on a watermark shared by all
shards, as in any multi-input stream processor: a shard that is behind holds the watermark at
the largest event time it has delivered; a shard that is caught up (an empty read with
``MillisBehindLatest == 0``) holds it at the wall clock minus ``clock_lag_ms`` (a record
that reaches Kinesis later should not be older than that). Every engine closes the steps with
``ts <= watermark - allowed_lateness_ms``. Records older than the last closed step are counted
as late by the engine and dropped (depth diffs are still applied to the book).

With ``end_ms`` the consumer stops once the watermark passes ``end_ms`` (plus lateness): it
ignores records with ``event_ts >= end_ms`` and calls ``finish(end_ms)``, so the rows are those
of the offline form on ``GridRange(start, end, start, end)`` (labels null where their horizon
passes ``end_ms``). Without it, it runs until ``stop`` is set; rows whose labels are still
open at that moment are not emitted (a row is only ever emitted once, final).

Depth snapshots come two ways, and each new one (``last_update_id`` not fed before) goes to
the symbol's book: on the depth stream, where the streamer publishes a ``DepthSnapshot`` right
after every (re)start and every gap in a symbol's diff chain (in stream order, after the diffs
it must bridge to: a broken book resyncs within about a second), and as the bronze
``depth_snapshot`` objects of the hours from the start to now, re-read every
``snapshot_poll_s`` (the hourly captures), each fed just before the first diff past it, the
order the offline form uses (``features.book.merged_book_events``). Until a snapshot that the
streamed diffs can bridge to has arrived, the book features stay null (SPEC §4's procedure).

Malformed data (not JSON, not an object, a missing or mistyped field) is counted per stream
and logged with the reason; it never reaches an engine and never stops the consumer.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ingest_pipeline.features.online import OnlineFeatureEngine
from ingest_pipeline.features.spec import DEFAULT_SPEC, FeatureSpec
from ingest_pipeline.records import BBA, DEPTH_DELTA, DEPTH_SNAPSHOT, TRADE, live_type
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.storage.kinesis_reader import (
    ShardCursor,
    at_timestamp,
    is_depth_snapshot,
    list_shards,
)
from ingest_pipeline.timeutil import HOUR_MS, floor_hour, now_ms

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2  # 5 GetRecords per second per shard is Kinesis's limit
PAGE_LIMIT = 10_000
THROTTLE_BACKOFF_S = 1.0
LEAD_MS = 60_000
CLOCK_LAG_MS = 5_000
RELIST_SHARDS_S = 60.0
SNAPSHOT_POLL_S = 60.0
# The engines' own watermark is switched off: the consumer closes steps (see the docstring).
_NEVER = 10**15

Row = dict[str, Any]

_INT = (int,)
_NUM = (int, float)
_REQUIRED: dict[str, tuple[tuple[str, tuple[type, ...]], ...]] = {
    TRADE: (
        ("symbol", (str,)), ("event_ts", _INT), ("trade_id", _INT), ("price", _NUM),
        ("qty", _NUM), ("is_buyer_maker", (bool,)),
    ),
    BBA: (
        ("symbol", (str,)), ("event_ts", _INT), ("update_id", _INT), ("bid_px", _NUM),
        ("bid_sz", _NUM), ("ask_px", _NUM), ("ask_sz", _NUM),
    ),
    DEPTH_DELTA: (
        ("symbol", (str,)), ("event_ts", _INT), ("first_update_id", _INT),
        ("final_update_id", _INT), ("bids", (list,)), ("asks", (list,)),
    ),
    DEPTH_SNAPSHOT: (
        ("symbol", (str,)), ("timestamp", _INT), ("last_update_id", _INT), ("bids", (list,)),
        ("asks", (list,)),
    ),
}  # fmt: skip


def check_record(data_type: str, record: Any) -> str | None:
    """Why ``record`` cannot be fed to an engine as ``data_type``, or None when it can."""
    if not isinstance(record, dict):
        return f"not a JSON object: {type(record).__name__}"
    for name, types in _REQUIRED[data_type]:
        if name not in record:
            return f"missing field {name!r}"
        value = record[name]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            return f"field {name!r} has type {type(value).__name__}"
    return None


@dataclasses.dataclass
class _Shard:
    data_type: str
    cursor: ShardCursor
    next_poll: float = 0.0
    max_event_ts: int | None = None
    records: int = 0
    calls: int = 0


@dataclasses.dataclass
class ConsumerStats:
    records: Counter[str] = dataclasses.field(default_factory=Counter)
    malformed: Counter[str] = dataclasses.field(default_factory=Counter)
    other_symbols: int = 0
    before_start: int = 0
    after_end: int = 0
    snapshots_fed: int = 0
    rows: int = 0
    throttled: int = 0
    calls: int = 0


class OnlineFeatureConsumer:
    """Kinesis -> per-symbol online engines -> final rows (``on_row``). No CLI in here.

    ``client``: a boto3 Kinesis client; ``bronze``: where depth snapshots are looked up (None:
    no snapshots, book features stay null); ``start_ms``: None reads from ``LATEST`` and starts
    the grid at the current step; ``symbols``: None takes every symbol that shows up.
    """

    def __init__(
        self,
        client: Any,
        settings: Settings,
        on_row: Callable[[Row], None],
        *,
        symbols: tuple[str, ...] | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        bronze: BronzeStore | None = None,
        spec: FeatureSpec = DEFAULT_SPEC,
        allowed_lateness_ms: int = 3000,
        clock_lag_ms: int = CLOCK_LAG_MS,
        lead_ms: int = LEAD_MS,
        poll_interval_s: float = POLL_INTERVAL_S,
        snapshot_poll_s: float = SNAPSHOT_POLL_S,
        clock: Callable[[], int] = now_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._on_row = on_row
        self.symbols = frozenset(symbols) if symbols else None
        self.spec = spec
        step = spec.step_ms
        self._from_latest = start_ms is None
        t0 = clock() if start_ms is None else start_ms
        self.start_ms = -(-t0 // step) * step  # the first grid point at or after the start
        if end_ms is not None and end_ms % step:
            raise ValueError(f"end_ms={end_ms} is not on the {step} ms grid")
        if end_ms is not None and end_ms <= self.start_ms:
            raise ValueError(f"end {end_ms} is not after the start {self.start_ms}")
        self.end_ms = end_ms
        self.lateness = allowed_lateness_ms
        self.clock_lag = clock_lag_ms
        self.lead = lead_ms
        self.poll_interval = poll_interval_s
        self.snapshot_poll = snapshot_poll_s
        self._clock = clock
        self._mono = monotonic
        self._bronze = bronze
        # Each stream by the live type it exists for; the depth stream's snapshots are told
        # apart by their shape (``_route``).
        self._streams = {
            stream: live_type(route).name for route, stream in settings.kinesis_routes.items()
        }
        self.engines: dict[str, OnlineFeatureEngine] = {}
        self._shards: dict[tuple[str, str], _Shard] = {}
        self._snapshot_ids: dict[str, set[int]] = {}
        # Bronze snapshots read but not fed yet, per symbol, by last_update_id.
        self._pending: dict[str, list[Mapping[str, Any]]] = {}
        self._next_relist = 0.0
        self._listed = False
        self._next_snapshots = 0.0
        self.watermark: int | None = None
        self.finished = False
        self.stats = ConsumerStats()

    # --- public ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> ConsumerStats:
        """Poll until ``stop`` is set or, with ``end_ms``, until every row up to it is out."""
        while not stop.is_set() and not self.finished:
            wait = self.step()
            if wait > 0:
                stop.wait(wait)
        pending = sum(e._j - e._finalized_j for e in self.engines.values())
        log.info(
            "online features stopped: %d rows emitted, %d closed steps without final row, %s",
            self.stats.rows, pending, self.summary(),
        )  # fmt: skip
        return self.stats

    def step(self) -> float:
        """One round: poll the shards that are due, close steps, emit final rows. Returns
        how long to wait before the next round is worth doing."""
        mono = self._mono()
        if mono >= self._next_relist:
            self._discover()
            self._next_relist = mono + RELIST_SHARDS_S
        if self._bronze is not None and mono >= self._next_snapshots:
            self._feed_snapshots()
            self._next_snapshots = mono + self.snapshot_poll
        for shard in list(self._shards.values()):
            if not shard.cursor.closed and shard.next_poll <= mono:
                self._poll(shard)
        self._advance()
        open_shards = [s for s in self._shards.values() if not s.cursor.closed]
        if not open_shards:
            return self.poll_interval
        return max(0.0, min(s.next_poll for s in open_shards) - self._mono())

    def summary(self) -> dict[str, Any]:
        st = self.stats
        late = Counter[str]()
        for e in self.engines.values():
            late.update(e.late)
        return {
            "symbols": sorted(self.engines),
            "records": dict(st.records),
            "malformed": dict(st.malformed),
            "late": dict(late),
            "before_start": st.before_start,
            "after_end": st.after_end,
            "other_symbols": st.other_symbols,
            "snapshots_fed": st.snapshots_fed,
            "get_records_calls": st.calls,
            "throttled": st.throttled,
            "watermark": self.watermark,
        }

    # --- shards ----------------------------------------------------------------------------

    def _discover(self) -> None:
        for stream, data_type in self._streams.items():
            for s in list_shards(self._client, stream):
                key = (stream, s["ShardId"])
                if key in self._shards:
                    continue
                # a shard appearing after the first listing is a reshard's child: all of it
                start = self._start() if not self._listed else {"ShardIteratorType": "TRIM_HORIZON"}
                cursor = ShardCursor(self._client, stream, s["ShardId"], start)
                self._shards[key] = _Shard(data_type, cursor)
                log.info("reading %s %s (%s)", stream, s["ShardId"], data_type)
        self._listed = True

    def _start(self) -> dict[str, Any]:
        if self._from_latest:
            return {"ShardIteratorType": "LATEST"}
        return at_timestamp(self.start_ms - self.lead)

    def _poll(self, shard: _Shard) -> None:
        cursor = shard.cursor
        shard.next_poll = self._mono() + self.poll_interval
        try:
            resp = cursor.get_records(PAGE_LIMIT)
        except self._client.exceptions.ProvisionedThroughputExceededException:
            self.stats.throttled += 1
            shard.next_poll = self._mono() + THROTTLE_BACKOFF_S
            return
        shard.calls += 1
        self.stats.calls += 1
        records = resp["Records"]
        for rec in records:
            shard.records += 1
            self._route(shard, rec)
        if cursor.closed:
            log.info("%s %s closed after %d records", cursor.stream, cursor.shard_id,
                     shard.records)  # fmt: skip
        if records and len(records) >= PAGE_LIMIT:
            shard.next_poll = self._mono() + self.poll_interval  # still at most 5/s

    def _route(self, shard: _Shard, rec: Mapping[str, Any]) -> None:
        stream, data_type = shard.cursor.stream, shard.data_type
        try:
            record = orjson.loads(rec["Data"])
        except orjson.JSONDecodeError as exc:
            self._malformed(stream, rec, f"not JSON: {exc}")
            return
        if data_type == DEPTH_DELTA and isinstance(record, dict) and is_depth_snapshot(record):
            self._stream_snapshot(stream, rec, record)
            return
        reason = check_record(data_type, record)
        if reason is not None:
            self._malformed(stream, rec, reason)
            return
        ets = record["event_ts"]
        if shard.max_event_ts is None or ets > shard.max_event_ts:
            shard.max_event_ts = ets
        symbol = record["symbol"]
        if self.symbols is not None and symbol not in self.symbols:
            self.stats.other_symbols += 1
            return
        self.stats.records[data_type] += 1
        if ets < self.start_ms:
            self.stats.before_start += 1
            return
        if self.end_ms is not None and ets >= self.end_ms:
            self.stats.after_end += 1
            return
        engine = self._engine(symbol)
        if data_type == DEPTH_DELTA:
            self._release_snapshots(engine, record["final_update_id"])
        engine.on_record(data_type, record)

    def _malformed(self, stream: str, rec: Mapping[str, Any], reason: str) -> None:
        self.stats.malformed[stream] += 1
        raw = bytes(rec["Data"])[:200].decode("utf-8", "replace")
        log.warning("%s: malformed record %s skipped (%s): %s", stream,
                    rec.get("SequenceNumber"), reason, raw)  # fmt: skip

    def _engine(self, symbol: str) -> OnlineFeatureEngine:
        engine = self.engines.get(symbol)
        if engine is None:
            engine = OnlineFeatureEngine(
                symbol, self.start_ms, self.spec, allowed_lateness_ms=_NEVER,
                emit_feature_rows=False,
            )  # fmt: skip
            self.engines[symbol] = engine
            self._feed_snapshots(only=symbol)
        return engine

    # --- depth snapshots -------------------------------------------------------------------

    def _stream_snapshot(self, stream: str, rec: Mapping[str, Any], snap: dict[str, Any]) -> None:
        reason = check_record(DEPTH_SNAPSHOT, snap)
        if reason is not None:
            self._malformed(stream, rec, reason)
            return
        symbol = snap["symbol"]
        if self.symbols is not None and symbol not in self.symbols:
            self.stats.other_symbols += 1
            return
        if self.end_ms is not None and snap["timestamp"] >= self.end_ms:
            self.stats.after_end += 1
            return
        self._feed_snapshot(self._engine(symbol), snap, "stream")

    def _feed_snapshots(self, only: str | None = None) -> None:
        if self._bronze is None:
            return
        symbols = [only] if only else sorted(self.engines)
        now = self._clock()
        last = floor_hour(min(now, self.end_ms) if self.end_ms is not None else now)
        hours = range(floor_hour(self.start_ms), last + 1, HOUR_MS)
        for symbol in symbols:
            for hour in hours:
                try:
                    snaps = self._bronze.read_hour(symbol, DEPTH_SNAPSHOT, hour) or []
                except Exception as exc:  # S3 trouble must not stop the stream consumer
                    log.warning("depth_snapshot %s %d: cannot read: %s", symbol, hour, exc)
                    continue
                pending = self._pending.setdefault(symbol, [])
                seen = self._snapshot_ids.setdefault(symbol, set())
                for snap in snaps:
                    if snap["last_update_id"] not in seen and snap not in pending:
                        bisect.insort(pending, snap, key=lambda x: x["last_update_id"])

    def _release_snapshots(self, engine: OnlineFeatureEngine, next_u: int) -> None:
        """Bronze snapshots go to the book in the offline order (``merged_book_events``):
        right after the diffs they contain, before the first diff past them. Fed as soon as
        they are read, a snapshot newer than the diffs being read (a consumer catching up)
        would make the book drop diffs an older snapshot could still bridge to."""
        pending = self._pending.get(engine.symbol)
        while pending and pending[0]["last_update_id"] < next_u:
            self._feed_snapshot(engine, pending.pop(0), "bronze")

    def _feed_snapshot(
        self, engine: OnlineFeatureEngine, snap: Mapping[str, Any], via: str
    ) -> None:
        seen = self._snapshot_ids.setdefault(engine.symbol, set())
        if snap["last_update_id"] in seen:
            return
        seen.add(snap["last_update_id"])
        engine.on_depth_snapshot(snap)
        self.stats.snapshots_fed += 1
        log.info("%s: depth snapshot %d (%d) fed from %s", engine.symbol,
                 snap["last_update_id"], snap["timestamp"], via)  # fmt: skip

    # --- closing steps ---------------------------------------------------------------------

    def _advance(self) -> None:
        open_shards = [s for s in self._shards.values() if not s.cursor.closed]
        if not open_shards:
            return
        now = self._clock()
        marks = []
        for s in open_shards:
            if s.cursor.caught_up:
                marks.append(now - self.clock_lag)
            elif s.max_event_ts is not None:
                marks.append(s.max_event_ts)
            else:
                return  # a shard not read yet: nothing is known about it
        self.watermark = min(marks)
        close_to = self.watermark - self.lateness
        end = self.end_ms
        done = end is not None and close_to >= end
        for engine in self.engines.values():
            if end is not None and done:
                engine.finish(end)
            else:
                engine.advance_to(close_to)
            _, final = engine.drain()
            for row in final:
                self._on_row(row)
            self.stats.rows += len(final)
        self.finished = done


def row_json(row: Row) -> bytes:
    """One row as a compact JSON line (NaN -> null)."""
    return orjson.dumps({k: (None if isinstance(v, float) and v != v else v)
                         for k, v in row.items()})  # fmt: skip
