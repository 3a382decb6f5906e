"""Replay of the real Binance captures over the simulator's WebSocket and REST endpoints."""

from __future__ import annotations

import gzip
import json
from typing import Any

import aiohttp
import requests

from ingest_pipeline.simulator.replay import capture_files, load_captures
from ingest_pipeline.simulator.server import SimulatorConfig, SimulatorServer
from ingest_pipeline_tests.paths import CAPTURES
from ingest_pipeline_tests.simulator.ws_helpers import run, ws_url


def _recorded(symbol: str, stream: str) -> list[str]:
    """The recorded raw ``data`` texts of one stream, in file and line order."""
    out = []
    for f in sorted(CAPTURES.glob(f"{symbol}_*.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                js = line.rstrip("\n").partition(" ")[2]
                if js.startswith('{"stream":"' + stream + '"'):
                    out.append(js[js.index('"data":') + 7 : js.rindex("}")])
    return out


def test_path_forms() -> None:
    assert len(capture_files(CAPTURES)) == 4
    assert [f.name for f in capture_files(str(CAPTURES / "btc*.gz"))] == [
        "btcusdt_20240808.gz",
        "btcusdt_20240809.gz",
    ]
    assert len(capture_files(CAPTURES / "ethusdt_20240809.gz")) == 1


def test_replay_byte_for_byte_and_recorded_snapshot() -> None:
    trades = _recorded("btcusdt", "btcusdt@trade")
    depth = _recorded("btcusdt", "btcusdt@depth@100ms")
    cfg = SimulatorConfig(replay_path=str(CAPTURES / "btcusdt_*.gz"), replay_speed=0)

    async def main(url: str) -> list[str]:
        got: list[str] = []
        stream = "/stream?streams=btcusdt@trade/btcusdt@depth@100ms"
        async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(url, stream)) as ws:
            while len(got) < len(trades) + len(depth):
                msg = await ws.receive(timeout=20)
                assert msg.type == aiohttp.WSMsgType.TEXT
                got.append(msg.data)
        return got

    with SimulatorServer(cfg) as sim:
        got = run(main(sim.url))
        snap = requests.get(sim.url + "/api/v3/depth?symbol=BTCUSDT&limit=1000", timeout=10).json()
        info = requests.get(sim.url + "/api/v3/exchangeInfo", timeout=10).json()
        emitted = requests.get(
            sim.url + "/_sim/ws/emitted", params={"stream": "btcusdt@trade"}, timeout=10
        ).json()

    def data(frame: str) -> tuple[str, str]:
        stream = json.loads(frame)["stream"]
        return stream, frame[frame.index('"data":') + 7 : -1]

    frames = [data(f) for f in got]
    got_trades = [d for s, d in frames if s == "btcusdt@trade"]
    got_depth = [d for s, d in frames if s == "btcusdt@depth@100ms"]
    assert got_trades == trades and got_depth == depth  # byte for byte, in order
    ids = [json.loads(t)["t"] for t in got_trades]
    assert ids == list(range(3735683259, 3735703162 + 1))
    assert emitted["ids"] == ids
    diffs = [json.loads(d) for d in got_depth]
    assert all(b["U"] == a["u"] + 1 for a, b in zip(diffs, diffs[1:], strict=False))
    assert diffs[0]["E"] == 1723161255208  # historical event times kept
    assert snap["lastUpdateId"] == 50093239218 and len(snap["bids"]) == 1000
    assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT"]
    filters = {f["filterType"]: f for f in info["symbols"][0]["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.01000000"


def test_replay_at_speed_takes_time() -> None:
    caps = load_captures(CAPTURES / "ethusdt_20240809.gz")
    msgs = caps["ETHUSDT"].messages
    span_s = (msgs[-1][0] - msgs[0][0]) / 1e9
    cfg = SimulatorConfig(
        replay_path=str(CAPTURES / "ethusdt_20240809.gz"), replay_speed=span_s / 1.5
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
                    msg = await ws.receive(timeout=1.0)
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
