"""Per-message normalization cost: our ``parse_ws_message`` against cryptofeed's Binance handler
on the same real frames (``data/binance-capture/btcusdt_20240808.gz``), in the same run,
timed separately for ``trade``, ``bookTicker`` and ``depthUpdate``.
Not a test: ``python bench/normalize_vs_cryptofeed.py [--repeat 5]``.

cryptofeed runs in a separate virtualenv, created on first use under
``bench/.refenv-cryptofeed`` with the newest cryptofeed pip finds for this Python: 3.x needs
Python >= 3.13, so on 3.11 that is 2.4.1. Its feed is driven without network: the symbol map
comes from the 2021 exchangeInfo capture beside the data, the order book is seeded from the
capture's REST snapshot line (as its ``_snapshot`` would), and each frame goes through what its
``message_handler`` does for a combined stream: ``json.loads(parse_float=Decimal)``, then the
per-channel method (``_trade``, ``_ticker``, ``_book``) with no-op callbacks. cryptofeed 2.4.1
only knows ``aggTrade`` events, so each ``trade`` payload gets ``a = t`` before ``_trade``
(one dict store, inside the timed loop). Its depth path also maintains a book; ours does not
(the streamer keeps only the id chain). Both sides time the same frames: the depth diffs
from the one bridging the snapshot on, every trade and bookTicker. Each figure is the median
of ``--repeat`` passes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ingest_pipeline.binance.normalize import parse_ws_message
from ingest_pipeline.capture_loader import CAPTURES_DIR

REF_ENV = Path(__file__).parent / ".refenv-cryptofeed"
CAPTURE = CAPTURES_DIR
FILE = CAPTURE / "btcusdt_20240808.gz"
KINDS = ("trade", "bookTicker", "depth")

REF = r"""
import asyncio, json, statistics, sys, time
from decimal import Decimal
from yapic import json as yjson
import cryptofeed
from cryptofeed.defines import BINANCE, L2_BOOK, TICKER, TRADES
from cryptofeed.exchanges import Binance
from cryptofeed.symbols import Symbols
from cryptofeed.types import OrderBook

frames = json.loads(sys.stdin.read())
repeat = frames.pop("repeat")
info = open(frames.pop("exchange_info")).readline().split(": ", 1)[1]
syms, inf = Binance._parse_symbol_data(json.loads(info))
Symbols.set(Binance.id, syms, inf)

async def nothing(*a, **k):
    pass

feed = Binance(symbols=["BTC-USDT"], channels=[TRADES, TICKER, L2_BOOK],
               callbacks={TRADES: nothing, TICKER: nothing, L2_BOOK: nothing})
snap = json.loads(frames.pop("snapshot"))

def seed():
    feed._l2_book = {}
    feed.last_update_id = {}
    feed.last_update_id["BTC-USDT"] = snap["lastUpdateId"]
    feed._l2_book["BTC-USDT"] = OrderBook(
        feed.id, "BTC-USDT", max_depth=feed.max_depth,
        bids={Decimal(p): Decimal(q) for p, q in snap["bids"]},
        asks={Decimal(p): Decimal(q) for p, q in snap["asks"]})

def run(coro):
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("a handler suspended: it wanted the network")

loads = yjson.loads
def trade(raws):
    for r in raws:
        m = loads(r, parse_float=Decimal)["data"]
        m["a"] = m["t"]
        run(feed._trade(m, 0.0))
def ticker(raws):
    for r in raws:
        run(feed._ticker(loads(r, parse_float=Decimal)["data"], 0.0))
def book(raws):
    for r in raws:
        msg = loads(r, parse_float=Decimal)
        pair, _ = msg["stream"].split("@", 1)
        run(feed._book(msg["data"], pair.upper(), 0.0))

from importlib.metadata import version
out = {"version": version("cryptofeed")}
for kind, fn in (("trade", trade), ("bookTicker", ticker), ("depth", book)):
    raws = frames[kind]
    times = []
    for _ in range(repeat):
        seed()
        t = time.perf_counter()
        fn(raws)
        times.append(time.perf_counter() - t)
    out[kind] = statistics.median(times) / len(raws)
print(json.dumps(out))
"""


def reference_python() -> str:
    python = REF_ENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(REF_ENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "cryptofeed"], check=True)
    return str(python)


def load_frames() -> tuple[dict[str, list[str]], str]:
    out: dict[str, list[str]] = {k: [] for k in KINDS}
    snapshot = None
    with gzip.open(FILE, "rt") as fh:
        for line in fh:
            js = line.split(" ", 1)[1].rstrip("\n")
            if js.startswith('{"lastUpdateId"'):
                snapshot = js
                continue
            kind = js[js.index("@") + 1 : js.index('"', js.index("@"))]
            kind = "depth" if kind.startswith("depth") else kind
            out[kind].append(js)
    assert snapshot is not None
    # cryptofeed needs its book's snapshot first: time the diffs from the one that bridges it
    # (it arrives before the snapshot line) on, as a consumer applies them.
    last = json.loads(snapshot)["lastUpdateId"]
    out["depth"] = [r for r in out["depth"] if json.loads(r)["data"]["u"] > last]
    first = json.loads(out["depth"][0])["data"]
    assert first["U"] <= last + 1 <= first["u"]
    return out, snapshot


def ours(frames: dict[str, list[str]], repeat: int) -> dict[str, float]:
    symbols = frozenset({"BTCUSDT"})
    res = {}
    for kind in KINDS:
        raws = frames[kind]
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            for r in raws:
                parse_ws_message(r, 0, symbols)
            times.append(time.perf_counter() - t)
        res[kind] = statistics.median(times) / len(raws)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    frames, snapshot = load_frames()
    python = reference_python()
    payload = {
        **frames,
        "snapshot": snapshot,
        "repeat": args.repeat,
        "exchange_info": str(CAPTURE / "cryptofeed-2021/BINANCE.0"),
    }
    proc = subprocess.run(
        [python, "-c", REF], input=json.dumps(payload), capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"cryptofeed side failed:\n{proc.stderr[-3000:]}")
    ref = json.loads(proc.stdout.strip().splitlines()[-1])
    mine = ours(frames, args.repeat)
    print(f"{FILE.name}, median of {args.repeat} passes; cryptofeed {ref['version']}")
    print(f"{'message':>11} {'n':>7} {'ours us':>8} {'cryptofeed us':>14} {'cryptofeed/ours':>16}")
    for kind in KINDS:
        n = len(frames[kind])
        print(
            f"{kind:>11} {n:>7} {mine[kind] * 1e6:>8.2f} {ref[kind] * 1e6:>14.2f} "
            f"{ref[kind] / mine[kind]:>15.1f}x"
        )


if __name__ == "__main__":
    main()
