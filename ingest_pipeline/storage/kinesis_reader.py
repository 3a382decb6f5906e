"""Read a time window back from Kinesis (SPEC §3 "Stream archive").

Kinesis has no index by the records' own time: an iterator can only start at an *arrival*
time (``AT_TIMESTAMP``, the ``ApproximateArrivalTimestamp`` Kinesis stamps on each record). So
reading the records whose ``event_ts`` falls in ``[start, end)`` means:

- open an ``AT_TIMESTAMP`` iterator at ``start - lead`` on **every** shard the stream has had
  (``ListShards`` lists parents and children after a reshard, as long as the parents are within
  retention; a parent's records up to the split are only in the parent);
- keep the records whose ``event_ts`` is in the window (a record arrives after its event, so
  none of them arrived before ``start``; ``lead`` only absorbs clock skew between the producer's
  clock and Kinesis's);
- stop a shard at the first record that arrived at or after ``cutoff`` (the window's end plus a
  grace period for late arrivals: a REST backfill of missed trades, a replayed spill file), when
  the shard is caught up (no record and ``MillisBehindLatest == 0``), or when a closed shard has
  been read to its end (``NextShardIterator`` is null).

A record that arrives after ``cutoff`` is not in the window's archive: a later re-run of the
same hour (within retention) picks it up, and the bronze writer reports what changed.

The caller gives the window and the cutoff: the Dagster asset derives them from the partition
and the clock, tests pass them explicitly. Nothing here sleeps on a wall-clock deadline.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from ingest_pipeline.records import (
    DEPTH_DELTA,
    DEPTH_SNAPSHOT,
    PRODUCER_EPOCH,
    Record,
    datatype,
    record_key,
)
from ingest_pipeline.spans import Spans
from ingest_pipeline.storage.bronze import BronzeStore, WriteResult
from ingest_pipeline.timeutil import HOUR_MS

log = logging.getLogger(__name__)

# GetRecords returns at most 10,000 records or 10 MiB per call.
MAX_PAGE = 10_000
# AWS allows 5 GetRecords calls per second per shard: on throttling, back off from this.
THROTTLE_BACKOFF_S = 0.25
THROTTLE_MAX_ATTEMPTS = 8


class WindowNotReadable(RuntimeError):
    """The window cannot be read from the stream (it is older than the stream's retention)."""


@dataclasses.dataclass
class ShardRead:
    shard_id: str
    parent: str | None
    records: int = 0
    kept: int = 0
    calls: int = 0
    # "cutoff" (a record arrived after the cutoff), "caught_up" (at the stream's tip),
    # "closed" (a closed shard read to its end).
    stopped: str = ""


@dataclasses.dataclass
class WindowRead:
    """The records of a window, in shard order then arrival order, and how they were read."""

    stream: str
    start_ms: int
    end_ms: int
    cutoff_ms: int
    records: list[Record] = dataclasses.field(default_factory=list)
    # Data that is not a JSON object: kept with its sequence number, never dropped silently.
    malformed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    shards: list[ShardRead] = dataclasses.field(default_factory=list)
    outside_window: int = 0
    other_keys: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "records_kept": len(self.records),
            "outside_window": self.outside_window,
            "malformed": len(self.malformed),
            "shards": {s.shard_id: f"{s.records} read, {s.kept} kept, {s.stopped}"
                       for s in self.shards},
        }  # fmt: skip


_SNAPSHOT_ID = datatype(DEPTH_SNAPSHOT).id_field
_SNAPSHOT_TIME = datatype(DEPTH_SNAPSHOT).time_field
_DIFF_ID = datatype(DEPTH_DELTA).id_field


def is_depth_snapshot(record: dict[str, Any]) -> bool:
    """A ``DepthSnapshot`` (SPEC §2) among the depth stream's ``DepthDelta`` records (told apart
    by their id fields): the streamer publishes one after every restart and depth gap (a resync
    point for books)."""
    return _SNAPSHOT_ID in record and _DIFF_ID not in record


