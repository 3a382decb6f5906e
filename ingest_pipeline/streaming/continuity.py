"""Where a streamer stopped, kept outside the process (DESIGN.md: "A new generation must learn
where the old one stopped ... from durable state, never from its own memory").

Two sources, used together, so that neither a lost checkpoint write nor a lagging one loses ids:

1. The **checkpoint**, written with every lease renewal (``lease.py``: the lease object's
   ``payload``, so a fenced process cannot overwrite its successor's): per symbol the trade
   id *acknowledged by Kinesis* up to which every id is on the stream (``trade_id``; see
   :class:`AckTracker`), the last depth ``u`` put, and when it was written. A process killed
   with ``kill -9`` leaves the one of its last renewal: a few seconds old.
2. The **tail** of the trade stream: every record from the checkpoint's time (minus a lead for
   clock skew) to the tip, over every shard. It holds what the dead process got onto Kinesis
   after its last checkpoint. :func:`resume_points` joins the two into a *frontier* per symbol
   (every id up to it is on Kinesis) plus the ids above it that are there already.

The streamer then fills the hole above the frontier over REST (``historicalTrades`` by
``fromId``) before it lets that symbol's live trades through, so a symbol's ids reach Kinesis
in order. A hole longer than ``backfill_max_trades`` is filled for its newest part and the rest
is written down as a **gap record** (:class:`GapStore`): an S3 object per uncovered span,
``{prefix}/gaps/{symbol}/trade/{first_id:020d}-{last_id:020d}.json``, that bronze and silver
can list; never hidden.

How far back it reaches: the checkpoint itself does not expire, so a downtime of any length is
filled up to ``backfill_max_trades`` ids per symbol (REST serves old trades by id). The tail
read only corrects the last few seconds before the stop and is bounded by the stream's
retention (24 h by default): a checkpoint older than that is used as it is.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson

from ingest_pipeline.timeutil import HOUR_MS

log = logging.getLogger(__name__)

Range = tuple[int, int]  # inclusive


# --- id ranges ---------------------------------------------------------------------------


def to_ranges(ids: Iterable[int]) -> list[Range]:
    """Sorted, merged inclusive ranges of ``ids`` (duplicates allowed)."""
    out: list[list[int]] = []
    for i in sorted(set(ids)):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return [(a, b) for a, b in out]


def missing_ranges(first: int, last: int, present: list[Range]) -> list[Range]:
    """The sub-ranges of ``[first, last]`` not covered by the sorted ``present`` ranges."""
    out: list[Range] = []
    cur = first
    for a, b in present:
        if b < cur:
            continue
        if a > last:
            break
        if a > cur:
            out.append((cur, a - 1))
        cur = max(cur, b + 1)
        if cur > last:
            return out
    if cur <= last:
        out.append((cur, last))
    return out


def covered(i: int, present: list[Range]) -> bool:
    k = bisect.bisect_right(present, (i, float("inf"))) - 1
    return k >= 0 and present[k][0] <= i <= present[k][1]


@dataclasses.dataclass
class Resume:
    """Where one symbol resumes: every id up to ``frontier`` is on Kinesis; ``present`` holds
    the ids above it that are there too (they are not sent again)."""

    frontier: int | None
    present: list[Range] = dataclasses.field(default_factory=list)
    depth_u: int | None = None
    source: str = "none"  # "checkpoint", "tail", "checkpoint+tail" or "none"
    # The trade time of the frontier's trade, when known: where a gap after it begins.
    frontier_ts: int | None = None


def resume_points(
    checkpoint: dict[str, Any] | None,
    tail: dict[str, dict[int, int]],
    symbols: Iterable[str],
) -> dict[str, Resume]:
    """Join the checkpoint's frontiers with the trades found on the stream's tail (per symbol:
    trade id -> trade time)."""
    entries = (checkpoint or {}).get("symbols", {})
    out: dict[str, Resume] = {}
    for sym in symbols:
        entry = entries.get(sym) or {}
        frontier = entry.get("trade_id")
        times = tail.get(sym, {})
        ranges = to_ranges(times)
        source = "checkpoint" if frontier is not None else "none"
        if ranges:
            source = "checkpoint+tail" if frontier is not None else "tail"
            if frontier is None:
                # Nothing older is known: the tail's first id is where the record starts.
                frontier = ranges[0][0] - 1
            above = []
            for a, b in ranges:
                if a <= frontier + 1:
                    frontier = max(frontier, b)
                else:
                    above.append((a, b))
            ranges = above
        ts = times.get(frontier) if frontier is not None else None
        if ts is None and frontier is not None and frontier == entry.get("trade_id"):
            ts = entry.get("trade_ts")
        out[sym] = Resume(frontier, ranges, entry.get("depth_u"), source, ts)
    return out


def tail_trades(
    records: Iterable[dict[str, Any]], symbols: Iterable[str]
) -> dict[str, dict[int, int]]:
    """Per symbol, trade id -> trade time of the trades in ``records``."""
    wanted = set(symbols)
    out: dict[str, dict[int, int]] = {s: {} for s in wanted}
    for r in records:
        sym, tid, ts = r.get("symbol"), r.get("trade_id"), r.get("event_ts")
        if sym in wanted and isinstance(tid, int) and isinstance(ts, int):
            out[sym][tid] = ts
    return out


# --- acknowledged frontier ---------------------------------------------------------------


class AckTracker:
    """Wraps the producer's Kinesis client: learns, per symbol, the trade id up to which every
    id the streamer put is acknowledged.

    Why the frontier is safe: the streamer puts a symbol's trades in id order, and the producer
    keeps the order per partition key, except that an entry refused inside a PutRecords call is
    retried after the entries of its own call (before any later call). So a call's acked ids
    advance the frontier only up to just below the smallest refused id of the same symbol.

    The producer asks its gate (the lease) before every PutRecords call; this wrapper asks it
    once more in botocore's ``before-send`` event, after the request is built and signed, right
    before its bytes leave. That narrows the window in which a process frozen between the
    check and the send (SIGSTOP, a VM pause) wakes up and sends with a lapsed lease from a
    millisecond or two to the socket write itself. A refusal there is a failed call for the
    producer, whose next gate check then fences it.
    """

    def __init__(
        self, client: Any, trade_stream: str, gate: Callable[[], bool] | None = None
    ) -> None:
        self._client = client
        self._trade_stream = trade_stream
        self._gate = gate
        self._lock = threading.Lock()
        self.frontier: dict[str, int] = {}
        self.frontier_ts: dict[str, int | None] = {}
        self.refused_calls = 0
        events = getattr(getattr(client, "meta", None), "events", None)
        if gate is not None and events is not None:
            events.register("before-send.kinesis.PutRecords", self._before_send)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _before_send(self, **_: Any) -> None:
        if self._gate is None:
            return
        try:
            allowed = self._gate()
        except Exception:  # "not now": the producer asks its gate again before retrying
            allowed = False
        if not allowed:
            self.refused_calls += 1
            raise FencedError("lease not held: PutRecords refused")

    def put_records(self, StreamName: str, Records: list[dict[str, Any]], **kw: Any) -> Any:
        resp = self._client.put_records(StreamName=StreamName, Records=Records, **kw)
        if StreamName == self._trade_stream:
            self._note(Records, resp.get("Records", []))
        return resp

    def _note(self, sent: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
        acked: dict[str, tuple[int, int | None]] = {}
        refused: dict[str, int] = {}
        for entry, res in zip(sent, results, strict=False):
            try:
                rec = orjson.loads(entry["Data"])
                sym, tid = rec["symbol"], rec["trade_id"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            if res.get("ErrorCode"):
                refused[sym] = min(tid, refused.get(sym, tid))
            elif sym not in acked or tid > acked[sym][0]:
                acked[sym] = (tid, rec.get("event_ts"))
        with self._lock:
            for sym, (tid, ts) in acked.items():
                if sym in refused and refused[sym] <= tid:
                    tid, ts = refused[sym] - 1, None
                if tid > self.frontier.get(sym, -1):
                    self.frontier[sym] = tid
                    self.frontier_ts[sym] = ts

    def seed(self, frontiers: dict[str, tuple[int, int | None]]) -> None:
        """Frontiers known at start (from the checkpoint and the tail), with their times."""
        with self._lock:
            for sym, (tid, ts) in frontiers.items():
                if tid > self.frontier.get(sym, -1):
                    self.frontier[sym] = tid
                    self.frontier_ts[sym] = ts

    def snapshot(self) -> dict[str, tuple[int, int | None]]:
        """Per symbol: (frontier id, its trade time or None)."""
        with self._lock:
            return {s: (t, self.frontier_ts.get(s)) for s, t in self.frontier.items()}


class FencedError(RuntimeError):
    """A PutRecords call refused because this process does not hold the lease."""


# --- gap records -------------------------------------------------------------------------


class GapStore:
    """Durable records of trade ids the streamer could not put on Kinesis (one S3 object per
    span, deterministic name: writing the same span twice is one object)."""

    def __init__(self, s3: Any, bucket: str, prefix: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def key(self, symbol: str, first_id: int, last_id: int) -> str:
        return f"{self.prefix}/gaps/{symbol}/trade/{first_id:020d}-{last_id:020d}.json"

    def write(self, symbol: str, first_id: int, last_id: int, **detail: Any) -> str:
        """``detail``: at least ``from_ts`` (trade time of the last trade before the gap) and
        ``to_ts`` (of the first after it), either None when unknown."""
        body = {"symbol": symbol, "data_type": "trade", "first_id": first_id, "last_id": last_id,
                "ids": last_id - first_id + 1, "recorded_at_ms": int(time.time() * 1000),
                **detail}  # fmt: skip
        key = self.key(symbol, first_id, last_id)
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=orjson.dumps(body),
                           ContentType="application/json")  # fmt: skip
        return f"s3://{self.bucket}/{key}"

    def list(self, symbol: str) -> list[dict[str, Any]]:
        out = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/gaps/{symbol}/"):
            for obj in page.get("Contents", []):
                body = self.s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                out.append(orjson.loads(body))
        return sorted(out, key=lambda g: g["first_id"])


def gap_span(gap: dict[str, Any], hour_ms: int) -> tuple[int, int]:
    """The time ``[start, end)`` within the hour a gap record leaves uncovered: from the trade
    time of the last trade before it to that of the first after it, both included (trades of
    the gap may share those milliseconds); an unknown bound reaches the hour's edge."""
    start = gap.get("from_ts")
    end = gap.get("to_ts")
    lo = hour_ms if start is None else max(hour_ms, start)
    hi = hour_ms + HOUR_MS if end is None else min(hour_ms + HOUR_MS, end + 1)
    return lo, hi


