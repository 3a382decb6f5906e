"""Replay of the real Binance captures over the simulator's WebSocket and REST endpoints.

The truth here is the capture itself, read straight from the gzip lines (no simulator code),
and Binance's documented rules: the book rebuild procedure, aggTrade grouping, kline fields.
"""

from __future__ import annotations

import gzip
import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import aiohttp
import pytest
import requests

from ingest_pipeline.features.book import OrderBook, price_ticks
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline.standins.simulator.replay import Replayer, capture_files, load_captures
from ingest_pipeline.timeutil import to_ms
from ingest_pipeline_tests.paths import CAPTURES
from ingest_pipeline_tests.standins.simulator.ws_helpers import run, ws_url

# Servers over real sockets (see ingest_pipeline_tests/tiers.py).
pytestmark = pytest.mark.integration

BTC_FIRST_TRADE, BTC_LAST_TRADE = 3735683259, 3735703162
MIDNIGHT = to_ms(datetime(2024, 8, 9, tzinfo=UTC))


@lru_cache(maxsize=2)
def _lines(symbol: str) -> list[tuple[int, str]]:
    """(receive ms, JSON text) of every line of one symbol's files, in order."""
    out = []
    for f in sorted(CAPTURES.glob(f"{symbol}_*.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                ns, _, js = line.rstrip("\n").partition(" ")
                out.append((int(ns) // 1_000_000, js))
    return out


def _recorded(symbol: str, stream: str) -> list[str]:
    """The recorded raw ``data`` texts of one stream, in file and line order."""
    prefix = '{"stream":"' + stream + '"'
    return [
        js[js.index('"data":') + 7 : js.rindex("}")]
        for _, js in _lines(symbol)
        if js.startswith(prefix)
    ]


def _trades(symbol: str) -> list[tuple[int, dict[str, Any]]]:
    """(receive ms, trade payload) in recorded order."""
    prefix = '{"stream":"' + symbol + '@trade"'
    return [(ms, json.loads(js)["data"]) for ms, js in _lines(symbol) if js.startswith(prefix)]


def _book_after(symbol: str, until_ms: int | None) -> tuple[int, OrderBook]:
    """The recorded snapshot with the recorded diffs received before ``until_ms`` applied by
    Binance's procedure (drop ``u <= lastUpdateId``), with our feature code's book."""
    lines = _lines(symbol)
    snap = next(json.loads(js) for _, js in lines if js.startswith('{"lastUpdateId"'))
    book = OrderBook.from_levels(snap["bids"], snap["asks"])
    last = snap["lastUpdateId"]
    prefix = '{"stream":"' + symbol + '@depth@100ms"'
    for ms, js in lines:
        if until_ms is not None and ms >= until_ms:
            break
        if js.startswith(prefix):
            d = json.loads(js)["data"]
            if d["u"] > last:
                assert d["U"] <= last + 1, "the capture has no gap"
                book.apply(d["b"], d["a"])
                last = d["u"]
    return last, book


def _assert_book(answer: dict[str, Any], until_ms: int | None) -> int:
    """``answer`` is the top 1000 levels of the capture's book after ``until_ms``."""
    last, book = _book_after("btcusdt", until_ms)
    bids, asks = book.top(1000)
    assert answer["lastUpdateId"] == last
    assert [(price_ticks(p), float(q)) for p, q in answer["bids"]] == bids
    assert [(price_ticks(p), float(q)) for p, q in answer["asks"]] == asks
    assert len(bids) == len(asks) == 1000
    return last


def _get(url: str, path: str, **params: Any) -> Any:
    resp = requests.get(url + path, params=params, timeout=10)
    return resp.status_code, resp.json()


def _play_all(url: str, streams: str, n: int) -> list[str]:
    async def main() -> list[str]:
        got: list[str] = []
        async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(url, streams)) as ws:
            while len(got) < n:
                msg = await ws.receive(timeout=20)
                assert msg.type == aiohttp.WSMsgType.TEXT
                got.append(msg.data)
        return got

    return run(main())


def _data(frame: str) -> tuple[str, str]:
    return json.loads(frame)["stream"], frame[frame.index('"data":') + 7 : -1]


def test_path_forms() -> None:
    assert len(capture_files(CAPTURES)) == 4
    assert [f.name for f in capture_files(str(CAPTURES / "btc*.gz"))] == [
        "btcusdt_20240808.gz",
        "btcusdt_20240809.gz",
    ]
    assert len(capture_files(CAPTURES / "ethusdt_20240809.gz")) == 1


def test_recorded_times_replay_is_byte_for_byte() -> None:
    trades = _recorded("btcusdt", "btcusdt@trade")
    depth = _recorded("btcusdt", "btcusdt@depth@100ms")
    cfg = SimulatorConfig(
        replay_path=str(CAPTURES / "btcusdt_*.gz"), replay_speed=0, replay_shift=False
    )
    with SimulatorServer(cfg) as sim:
        # Before playback the book is the recorded snapshot, untouched.
        _, before = _get(sim.url, "/api/v3/depth", symbol="BTCUSDT", limit=1000)
        got = _play_all(sim.url, "/stream?streams=btcusdt@trade/btcusdt@depth@100ms",
                        len(trades) + len(depth))  # fmt: skip
        _, info = _get(sim.url, "/api/v3/exchangeInfo")
        _, emitted = _get(sim.url, "/_sim/ws/emitted", stream="btcusdt@trade")
        _, status = _get(sim.url, "/_sim/replay/status")
    frames = [_data(f) for f in got]
    got_trades = [d for s, d in frames if s == "btcusdt@trade"]
    got_depth = [d for s, d in frames if s == "btcusdt@depth@100ms"]
    assert got_trades == trades and got_depth == depth  # byte for byte, in order
    ids = [json.loads(t)["t"] for t in got_trades]
    assert ids == list(range(BTC_FIRST_TRADE, BTC_LAST_TRADE + 1))
    assert emitted["ids"] == ids
    assert json.loads(got_depth[0])["E"] == 1723161255208  # historical event times kept
    assert before["lastUpdateId"] == 50093239218 and len(before["bids"]) == 1000
    assert status["offset_ms"] == 0 and status["finished"]
    assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT"]
    filters = {f["filterType"]: f for f in info["symbols"][0]["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.01000000"


def test_shifted_replay_moves_every_time_by_one_whole_second_offset() -> None:
    trades = _recorded("ethusdt", "ethusdt@trade")
    depth = _recorded("ethusdt", "ethusdt@depth@100ms")
    tickers = _recorded("ethusdt", "ethusdt@bookTicker")
    cfg = SimulatorConfig(replay_path=str(CAPTURES / "ethusdt_*.gz"), replay_speed=0)
    with SimulatorServer(cfg) as sim:
        before = time.time_ns() // 1_000_000
        got = _play_all(
            sim.url,
            "/stream?streams=ethusdt@trade/ethusdt@depth@100ms/ethusdt@bookTicker",
            len(trades) + len(depth) + len(tickers),
        )
        _, status = _get(sim.url, "/_sim/replay/status")
    offset = status["offset_ms"]
    first_recv = _lines("ethusdt")[0][0]
    assert offset % 1000 == 0 and 0 <= first_recv + offset - before < 1000 + 5_000
    frames = [_data(f) for f in got]

    def shifted(text: str, keys: tuple[str, ...]) -> str:
        obj = json.loads(text)
        for k in keys:
            obj[k] += offset
        return json.dumps(obj, separators=(",", ":"))

    def canon(text: str) -> str:
        return json.dumps(json.loads(text), separators=(",", ":"))

    assert [canon(d) for s, d in frames if s == "ethusdt@trade"] == [
        shifted(t, ("E", "T")) for t in trades
    ]
    assert [canon(d) for s, d in frames if s == "ethusdt@depth@100ms"] == [
        shifted(d, ("E",)) for d in depth
    ]
    assert [d for s, d in frames if s == "ethusdt@bookTicker"] == tickers  # no time to move
    # Only the digits of the times changed: every other byte is the recorded one.
    got_trade = next(d for s, d in frames if s == "ethusdt@trade")
    assert len(got_trade) == len(trades[0])


def test_paced_replay_sends_each_frame_at_its_shifted_receive_time() -> None:
    """At speed 1 a frame never leaves before its recorded receive time + offset."""
    lines = _lines("ethusdt")
    until = lines[0][0] + 4_000
    want = [
        (ms, js[js.index('"data":') + 7 : js.rindex("}")])
        for ms, js in lines
        if ms < until and js.startswith('{"stream":"ethusdt@bookTicker"')
    ]
    cfg = SimulatorConfig(replay_path=str(CAPTURES / "ethusdt_*.gz"), replay_until_ms=until)

    async def main(url: str) -> list[tuple[int, str]]:
        got: list[tuple[int, str]] = []
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(ws_url(url, "/ws/ethusdt@bookTicker")) as ws,
        ):
            while len(got) < len(want):
                msg = await ws.receive(timeout=10)
                got.append((time.time_ns() // 1_000_000, msg.data))
        return got

    with SimulatorServer(cfg) as sim:
        got = run(main(sim.url))
        _, status = _get(sim.url, "/_sim/replay/status")
    offset = status["offset_ms"]
    assert [d for _, d in got] == [d for _, d in want]
    lags = [at - (ms + offset) for (at, _), (ms, _) in zip(got, want, strict=True)]
    assert min(lags) >= 0  # never early, so the frames cover at least the recorded span


def test_rest_answers_the_replayed_trades_aggtrades_klines_and_book() -> None:
    trades = _trades("btcusdt")
    cfg = SimulatorConfig(replay_path=str(CAPTURES / "btcusdt_*.gz"), replay_speed=0)
    with SimulatorServer(cfg) as sim:
        n = sum(1 for _ in _recorded("btcusdt", "btcusdt@depth@100ms"))
        _play_all(sim.url, "/ws/btcusdt@depth@100ms", n)
        url = sim.url
        _, status = _get(url, "/_sim/replay/status")
        while not status["finished"]:  # the trades are played with the diffs
            time.sleep(0.05)
            _, status = _get(url, "/_sim/replay/status")
        offset = status["offset_ms"]
        _, hist = _get(url, "/api/v3/historicalTrades", symbol="BTCUSDT",
                       fromId=BTC_FIRST_TRADE + 100, limit=1000)  # fmt: skip
        _, before = _get(url, "/api/v3/historicalTrades", symbol="BTCUSDT", fromId=5, limit=3)
        _, recent = _get(url, "/api/v3/trades", symbol="BTCUSDT", limit=7)
        _, beyond = _get(url, "/api/v3/historicalTrades", symbol="BTCUSDT",
                         fromId=BTC_LAST_TRADE + 1)  # fmt: skip
        t0 = trades[0][1]["T"] + offset
        _, aggs = _get(url, "/api/v3/aggTrades", symbol="BTCUSDT", startTime=t0,
                       endTime=t0 + 3_600_000, limit=1000)  # fmt: skip
        _, aggs_id = _get(url, "/api/v3/aggTrades", symbol="BTCUSDT", fromId=aggs[10]["a"],
                          limit=5)  # fmt: skip
        _, klines = _get(url, "/api/v3/klines", symbol="BTCUSDT", interval="1m",
                         startTime=MIDNIGHT + offset - 120_000, limit=4)  # fmt: skip
        _, all_klines = _get(url, "/api/v3/klines", symbol="BTCUSDT", interval="1m", limit=1000)
        _, depth = _get(url, "/api/v3/depth", symbol="BTCUSDT", limit=1000)
        status_other, other = _get(url, "/api/v3/historicalTrades", symbol="ETHUSDT")
        _, combo = _get(url, "/api/v3/aggTrades", symbol="BTCUSDT", fromId=1, startTime=1)

    def row(t: dict[str, Any]) -> dict[str, Any]:
        quote = f"{Decimal(t['p']) * Decimal(t['q']):.8f}"
        return {"id": t["t"], "price": t["p"], "qty": t["q"], "quoteQty": quote,
                "time": t["T"] + offset, "isBuyerMaker": t["m"], "isBestMatch": True}  # fmt: skip

    want = [row(t) for _, t in trades]
    assert hist == want[100:1100]
    assert [r["id"] for r in before] == [BTC_FIRST_TRADE, BTC_FIRST_TRADE + 1, BTC_FIRST_TRADE + 2]
    assert recent == want[-7:]
    assert beyond == []
    # aggTrades: consecutive trades of one taker side, price and time make one.
    groups: list[list[dict[str, Any]]] = []
    for _, t in trades:
        g = groups[-1] if groups else None
        if g and (g[-1]["T"], g[-1]["p"], g[-1]["m"]) == (t["T"], t["p"], t["m"]):
            g.append(t)
        else:
            groups.append([t])
    assert len(aggs) == 1000 and len(groups) < len(trades)
    for a, g in zip(aggs, groups, strict=False):
        assert (a["f"], a["l"], a["p"], a["T"], a["m"], a["M"]) == (
            g[0]["t"], g[-1]["t"], g[0]["p"], g[0]["T"] + offset, g[0]["m"], True
        )  # fmt: skip
        assert float(a["q"]) == pytest.approx(sum(float(t["q"]) for t in g), rel=1e-12)
    assert [a["a"] for a in aggs] == list(range(aggs[0]["a"], aggs[0]["a"] + 1000))
    assert aggs_id == aggs[10:15]
    # klines: the capture's trades by minute, every field.
    # (candles open on UTC minutes of the shifted time: at or after startTime)
    first_open = -(-(MIDNIGHT + offset - 120_000) // 60_000) * 60_000
    assert [k[0] for k in klines] == [first_open + m * 60_000 for m in range(4)]
    for k in klines:
        inside = [t for _, t in trades if k[0] <= t["T"] + offset < k[0] + 60_000]
        px = [float(t["p"]) for t in inside]
        buy = [t for t in inside if not t["m"]]
        assert k[6] == k[0] + 59_999 and k[8] == len(inside) > 0
        assert [float(x) for x in k[1:5]] == [px[0], max(px), min(px), px[-1]]
        assert float(k[5]) == pytest.approx(sum(float(t["q"]) for t in inside), rel=1e-12)
        quote = sum(float(t["p"]) * float(t["q"]) for t in inside)
        assert float(k[7]) == pytest.approx(quote, rel=1e-12)
        assert float(k[9]) == pytest.approx(sum(float(t["q"]) for t in buy), rel=1e-12)
    # Every candle opening after the first recorded trade (earlier ones would miss trades),
    # up to the one of the last trade; none is empty in this busy capture.
    opens = [k[0] for k in all_klines]
    assert opens[0] == -(-(t0 + 1) // 60_000) * 60_000
    assert opens == list(range(opens[0], opens[-1] + 1, 60_000))
    assert opens[-1] <= trades[-1][1]["T"] + offset < opens[-1] + 60_000
    assert sum(k[8] for k in all_klines) == sum(1 for _, t in trades if t["T"] + offset >= opens[0])
    # depth: the recorded snapshot with every diff applied (the replay is over).
    assert _assert_book(depth, None) > 50093239218
    # Symbols outside the replay are not listed, exactly as on Binance.
    assert status_other == 400 and other == {"code": -1121, "msg": "Invalid symbol."}
    assert combo["code"] == -1128


def test_a_slice_starts_with_the_history_before_it() -> None:
    """Before playback of a slice: the trades recorded before it are history on REST, and the
    book is the snapshot with the diffs before it applied; then playback starts there."""
    trades = _trades("btcusdt")
    start = MIDNIGHT - 30_000
    cfg = SimulatorConfig(
        replay_path=str(CAPTURES / "btcusdt_*.gz"),
        replay_speed=0,
        replay_from_ms=start,
        replay_until_ms=MIDNIGHT + 30_000,
    )
    with SimulatorServer(cfg) as sim:
        _, recent = _get(sim.url, "/api/v3/trades", symbol="BTCUSDT", limit=3)
        _, depth = _get(sim.url, "/api/v3/depth", symbol="BTCUSDT", limit=1000)
        first = json.loads(_play_all(sim.url, "/ws/btcusdt@trade", 1)[0])
    before = [t for ms, t in trades if ms < start]
    assert [r["id"] for r in recent] == [t["t"] for t in before[-3:]]
    _assert_book(depth, start)
    assert first["t"] == before[-1]["t"] + 1


def test_slice_bounds_are_checked() -> None:
    caps = load_captures(CAPTURES / "ethusdt_20240809.gz")
    with pytest.raises(ValueError, match="not after"):
        Replayer(caps, from_ms=MIDNIGHT + 10, until_ms=MIDNIGHT)
    with pytest.raises(ValueError, match="no recorded frame"):
        Replayer(caps, from_ms=MIDNIGHT - 3_600_000, until_ms=MIDNIGHT - 3_000_000)
    with pytest.raises(ValueError, match="replay_speed"):
        Replayer(caps, -1.0)


def test_replay_at_speed_takes_time() -> None:
    caps = load_captures(CAPTURES / "ethusdt_20240809.gz")
    msgs = caps["ETHUSDT"].messages
    span_s = (msgs[-1][0] - msgs[0][0]) / 1e9
    cfg = SimulatorConfig(
        replay_path=str(CAPTURES / "ethusdt_20240809.gz"), replay_speed=span_s / 3.0
    )

    async def main(url: str) -> tuple[int, Any]:
        n = 0
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(ws_url(url, "/ws/ethusdt@trade")) as ws,
        ):
            async with s.get(url + "/_sim/replay/status") as r:
                first = await r.json()
            while True:
                try:
                    msg = await ws.receive(timeout=2.0)
                except TimeoutError:
                    break
                n += 1
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
            async with s.get(url + "/_sim/replay/status") as r:
                return n, (first, await r.json())

    with SimulatorServer(cfg) as sim:
        n, (first, last) = run(main(sim.url))
    assert first["started"] and not first["finished"]
    assert last["finished"] and last["sent"] == len(msgs)
    assert n == sum(1 for m in msgs if m[1] == "ethusdt@trade")
