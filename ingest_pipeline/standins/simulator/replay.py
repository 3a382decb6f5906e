"""Replay of real Binance captures through the simulator's WebSocket and REST endpoints.

Input: the gzip text files of ``shared/data/binance-capture`` (one line per message,
``<local receive ns> <raw JSON>``; the JSON is a combined-stream wrapper
``{"stream": ..., "data": ...}`` or a bare REST depth snapshot ``{"lastUpdateId", ...}`` whose
symbol is the file's ``<symbol>_YYYYMMDD.gz`` prefix). ``replay_path`` may be a file, a glob or
a directory; the files of one symbol are played in name order as one session.

Playback starts when the first client subscribes to a stream (or on ``POST /_sim/replay/start``,
which restarts it) and covers the recorded receive times ``[replay_from_ms, replay_until_ms)``
(default: everything). What was recorded before ``replay_from_ms`` is history when playback
starts: its trades are on REST and its diffs are in the REST book.

The shift: replays look live. When playback starts, ONE offset is chosen for the whole replay:
the whole number of seconds that brings the first frame to play to now or within the next
second, ``offset = ceil((now - first receive ms) / 1000) * 1000``. Every frame is sent at its
recorded receive time (ms) + offset, never earlier, and carries its recorded bytes except the
exchange times: trade ``E`` and ``T`` and depth ``E`` are + offset. Ids (trade ``t``, depth
``U``/``u``, bookTicker ``u``), prices, quantities and the spacing of frames are unchanged.
bookTicker carries no time of its own: its time is the moment it is sent, so a client that
stamps receive time (as the streamer does) stamps the recorded receive time + offset, give or
take its transport and processing delay (each frame leaves at the start of its millisecond;
a frame stamped past a grid step moves a BBA across it). Being whole seconds, the offset maps
the replay's 1 s feature grid onto the capture's. The recorder's own clock skew is replayed
too: in the hftbacktest captures ``E``/``T`` run ~1.27 s ahead of the receive time, so replayed
event times are ~1.27 s ahead of the moment their frame is sent. Only ``replay_speed`` 1 looks
live: another speed (0: as fast as possible) starts at once and paces the frames
``1/speed`` times the recorded spacing with the same offset, so event times drift from the wall
clock (scaling the times instead would change every windowed feature).
``replay_shift=False`` sends the recorded bytes unchanged (history replays).

REST of a replayed symbol is the replay's truth (times with the same offset), what Binance
would answer at the replay's current position:
- ``trades``/``historicalTrades`` (by ``fromId`` or most recent): the recorded trades whose frame
  has been played (history included), same ids, prices and quantities. Trades before the
  capture are unknown: an answer starts at the capture's first trade at the earliest.
- ``aggTrades`` (by ``fromId``, time or most recent): derived as Binance aggregates, from
  consecutive trades with the same taker side, price and trade time; ids are consecutive from
  the capture's first trade id, ``f``/``l`` are the trade ids. An aggregate is listed once its
  last trade has been played; one cut by the start of the capture is listed partial.
- ``klines``: aggregated from the same trades, from the first candle opening after the
  capture's first trade (earlier candles would miss unrecorded trades) to the one in progress.
- ``depth``: the recorded snapshot with every played diff it does not contain (``u >
  lastUpdateId``) applied in order, ``lastUpdateId`` = ``u`` of the last one: the book that the
  streamed diffs continue, so a client can sync or re-sync at any moment of the replay. Before
  any such diff is played it is the recorded snapshot itself (taken a moment later than that).
  Levels the snapshot did not hold are only known once a diff sets them.
- ``exchangeInfo`` lists exactly the replayed symbols (tick and step sizes inferred from the
  recorded prices and quantities).
Before playback starts the offset is that of a start at the moment of the request.
"""

from __future__ import annotations