# --- REST pacing -------------------------------------------------------------------------


class WeightPacer:
    """Token bucket over Binance request weight for the streamer's own REST calls (fills and
    depth resyncs): at most ``per_minute`` on average, at most ``burst`` at once. It spreads a
    restart of many symbols over time so that the IP's shared budget (6000/min) always keeps
    room for the bronze assets; the REST client's own accounting stays the hard limit.

    Urgent requests (trade fills: the symbol's live trades wait in memory meanwhile) go before
    the others (depth resyncs); within a class, requests are served in the order they came.
    """

    def __init__(
        self,
        per_minute: float,
        burst: float,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if per_minute <= 0 or burst <= 0:
            raise ValueError("per_minute and burst must be > 0")
        self.rate = per_minute / 60.0
        self.burst = burst
        self._mono = monotonic
        self._sleep = sleep
        self._tokens = burst
        self._t = monotonic()
        self._lock = asyncio.Lock()
        self._urgent = 0
        self.spent = 0
        self.waited_s = 0.0

    def _refill(self) -> None:
        now = self._mono()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now

    async def acquire(self, weight: int, urgent: bool = False) -> None:
        if urgent:
            self._urgent += 1
        try:
            while True:
                async with self._lock:
                    if urgent or not self._urgent:
                        self._refill()
                        need = min(weight, self.burst)
                        if self._tokens < need:
                            wait = (need - self._tokens) / self.rate
                            self.waited_s += wait
                            await self._sleep(wait)
                            self._refill()
                        self._tokens -= weight
                        self.spent += weight
                        return
                await self._sleep(0.05)  # urgent requests are waiting: after them
        finally:
            if urgent:
                self._urgent -= 1


def restart_weight(
    n_symbols: int, depth_weight: int, fill_pages: int = 1, exchange_info: int = 20,
    historical_trades: int = 25, server_time: int = 1,
) -> int:  # fmt: skip
    """REST weight a restart of ``n_symbols`` spends: one exchangeInfo, then per symbol its
    trade fill (``fill_pages`` historicalTrades pages) and one depth resync (server time +
    depth snapshot)."""
    return exchange_info + n_symbols * (fill_pages * historical_trades + server_time + depth_weight)
