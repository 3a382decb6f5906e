"""Live synthetic streams: the same market as REST, in real time, in Binance's wire format."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import requests

from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline_tests.standins.simulator.ws_helpers import collect, run, ws_url

# Servers over real sockets (see ingest_pipeline_tests/tiers.py).
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(weight_limit=10**9)) as server:
        yield server


def _get(url: str, path: str, **params: Any) -> Any:
    r = requests.get(url + path, params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_trades_match_rest_afterwards(sim: SimulatorServer) -> None:
    async def main() -> list[Any]:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(ws_url(sim.url, "/ws/btcusdt@trade")) as ws,
        ):
            return await collect(ws, 2.0)

    trades = run(main())
    assert len(trades) >= 5
    first = trades[0]
    assert list(first) == ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
    assert first["e"] == "trade" and first["s"] == "BTCUSDT" and first["M"] is True
    ids = [t["t"] for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # every trade, in order
    assert all(t["E"] >= t["T"] for t in trades)
    rest = _get(
        sim.url, "/api/v3/historicalTrades", symbol="BTCUSDT", fromId=ids[0], limit=len(ids)
    )
    assert [(r["id"], r["price"], r["qty"], r["time"], r["isBuyerMaker"]) for r in rest] == [
        (t["t"], t["p"], t["q"], t["T"], t["m"]) for t in trades
    ]
    emitted = _get(sim.url, "/_sim/ws/emitted", stream="btcusdt@trade")
    assert set(ids) <= set(emitted["ids"])


def _apply(book: dict[str, dict[str, str]], diff: dict[str, Any]) -> None:
    for side, key in (("bids", "b"), ("asks", "a")):
        for price, qty in diff[key]:
            if float(qty) == 0:
                book[side].pop(price, None)
            else:
                book[side][price] = qty


def _book(snapshot: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {side: dict(map(tuple, snapshot[side])) for side in ("bids", "asks")}


def test_depth_diffs_rebuild_rest_book_and_book_ticker_is_its_top(sim: SimulatorServer) -> None:
    async def main() -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        url = ws_url(sim.url, "/stream?streams=ethusdt@depth@100ms/ethusdt@bookTicker")
        async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
            msgs = await collect(ws, 0.35)
            async with s.get(sim.url + "/api/v3/depth?symbol=ETHUSDT&limit=5000") as r:
                snap1 = await r.json()
            msgs += await collect(ws, 0.6)
            async with s.get(sim.url + "/api/v3/depth?symbol=ETHUSDT&limit=5000") as r:
                snap2 = await r.json()

            def done(out: list[Any]) -> bool:
                return any(
                    m["stream"].endswith("@100ms") and m["data"]["u"] >= snap2["lastUpdateId"]
                    for m in out[-3:]
                )

            msgs += await collect(ws, 2.0, until=done)
            return msgs, snap1, snap2

    msgs, snap1, snap2 = run(main())
    assert all(set(m) == {"stream", "data"} for m in msgs)
    diffs = [m["data"] for m in msgs if m["stream"] == "ethusdt@depth@100ms"]
    tickers = [m["data"] for m in msgs if m["stream"] == "ethusdt@bookTicker"]
    assert list(diffs[0]) == ["e", "E", "s", "U", "u", "b", "a"]
    assert list(tickers[0]) == ["u", "s", "b", "B", "a", "A"]
    for prev, cur in zip(diffs, diffs[1:], strict=False):
        assert cur["U"] == prev["u"] + 1
    # Binance's procedure: drop u <= L, first applied has U <= L+1 <= u, then chain.
    book = _book(snap1)
    last = snap1["lastUpdateId"]
    applied = [d for d in diffs if d["u"] > last]
    assert applied[0]["U"] <= last + 1 <= applied[0]["u"]
    tops: dict[int, tuple[str, str, str, str]] = {}
    for d in applied:
        _apply(book, d)
        bid = max(book["bids"], key=float)
        ask = min(book["asks"], key=float)
        tops[d["u"]] = (bid, book["bids"][bid], ask, book["asks"][ask])
        if d["u"] == snap2["lastUpdateId"]:
            break
    assert d["u"] == snap2["lastUpdateId"]
    assert book == _book(snap2)
    checked = 0
    for t in tickers:
        if t["u"] in tops:
            assert (t["b"], t["B"], t["a"], t["A"]) == tops[t["u"]]
            checked += 1
    assert checked >= 3


def test_depth_1000ms_and_non_ascii_symbol(sim: SimulatorServer) -> None:
    name = "币安人生usdt"
    assert name == "币安人生USDT".lower()

    async def main() -> list[Any]:
        url = ws_url(sim.url, f"/stream?streams={name}@depth/{name}@trade/{name}@depth@100ms")
        async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
            return await collect(ws, 2.3)

    msgs = run(main())
    slow = [m["data"] for m in msgs if m["stream"] == f"{name}@depth"]
    fast = [m["data"] for m in msgs if m["stream"] == f"{name}@depth@100ms"]
    assert len(slow) >= 2 and len(fast) >= 15
    assert all(d["s"] == "币安人生USDT" for d in slow + fast)
    for prev, cur in zip(slow, slow[1:], strict=False):
        assert cur["U"] == prev["u"] + 1
    # a 1000 ms event covers ten 100 ms batches
    inner = [d for d in fast if slow[1]["U"] <= d["U"] and d["u"] <= slow[1]["u"]]
    assert len(inner) == 10 and inner[0]["U"] == slow[1]["U"] and inner[-1]["u"] == slow[1]["u"]


def test_subscribe_unsubscribe_list_and_errors(sim: SimulatorServer) -> None:
    async def main() -> list[Any]:
        replies: list[Any] = []
        async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(sim.url, "/ws")) as ws:

            async def ask(req: Any) -> Any:
                await ws.send_str(req if isinstance(req, str) else json.dumps(req))
                out = await collect(
                    ws, 2.0, until=lambda o: isinstance(o[-1], dict) and "id" in o[-1]
                )
                replies.append(out[-1])
                await asyncio.sleep(0.25)  # stay under 5 messages per second
                return out

            await ask(
                {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "btcusdt@bookTicker"], "id": 1}
            )
            await ask({"method": "LIST_SUBSCRIPTIONS", "id": 2})
            await ask({"method": "UNSUBSCRIBE", "params": ["btcusdt@bookTicker"], "id": 3})
            await ask({"method": "LIST_SUBSCRIPTIONS", "id": "abc"})
            await ask({"method": "GET_PROPERTY", "params": ["combined"], "id": 4})
            await ask({"method": "SET_PROPERTY", "params": ["combined", True], "id": 5})
            out = await ask({"method": "GET_PROPERTY", "params": ["combined"], "id": 6})
            data = await collect(
                ws, 0.5, until=lambda o: isinstance(o[-1], dict) and "stream" in o[-1]
            )
            replies.append(data[-1] if data else out)
            await ask({"method": "NOPE", "id": 7})
            await ask("{not json")
        return replies

    r = run(main())
    assert r[0] == {"result": None, "id": 1}
    assert r[1] == {"result": ["btcusdt@trade", "btcusdt@bookTicker"], "id": 2}
    assert r[2] == {"result": None, "id": 3}
    assert r[3] == {"result": ["btcusdt@trade"], "id": "abc"}
    assert r[4] == {"result": False, "id": 4}
    assert r[5] == {"result": None, "id": 5}
    assert r[6] == {"result": True, "id": 6}
    assert r[7]["stream"] == "btcusdt@trade" and r[7]["data"]["e"] == "trade"  # now combined
    assert r[8]["error"]["code"] == 2 and r[8]["id"] == 7
    assert r[9]["error"]["code"] == 3