import asyncio
import glob
import gzip
import heapq
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from ingest_pipeline.standins.simulator.basics import (
    KLINE_INTERVALS,
    PRICE_DECIMALS,
    AggTrades,
    Kline,
    SymbolSpec,
    Trades,
    kline_next,
    kline_open,
    kline_open_at_or_after,
    kline_prev,
)
from ingest_pipeline.standins.simulator.config import wall_clock_ms

_FILE_RE = re.compile(r"^([A-Za-z0-9]+)_\d{8}\.gz$")
_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY", "BRL")

TRADE, DEPTH, TICKER, OTHER = "trade", "depth", "bookTicker", "other"


@dataclass
class Capture:
    """One symbol's recorded session."""

    symbol: str
    files: list[Path]
    messages: list[tuple[int, str, str]] = field(default_factory=list)  # (recv ns, stream, data)
    snapshot: dict[str, Any] | None = None


def capture_files(path: str | os.PathLike[str]) -> list[Path]:
    """The capture files named by a file path, a glob pattern or a directory."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if _FILE_RE.match(f.name))
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(str(path)) if _FILE_RE.match(Path(f).name))
    if not files:
        raise FileNotFoundError(f"no capture files (<symbol>_YYYYMMDD.gz) at {path}")
    return files


def _data_text(line: str) -> str:
    """The raw ``data`` value of a combined-stream wrapper line, byte for byte."""
    i = line.index('"data":') + len('"data":')
    return line[i : line.rindex("}")]


def load_captures(path: str | os.PathLike[str]) -> dict[str, Capture]:
    """Parse every capture file under ``path``, grouped by symbol, files in name order."""
    caps: dict[str, Capture] = {}
    for f in capture_files(path):
        m = _FILE_RE.match(f.name)
        assert m is not None
        symbol = m.group(1).upper()
        cap = caps.setdefault(symbol, Capture(symbol, []))
        cap.files.append(f)
    for cap in caps.values():
        cap.files.sort(key=lambda f: f.name)
        for f in cap.files:
            with gzip.open(f, "rt", encoding="utf-8") as fh:
                for raw in fh:
                    line = raw.rstrip("\n")
                    if not line:
                        continue
                    ns_text, _, js = line.partition(" ")
                    ns = int(ns_text)
                    if js.startswith('{"stream"'):
                        stream = orjson.loads(js)["stream"]
                        cap.messages.append((ns, stream, _data_text(js)))
                    else:
                        obj = orjson.loads(js)
                        if "lastUpdateId" in obj:
                            cap.snapshot = obj
    return caps


def decimals_of(values: list[str]) -> int:
    dec = 0
    for v in values:
        frac = v.partition(".")[2].rstrip("0")
        dec = max(dec, len(frac))
    return dec


def spec_of(cap: Capture) -> SymbolSpec:
    """A listing for a replayed symbol: tick/step from the recorded decimals."""
    snap = cap.snapshot or {"bids": [], "asks": []}
    levels = snap["bids"] + snap["asks"]
    pdec = decimals_of([p for p, _ in levels]) if levels else 2
    qdec = decimals_of([q for _, q in levels]) if levels else 5
    pdec, qdec = min(pdec, 8), min(qdec, 8)
    price = float(snap["bids"][0][0]) if snap["bids"] else 1.0
    quote = next((q for q in _QUOTES if cap.symbol.endswith(q) and q != cap.symbol), "USDT")
    base = cap.symbol[: -len(quote)] if cap.symbol.endswith(quote) else cap.symbol
    tick = "1" if pdec == 0 else f"0.{'0' * (pdec - 1)}1"
    step = "1" if qdec == 0 else f"0.{'0' * (qdec - 1)}1"
    return SymbolSpec(cap.symbol, base, quote, tick, step, max(price, 1e-8), 60_000)


def stream_kind(stream: str) -> str:
    kind = stream.partition("@")[2]
    if kind == "trade":
        return TRADE
    if kind.startswith("depth"):
        return DEPTH
    if kind == "bookTicker":
        return TICKER
    return OTHER


def _int_at(data: str, key: str) -> tuple[int, int, int] | None:
    """``(value, start, end)`` of the integer after ``key`` (e.g. ``'"E":'``), or None. Binance
    payloads are flat objects with unique keys and string prices, so the first match is it."""
    i = data.find(key)
    if i < 0:
        return None
    start = end = i + len(key)
    while end < len(data) and data[end].isdigit():
        end += 1
    return (int(data[start:end]), start, end) if end > start else None


def shift_times(data: str, offset_ms: int) -> str:
    """A trade or depthUpdate payload with its ``E``/``T`` moved by ``offset_ms``, every other
    byte as recorded."""
    if not offset_ms:
        return data
    for key in ('"T":', '"E":'):  # T comes after E: replace from the end
        found = _int_at(data, key)
        if found is not None:
            value, start, end = found
            data = f"{data[:start]}{value + offset_ms}{data[end:]}"
    return data


def units(text: str) -> int:
    """A Binance decimal string as an exact integer of 1e-8 units."""
    whole, _, frac = text.partition(".")
    return int((whole or "0") + frac[:PRICE_DECIMALS].ljust(PRICE_DECIMALS, "0"))


class _Book:
    """A replayed symbol's book: the recorded snapshot plus the played diffs it lacks, applied
    in play order (a chain break in a capture would be carried over as recorded). Levels keyed
    by the recorded price strings (one format per symbol, so keys are exact)."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.last_update_id = int(snapshot["lastUpdateId"])
        self.bids = {p: q for p, q in snapshot["bids"]}
        self.asks = {p: q for p, q in snapshot["asks"]}

    def apply(self, diff: dict[str, Any]) -> None:
        if diff["u"] <= self.last_update_id:
            return  # already in the snapshot
        for side, levels in ((self.bids, diff["b"]), (self.asks, diff["a"])):
            for p, q in levels:
                if float(q) == 0.0:
                    side.pop(p, None)
                else:
                    side[p] = q
        self.last_update_id = diff["u"]

    def answer(self, limit: int) -> dict[str, Any]:
        bids = heapq.nlargest(limit, self.bids.items(), key=lambda lv: units(lv[0]))
        asks = heapq.nsmallest(limit, self.asks.items(), key=lambda lv: units(lv[0]))
        return {
            "lastUpdateId": self.last_update_id,
            "bids": [[p, q] for p, q in bids],
            "asks": [[p, q] for p, q in asks],
        }