def _arrival_ms(record: dict[str, Any]) -> int:
    ts = record["ApproximateArrivalTimestamp"]
    if isinstance(ts, datetime):
        return int(ts.timestamp() * 1000)
    return int(float(ts) * 1000)


def list_shards(client: Any, stream: str) -> list[dict[str, Any]]:
    """Every shard of the stream, open or closed (parents and children of a reshard)."""
    resp = client.list_shards(StreamName=stream)
    shards: list[dict[str, Any]] = list(resp["Shards"])
    while resp.get("NextToken"):
        resp = client.list_shards(NextToken=resp["NextToken"])
        shards.extend(resp["Shards"])
    return shards


def at_timestamp(ms: int) -> dict[str, Any]:
    """The ``GetShardIterator`` position of the first record that arrived at or after ``ms``."""
    return {
        "ShardIteratorType": "AT_TIMESTAMP",
        "Timestamp": datetime.fromtimestamp(ms / 1000, UTC),
    }


class ShardCursor:
    """One shard read page by page from ``start`` (``GetShardIterator`` arguments: its type and
    position), the one GetRecords loop of the archive, the tail read and the online features.

    Iterators live 5 minutes: an expired one is reopened after the last record handed out (at
    ``start`` before any) and the call made again. Throttling
    (``ProvisionedThroughputExceededException``) reaches the caller, who knows whether to wait
    (a window read in one go) or to poll the shard later (a consumer of many shards)."""

    def __init__(self, client: Any, stream: str, shard_id: str, start: dict[str, Any]) -> None:
        self._client = client
        self.stream = stream
        self.shard_id = shard_id
        self._start = start
        self._iterator: str | None = None
        self.last_seq: str | None = None
        # A closed shard read to its end (no ``NextShardIterator``).
        self.closed = False
        # The last page was empty at the stream's tip (``MillisBehindLatest == 0``).
        self.caught_up = False

    def _open(self) -> str:
        where = (
            {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": self.last_seq}
            if self.last_seq is not None
            else self._start
        )
        return self._client.get_shard_iterator(
            StreamName=self.stream, ShardId=self.shard_id, **where
        )["ShardIterator"]

    def get_records(self, limit: int = MAX_PAGE) -> dict[str, Any]:
        """One ``GetRecords`` page (the response as boto3 returns it)."""
        if self.closed:
            raise ValueError(f"{self.stream} {self.shard_id} is closed and read to its end")
        client = self._client
        if self._iterator is None:
            self._iterator = self._open()
        try:
            resp = client.get_records(ShardIterator=self._iterator, Limit=limit)
        except client.exceptions.ExpiredIteratorException:
            self._iterator = self._open()
            resp = client.get_records(ShardIterator=self._iterator, Limit=limit)
        records = resp["Records"]
        if records:
            self.last_seq = records[-1]["SequenceNumber"]
        self._iterator = resp.get("NextShardIterator")
        self.closed = self._iterator is None
        self.caught_up = not records and resp.get("MillisBehindLatest", 0) == 0
        return resp


class KinesisReader:
    """Reads time windows of a stream. ``client``: a boto3 Kinesis client."""

    def __init__(
        self,
        client: Any,
        *,
        lead_ms: int = 60_000,
        page_limit: int = MAX_PAGE,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self.lead_ms = lead_ms
        self.page_limit = page_limit
        self._sleep = sleep

    def retention_hours(self, stream: str) -> int:
        summary = self._client.describe_stream_summary(StreamName=stream)
        return int(summary["StreamDescriptionSummary"]["RetentionPeriodHours"])

    def check_retention(self, stream: str, start_ms: int, now_ms: int) -> int:
        """Raise ``WindowNotReadable`` when ``start_ms`` is older than the stream keeps records;
        returns the retention in hours."""
        hours = self.retention_hours(stream)
        oldest = now_ms - hours * 3_600_000
        if start_ms < oldest:
            raise WindowNotReadable(
                f"stream {stream!r} keeps records {hours} h (RetentionPeriodHours); the window "
                f"starting {datetime.fromtimestamp(start_ms / 1000, UTC):%Y-%m-%d %H:%M} UTC is "
                f"older than that, so Kinesis no longer holds its records"
            )
        return hours

    def read_window(
        self,
        stream: str,
        start_ms: int,
        end_ms: int,
        cutoff_ms: int,
        *,
        partition_key: str | None = None,
        time_field: str = "event_ts",
    ) -> WindowRead:
        """The records with ``start_ms <= record[time_field] < end_ms`` that arrived before
        ``cutoff_ms``; with ``partition_key``, only that key's records (our key is the symbol).
        Duplicates are kept: deduplication by record key is the caller's (bronze's) job."""
        if not start_ms < end_ms <= cutoff_ms:
            raise ValueError(f"need start < end <= cutoff, got {start_ms}, {end_ms}, {cutoff_ms}")
        out = WindowRead(stream, start_ms, end_ms, cutoff_ms)
        for shard in list_shards(self._client, stream):
            read = ShardRead(shard["ShardId"], shard.get("ParentShardId"))
            out.shards.append(read)
            for rec in self._shard_records(stream, read, start_ms - self.lead_ms, cutoff_ms):
                read.records += 1
                if partition_key is not None and rec["PartitionKey"] != partition_key:
                    out.other_keys += 1
                    continue
                try:
                    record = orjson.loads(rec["Data"])
                    # A depth snapshot published by the streamer on the depth stream carries
                    # the snapshot's server time instead of an event time.
                    field = _SNAPSHOT_TIME if is_depth_snapshot(record) else time_field
                    ts = record[field]
                    if not isinstance(ts, int):
                        raise TypeError(f"{field} is not an integer")
                except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
                    out.malformed.append({
                        "reason": f"{type(exc).__name__}: {exc}",
                        "shard": read.shard_id,
                        "sequence_number": rec["SequenceNumber"],
                        "raw": bytes(rec["Data"]).decode("utf-8", "replace"),
                    })  # fmt: skip
                    continue
                if start_ms <= ts < end_ms:
                    read.kept += 1
                    out.records.append(record)
                else:
                    out.outside_window += 1
            log.info("%s %s: %d records read, %d kept, stopped: %s", stream, read.shard_id,
                     read.records, read.kept, read.stopped)  # fmt: skip
        return out

    def read_tail(self, stream: str, from_ms: int, cutoff_ms: int) -> WindowRead:
        """Every record that *arrived* from ``from_ms`` (``AT_TIMESTAMP``) until the shard is
        caught up or ``cutoff_ms``, over every shard: what a stream holds after a moment,
        whatever the records' own times (the streamer's restart reads its predecessor's last
        records this way)."""
        out = WindowRead(stream, from_ms, cutoff_ms, cutoff_ms)
        for shard in list_shards(self._client, stream):
            read = ShardRead(shard["ShardId"], shard.get("ParentShardId"))
            out.shards.append(read)
            for rec in self._shard_records(stream, read, from_ms, cutoff_ms):
                read.records += 1
                try:
                    record = orjson.loads(rec["Data"])
                    if not isinstance(record, dict):
                        raise TypeError(f"a JSON {type(record).__name__}, not an object")
                except (orjson.JSONDecodeError, TypeError) as exc:
                    out.malformed.append({
                        "reason": f"{type(exc).__name__}: {exc}",
                        "shard": read.shard_id,
                        "sequence_number": rec["SequenceNumber"],
                        "raw": bytes(rec["Data"]).decode("utf-8", "replace"),
                    })  # fmt: skip
                    continue
                read.kept += 1
                out.records.append(record)
        return out

    def _shard_records(
        self, stream: str, read: ShardRead, from_ms: int, cutoff_ms: int
    ) -> Iterator[dict[str, Any]]:
        cursor = ShardCursor(self._client, stream, read.shard_id, at_timestamp(from_ms))
        while not cursor.closed:
            resp = self._page(cursor)
            read.calls += 1
            for rec in resp["Records"]:
                if _arrival_ms(rec) >= cutoff_ms:
                    read.stopped = "cutoff"
                    return
                yield rec
            if cursor.closed:
                read.stopped = "closed"
                return
            if cursor.caught_up:
                read.stopped = "caught_up"
                return

    def _page(self, cursor: ShardCursor) -> dict[str, Any]:
        """One page, throttling backed off here: the window is read in one go."""
        throttled = self._client.exceptions.ProvisionedThroughputExceededException
        for attempt in range(THROTTLE_MAX_ATTEMPTS):
            try:
                return cursor.get_records(self.page_limit)
            except throttled:
                self._sleep(THROTTLE_BACKOFF_S * 2**attempt)
        return cursor.get_records(self.page_limit)


@dataclasses.dataclass
class ArchivedHour:
    """One archived (symbol, type, hour): the records deduplicated by key in the order Kinesis
    delivered them (what the checks look at), and what was written. For ``depth_delta``, the
    depth snapshots found on the stream too, and the ``depth_snapshot`` object they went to."""

    records: list[Record]
    duplicates: int
    read: WindowRead
    result: WriteResult
    snapshots: list[Record] = dataclasses.field(default_factory=list)
    snapshot_result: WriteResult | None = None
    # Trade id ranges the streamer recorded as never put on the stream (its gap records).
    known_gaps: list[tuple[int, int]] = dataclasses.field(default_factory=list)


def dedup_in_order(records: list[Record], data_type: str) -> tuple[list[Record], int]:
    """Drop records whose key was seen before (the first delivery wins); keeps the order."""
    key = record_key(data_type)
    seen: set[Any] = set()
    out = []
    for r in records:
        k = key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out, len(records) - len(out)


def archive_hour(
    reader: KinesisReader,
    store: BronzeStore,
    stream: str,
    symbol: str,
    data_type: str,
    hour_ms: int,
    cutoff_ms: int,
    coverage: Spans | None = None,
    known_gaps: Sequence[tuple[int, int]] = (),
) -> ArchivedHour:
    """Read ``symbol``'s records of the hour from ``stream`` (arrived before ``cutoff_ms``) and
    write them to bronze (sorted, deduplicated, idempotent: ``BronzeStore.write_hour``), with
    ``coverage``: the spans of the hour the stream holds (None: all of it; the caller derives
    it from the streamer's gap records, ``known_gaps`` their id ranges).

    The depth stream also carries the streamer's depth snapshots (resync points after a
    restart or a gap): they join the hour's ``depth_snapshot`` object, next to the hourly REST
    captures already there, so offline books resync where online ones did.
    """
    read = reader.read_window(
        stream, hour_ms, hour_ms + HOUR_MS, cutoff_ms, partition_key=symbol,
        time_field=datatype(data_type).time_field,
    )  # fmt: skip
    # Our partition key is the symbol, so only this symbol's records are left; a record that
    # says otherwise is kept aside rather than written under the wrong symbol.
    mine: list[Record] = []
    snapshots: list[Record] = []
    for r in read.records:
        if r.get("symbol") != symbol:
            read.malformed.append({"reason": f"symbol {r.get('symbol')!r} under key {symbol!r}",
                                   "raw": orjson.dumps(r).decode()})  # fmt: skip
            continue
        # The producer's lease epoch is operational metadata, not part of the record (SPEC §2).
        r.pop(PRODUCER_EPOCH, None)
        if data_type == DEPTH_DELTA and is_depth_snapshot(r):
            snapshots.append(r)
        else:
            mine.append(r)
    records, duplicates = dedup_in_order(mine, data_type)
    result = store.write_hour(symbol, data_type, hour_ms, records, coverage)
    snapshot_result = None
    if snapshots:
        captured = store.read_hour(symbol, DEPTH_SNAPSHOT, hour_ms) or []
        snapshot_result = store.write_hour(symbol, DEPTH_SNAPSHOT, hour_ms, captured + snapshots)
    return ArchivedHour(
        records, duplicates, read, result, snapshots, snapshot_result, list(known_gaps)
    )
