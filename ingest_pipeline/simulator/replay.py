"""Replay of real Binance captures through the simulator's WebSocket and REST endpoints.

Input: the gzip text files of ``shared/data/binance-capture`` (one line per message,
``<local receive ns> <raw JSON>``; the JSON is a combined-stream wrapper
``{"stream": ..., "data": ...}`` or a bare REST depth snapshot ``{"lastUpdateId", ...}`` whose
symbol is the file's ``<symbol>_YYYYMMDD.gz`` prefix). ``replay_path`` may be a file, a glob or
a directory; the files of one symbol are played in name order as one session.

Playback starts when the first client subscribes to a stream (or on ``POST /_sim/replay/start``),
and sends every recorded ``data`` payload byte for byte (original ``E``/``T`` kept) at
``replay_speed`` times the recorded pace (by receive time; ``0`` = as fast as possible). REST
``depth`` of a replayed symbol returns the recorded snapshot (cut to ``limit`` levels), and
``exchangeInfo`` lists exactly the replayed symbols (tick and step sizes inferred from the
recorded prices and quantities). Other REST endpoints of a replayed symbol serve the synthetic
market of that spec: the capture holds no aggTrades/historicalTrades/klines.
"""

from __future__ import annotations

import asyncio
import glob
import gzip
import heapq
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ingest_pipeline.simulator.market import SymbolSpec

if TYPE_CHECKING:
    from ingest_pipeline.simulator.ws import BinanceWs

_FILE_RE = re.compile(r"^([A-Za-z0-9]+)_\d{8}\.gz$")
_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY", "BRL")


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


def _decimals(values: list[str]) -> int:
    dec = 0
    for v in values:
        frac = v.partition(".")[2].rstrip("0")
        dec = max(dec, len(frac))
    return dec


def spec_of(cap: Capture) -> SymbolSpec:
    """A listing for a replayed symbol: tick/step from the recorded decimals."""
    snap = cap.snapshot or {"bids": [], "asks": []}
    levels = snap["bids"] + snap["asks"]
    pdec = _decimals([p for p, _ in levels]) if levels else 2
    qdec = _decimals([q for _, q in levels]) if levels else 5
    pdec, qdec = min(pdec, 8), min(qdec, 8)
    price = float(snap["bids"][0][0]) if snap["bids"] else 1.0
    quote = next((q for q in _QUOTES if cap.symbol.endswith(q) and q != cap.symbol), "USDT")
    base = cap.symbol[: -len(quote)] if cap.symbol.endswith(quote) else cap.symbol
    tick = "1" if pdec == 0 else f"0.{'0' * (pdec - 1)}1"
    step = "1" if qdec == 0 else f"0.{'0' * (qdec - 1)}1"
    return SymbolSpec(cap.symbol, base, quote, tick, step, max(price, 1e-8), 60_000)


class Replayer:
    """Plays the captures into a :class:`BinanceWs` hub."""

    def __init__(self, captures: dict[str, Capture], speed: float) -> None:
        if speed < 0:
            raise ValueError("replay_speed must be >= 0")
        self.captures = captures
        self.speed = speed
        self.hub: BinanceWs | None = None
        self.task: asyncio.Task[None] | None = None
        self.sent = 0
        self.finished = False

    @property
    def total(self) -> int:
        return sum(len(c.messages) for c in self.captures.values())

    def snapshot(self, symbol: str) -> dict[str, Any] | None:
        cap = self.captures.get(symbol)
        return cap.snapshot if cap else None

    def _merged(self) -> Iterator[tuple[int, str, str]]:
        return heapq.merge(*(c.messages for c in self.captures.values()), key=lambda m: m[0])

    def on_subscribe(self, stream: str) -> None:
        if self.task is None:
            self.start()

    def start(self) -> None:
        self.stop()
        self.sent = 0
        self.finished = False
        self.task = asyncio.get_running_loop().create_task(self._play(), name="replay")

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _play(self) -> None:
        hub = self.hub
        assert hub is not None
        t0 = time.monotonic()
        first: int | None = None
        for n, (ns, stream, data) in enumerate(self._merged()):
            if first is None:
                first = ns
            if self.speed > 0:
                due = t0 + (ns - first) / 1e9 / self.speed
                delay = due - time.monotonic()
                if delay > 0.002:
                    await asyncio.sleep(delay)
            elif n % 500 == 0:
                await asyncio.sleep(0)
            hub.publish(stream, data, _ident(stream, data))
            self.sent += 1
        self.finished = True


def _ident(stream: str, data: str) -> Any:
    """The id logged for a replayed message: trade ``t``, depth ``[U, u]``, bookTicker ``u``."""
    kind = stream.partition("@")[2]
    if kind == "trade":
        return orjson.loads(data)["t"]
    if kind.startswith("depth"):
        obj = orjson.loads(data)
        return [obj.get("U"), obj.get("u")]
    if kind == "bookTicker":
        return orjson.loads(data).get("u")
    return None