class ReplaySymbol:
    """One replayed symbol: its frames, its recorded trades (and the aggTrades derived from
    them) and the REST answers at the replay's current position."""

    def __init__(self, cap: Capture) -> None:
        self.symbol = cap.symbol
        self.snapshot = cap.snapshot
        # (recv ms, kind, stream, data) in recorded order.
        self.frames = [(ns // 1_000_000, stream_kind(s), s, d) for ns, s, d in cap.messages]
        rows = [orjson.loads(d) for _, kind, _, d in self.frames if kind == TRADE]
        n = len(rows)
        self.trade_ids = np.fromiter((t["t"] for t in rows), np.int64, n)
        self.trade_time = np.fromiter((t["T"] for t in rows), np.int64, n)
        self.trade_price = np.fromiter((units(t["p"]) for t in rows), np.int64, n)
        self.trade_qty = np.fromiter((units(t["q"]) for t in rows), np.int64, n)
        self.trade_maker = np.fromiter((t["m"] for t in rows), np.bool_, n)
        if n and (np.diff(self.trade_ids) <= 0).any():
            raise ValueError(f"{self.symbol}: recorded trade ids are not increasing")
        # aggTrades: a new one wherever taker side, price or time changes (ids are consecutive
        # in the capture, so "consecutive trades" is "consecutive rows").
        new = np.ones(n, np.bool_)
        if n:
            new[1:] = (
                (np.diff(self.trade_time) != 0)
                | (np.diff(self.trade_price) != 0)
                | (self.trade_maker[1:] != self.trade_maker[:-1])
                | (np.diff(self.trade_ids) != 1)
            )
        self.agg_first = np.flatnonzero(new)
        self.agg_last = np.append(self.agg_first[1:], n) - 1
        self.agg_qty = np.add.reduceat(self.trade_qty, self.agg_first) if n else self.agg_first
        self.agg_base = int(self.trade_ids[0]) if n else 0
        self.diffs = [d for _, kind, _, d in self.frames if kind == DEPTH]
        self.played = 0  # trades visible on REST
        self.diffs_played = 0
        # The book is brought up to the played diffs when REST asks for it (off the hot path).
        self.book: _Book | None = None
        self._diffs_in_book = 0

    def reset(self, from_ms: int | None) -> None:
        """Position before the first frame at or after ``from_ms``: earlier trades are visible
        and earlier diffs are in the book."""
        self.played = self.diffs_played = self._diffs_in_book = 0
        self.book = _Book(self.snapshot) if self.snapshot is not None else None
        if from_ms is None:
            return
        for ms, kind, _, _ in self.frames:
            if ms >= from_ms:
                break
            self.on_played(kind)

    def on_played(self, kind: str) -> None:
        if kind == TRADE:
            self.played += 1
        elif kind == DEPTH:
            self.diffs_played += 1

    # ---- REST answers (times shifted by ``offset``) -----------------------------------------
    def _trades(self, lo: int, hi: int, offset: int) -> Trades:
        return Trades(
            self.trade_ids[lo:hi],
            self.trade_time[lo:hi] + offset,
            self.trade_price[lo:hi],
            self.trade_qty[lo:hi],
            self.trade_maker[lo:hi],
        )

    def trades_from_id(self, from_id: int, limit: int, offset: int) -> Trades:
        lo = min(int(np.searchsorted(self.trade_ids, from_id, side="left")), self.played)
        return self._trades(lo, min(lo + limit, self.played), offset)

    def recent_trades(self, limit: int, offset: int) -> Trades:
        return self._trades(max(0, self.played - limit), self.played, offset)

    def _visible_aggs(self) -> int:
        return int(np.searchsorted(self.agg_last, self.played, side="left"))

    def _aggs(self, lo: int, hi: int, offset: int) -> AggTrades:
        first, last = self.agg_first[lo:hi], self.agg_last[lo:hi]
        return AggTrades(
            np.arange(lo, hi, dtype=np.int64) + self.agg_base,
            self.trade_price[first],
            self.agg_qty[lo:hi],
            self.trade_ids[first],
            self.trade_ids[last],
            self.trade_time[first] + offset,
            self.trade_maker[first],
        )

    def aggs_from_id(self, from_id: int, limit: int, offset: int) -> AggTrades:
        vis = self._visible_aggs()
        lo = min(max(from_id - self.agg_base, 0), vis)
        return self._aggs(lo, min(lo + limit, vis), offset)

    def recent_aggs(self, limit: int, offset: int) -> AggTrades:
        vis = self._visible_aggs()
        return self._aggs(max(0, vis - limit), vis, offset)

    def aggs_by_time(self, start_ms: int, end_ms: int, limit: int, offset: int) -> AggTrades:
        """First ``limit`` aggTrades with start <= T <= end (both inclusive)."""
        vis = self._visible_aggs()
        times = self.trade_time[self.agg_first[:vis]] + offset
        lo = int(np.searchsorted(times, start_ms, side="left"))
        hi = min(int(np.searchsorted(times, end_ms, side="right")), lo + limit)
        return self._aggs(lo, max(lo, hi), offset)

    def klines(
        self,
        interval: str,
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
        offset: int,
        now_ms: int,
    ) -> list[Kline]:
        """Binance's selection (open time in [start, end], at most ``limit``; without start the
        most recent ones) over the candles the played trades cover."""
        if interval not in KLINE_INTERVALS or self.played == 0:
            return []
        times = self.trade_time[: self.played] + offset
        first = kline_open_at_or_after(interval, int(times[0]) + 1)
        last = kline_open(interval, max(now_ms, int(times[-1])))
        if end_ms is not None:
            last = min(last, kline_open(interval, end_ms))
        opens: list[int] = []
        if start_ms is not None:
            t = max(first, kline_open_at_or_after(interval, start_ms))
            while t <= last and len(opens) < limit:
                opens.append(t)
                t = kline_next(interval, t)
        else:
            t = last
            while t >= first and len(opens) < limit:
                opens.append(t)
                t = kline_prev(interval, t)
            opens.reverse()
        out: list[Kline] = []
        for t in opens:
            nxt = kline_next(interval, t)
            i = int(np.searchsorted(times, t, side="left"))
            j = int(np.searchsorted(times, nxt, side="left"))
            px = self.trade_price[i:j].tolist()
            qty = self.trade_qty[i:j].tolist()
            buy = (~self.trade_maker[i:j]).tolist()
            if px:
                o, hi, lo, c = px[0], max(px), min(px), px[-1]
            else:  # no trade: a flat candle at the previous close
                o = hi = lo = c = int(self.trade_price[i - 1])
            quote = [p * q for p, q in zip(px, qty, strict=True)]
            out.append(
                Kline(
                    t,
                    nxt - 1,
                    o,
                    hi,
                    lo,
                    c,
                    sum(qty),
                    sum(quote),
                    len(px),
                    sum(q for q, b in zip(qty, buy, strict=True) if b),
                    sum(v for v, b in zip(quote, buy, strict=True) if b),
                )
            )
        return out

    def depth(self, limit: int) -> dict[str, Any]:
        if self.book is None:
            return {"lastUpdateId": 0, "bids": [], "asks": []}
        for data in self.diffs[self._diffs_in_book : self.diffs_played]:
            self.book.apply(orjson.loads(data))
        self._diffs_in_book = self.diffs_played
        return self.book.answer(limit)


class Hub(Protocol):
    """Where the replay publishes frames: the WebSocket server (``ws.BinanceWs``)."""

    def publish(self, stream: str, payload: str, ident: Any) -> None: ...


class Replayer:
    """Plays the captures into a :class:`Hub` (the WebSocket server) and keeps the REST answers
    of the replayed symbols at the replay's position (see the module docstring)."""

    def __init__(
        self,
        captures: dict[str, Capture],
        speed: float = 1.0,
        *,
        shift: bool = True,
        from_ms: int | None = None,
        until_ms: int | None = None,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        if speed < 0:
            raise ValueError("replay_speed must be >= 0")
        if from_ms is not None and until_ms is not None and until_ms <= from_ms:
            raise ValueError(f"replay_until_ms {until_ms} is not after replay_from_ms {from_ms}")
        self.captures = captures
        self.speed = speed
        self.shift = shift
        self.from_ms = from_ms
        self.until_ms = until_ms
        self.clock = clock
        self.symbols = {s: ReplaySymbol(c) for s, c in captures.items()}
        # Every frame of the slice, merged by receive time: (recv ms, symbol, kind, stream, data).
        merged = heapq.merge(
            *([(ms, s, k, st, d) for ms, k, st, d in r.frames] for s, r in self.symbols.items()),
            key=lambda f: f[0],
        )
        self.plan = [
            f
            for f in merged
            if (from_ms is None or f[0] >= from_ms) and (until_ms is None or f[0] < until_ms)
        ]
        if not self.plan:
            raise ValueError(f"no recorded frame in the replay slice [{from_ms}, {until_ms})")
        self.hub: Hub | None = None
        self.task: asyncio.Task[None] | None = None
        self.offset_ms: int | None = None  # chosen when playback starts
        self.position_ms: int | None = None  # receive time of the last frame played
        self.sent = 0
        self.late_frames = 0
        self.max_late_ms = 0.0
        self.finished = False
        for r in self.symbols.values():
            r.reset(from_ms)

    @property
    def total(self) -> int:
        return len(self.plan)

    def offset(self) -> int:
        """The replay's offset; before playback, that of a start now."""
        if self.offset_ms is not None:
            return self.offset_ms
        return self._offset_for(self.clock())

    def _offset_for(self, now_ms: int) -> int:
        if not self.shift:
            return 0
        return math.ceil((now_ms - self.plan[0][0]) / 1000) * 1000

    def now_ms(self) -> int:
        """The replay's "now": the shifted receive time of the last frame played (before
        playback, of the slice start)."""
        at = self.position_ms if self.position_ms is not None else self.plan[0][0]
        return at + self.offset()

    def symbol(self, symbol: str) -> ReplaySymbol | None:
        return self.symbols.get(symbol)

    def on_subscribe(self, stream: str) -> None:
        if self.task is None:
            self.start()

    def start(self) -> None:
        """(Re)start playback from the slice start, with a new offset."""
        self.stop()
        self.sent = 0
        self.late_frames = 0
        self.max_late_ms = 0.0
        self.finished = False
        self.position_ms = None
        for r in self.symbols.values():
            r.reset(self.from_ms)
        now = self.clock()
        self.offset_ms = self._offset_for(now)
        self.task = asyncio.get_running_loop().create_task(self._play(now), name="replay")

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _play(self, wall0: int) -> None:
        hub = self.hub
        assert hub is not None and self.offset_ms is not None
        mono0 = time.monotonic()
        offset, speed = self.offset_ms, self.speed
        first = self.plan[0][0]
        # Live-looking (shift, real time): the first frame is due at first + offset, within the
        # next second; otherwise now.
        anchor = first + offset if self.shift and speed == 1 else wall0
        for n, (ms, symbol, kind, stream, data) in enumerate(self.plan):
            if speed > 0:
                due = anchor + (ms - first) / speed  # wall ms; a frame leaves at its ms start
                at = mono0 + (due - wall0) / 1000  # monotonic seconds
                delay = at - time.monotonic()
                if delay > 0.001:
                    # The event loop wakes on whole milliseconds, rounded up: wake 1 ms early
                    # and sleep the rest (blocking, under 1 ms) to leave on time.
                    await asyncio.sleep(delay - 0.001)
                    delay = at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                late = (time.monotonic() - at) * 1000
                if late >= 1.0:  # published in a later millisecond than its own
                    self.late_frames += 1
                    self.max_late_ms = max(self.max_late_ms, late)
            elif n % 500 == 0:
                await asyncio.sleep(0)
            self.symbols[symbol].on_played(kind)
            self.position_ms = ms
            if kind in (TRADE, DEPTH):
                data = shift_times(data, offset)
            hub.publish(stream, data, _ident(kind, data))
            self.sent += 1
        self.finished = True

    def status(self) -> dict[str, Any]:
        return {
            "replay": True,
            "symbols": sorted(self.captures),
            "speed": self.speed,
            "shift": self.shift,
            "from_ms": self.from_ms,
            "until_ms": self.until_ms,
            "offset_ms": self.offset_ms,
            "position_ms": self.position_ms,
            "total": self.total,
            "sent": self.sent,
            # Paced frames published 1 ms or more after their due time (a busy machine).
            "late_frames": self.late_frames,
            "max_late_ms": round(self.max_late_ms, 3),
            "started": self.task is not None,
            "finished": self.finished,
        }


def _ident(kind: str, data: str) -> Any:
    """The id logged for a replayed message: trade ``t``, depth ``[U, u]``, bookTicker ``u``."""

    def value(key: str) -> int | None:
        found = _int_at(data, key)
        return found[0] if found is not None else None

    if kind == TRADE:
        return value('"t":')
    if kind == DEPTH:
        return [value('"U":'), value('"u":')]
    if kind == TICKER:
        return value('"u":')
    return None
