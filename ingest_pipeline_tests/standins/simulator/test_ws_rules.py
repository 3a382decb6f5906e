"""Binance's connection rules and the switchable WebSocket faults (short timeouts)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import requests

from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline_tests.standins.simulator.ws_helpers import (
    collect,
    collect_to_close,
    run,
    wait_closed,
    ws_url,
)

# Servers over real sockets (see ingest_pipeline_tests/tiers.py).
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(weight_limit=10**9)) as server:
        yield server


@pytest.fixture
def url(sim: SimulatorServer) -> str:
    requests.post(sim.url + "/_sim/ws/reset", timeout=5)
    return sim.url


def _post(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    r = requests.post(url + path, json=body or {}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_ping_sent_and_silent_client_dropped() -> None:
    cfg = SimulatorConfig(ws_ping_interval=0.3, ws_pong_timeout=0.8)

    async def main(url: str) -> tuple[int, float | None, int]:
        async with aiohttp.ClientSession() as s:
            # a client that never answers pings
            async with s.ws_connect(ws_url(url, "/ws/btcusdt@trade"), autoping=False) as ws:
                pings = 0
                t0 = time.monotonic()
                closed_after = None
                while time.monotonic() - t0 < 4:
                    msg = await ws.receive(timeout=4)
                    if msg.type == aiohttp.WSMsgType.PING:
                        pings += 1
                    elif msg.type != aiohttp.WSMsgType.TEXT:
                        closed_after = time.monotonic() - t0
                        break
            # a well-behaved client (aiohttp answers pings) stays
            async with s.ws_connect(ws_url(url, "/ws/btcusdt@trade")) as ok:
                await collect(ok, 1.5)  # aiohttp answers pings while it reads
                alive = int(not ok.closed)
        return pings, closed_after, alive

    with SimulatorServer(cfg) as sim:
        pings, closed_after, alive = run(main(sim.url))
        stats = requests.get(sim.url + "/_sim/ws/stats", timeout=5).json()
    assert pings >= 2
    assert closed_after is not None and 0.8 < closed_after < 2.5
    assert alive == 1
    assert stats["dropped_pong_timeout"] == 1


def test_lifetime_mark_with_server_shutdown_event() -> None:
    cfg = SimulatorConfig(ws_max_lifetime=1.0, ws_shutdown_event_at_lifetime=True)

    async def main(url: str) -> tuple[list[Any], float | None, int | None]:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(ws_url(url, "/stream?streams=btcusdt@trade")) as ws,
        ):
            t0 = time.monotonic()
            msgs, code = await collect_to_close(ws, 3.0)
            return msgs, time.monotonic() - t0, code

    with SimulatorServer(cfg) as sim:
        msgs, after, code = run(main(sim.url))
    assert 0.9 < after < 2.0
    assert set(msgs[-1]) == {"e", "E"} and msgs[-1]["e"] == "serverShutdown"  # not wrapped
    assert code == 1000


def test_stream_limit(url: str) -> None:
    names = [f"sym{i:04d}usdt@trade" for i in range(1025)]

    async def main() -> tuple[int, Any, Any]:
        async with aiohttp.ClientSession() as s:
            try:
                await s.ws_connect(ws_url(url, "/stream?streams=" + "/".join(names)))
                status = 101
            except aiohttp.WSServerHandshakeError as exc:
                status = exc.status
            async with s.ws_connect(ws_url(url, "/stream?streams=" + "/".join(names[:1024]))) as ws:
                await ws.send_str(
                    json.dumps({"method": "SUBSCRIBE", "params": names[1024:], "id": 1})
                )
                too_many = (await collect(ws, 2.0, until=lambda o: "id" in o[-1]))[-1]
                await asyncio.sleep(0.3)
                await ws.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
                listed = (await collect(ws, 2.0, until=lambda o: "id" in o[-1]))[-1]
        return status, too_many, listed

    status, too_many, listed = run(main())
    assert status == 400
    assert too_many["id"] == 1 and too_many["error"]["code"] == 2
    assert len(listed["result"]) == 1024


def test_more_than_five_messages_per_second_drops(url: str) -> None:
    async def main() -> tuple[float | None, float | None]:
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(ws_url(url, "/ws")) as ws:
                for i in range(5):  # five are allowed
                    await ws.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
                within = await wait_closed(ws, 0.5)
            async with s.ws_connect(ws_url(url, "/ws")) as ws:
                for i in range(6):
                    await ws.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
                dropped = await wait_closed(ws, 2.0)
        return within, dropped

    within, dropped = run(main())
    assert within is None
    assert dropped is not None
    assert requests.get(url + "/_sim/ws/stats", timeout=5).json()["dropped_rate_limit"] == 1


def test_connection_attempt_limit_answers_429() -> None:
    cfg = SimulatorConfig(ws_connect_limit=3, ws_connect_window=60.0)

    async def main(url: str) -> list[int]:
        statuses = []
        async with aiohttp.ClientSession() as s:
            for _ in range(4):
                try:
                    ws = await s.ws_connect(ws_url(url, "/ws/btcusdt@trade"))
                    statuses.append(101)
                    await ws.close()
                except aiohttp.WSServerHandshakeError as exc:
                    statuses.append(exc.status)
        return statuses

    with SimulatorServer(cfg) as sim:
        assert run(main(sim.url)) == [101, 101, 101, 429]


def test_fault_drop_now(url: str) -> None:
    async def main() -> tuple[float | None, int | None]:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(ws_url(url, "/ws/btcusdt@trade")) as ws,
        ):
            await asyncio.sleep(0.2)
            await asyncio.to_thread(_post, url, "/_sim/ws/drop")
            return await wait_closed(ws, 3.0), ws.close_code

    closed, code = run(main())
    assert closed is not None and code != 1000  # no orderly close frame


def test_fault_drop_rate(url: str) -> None:
    _post(url, "/_sim/ws/faults", {"drop_rate": 1.0})

    async def main() -> float | None:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(ws_url(url, "/ws/btcusdt@trade")) as ws,
        ):
            return await wait_closed(ws, 3.0)

    assert run(main()) is not None
    assert requests.get(url + "/_sim/ws/stats", timeout=5).json()["dropped_fault"] >= 1


def test_fault_skip_depth_ids(url: str) -> None:
    async def main() -> list[Any]:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(ws_url(url, "/ws/solusdt@depth@100ms")) as ws,
        ):
            msgs = await collect(ws, 0.5)
            await asyncio.to_thread(_post, url, "/_sim/ws/faults", {"skip_depth_next": 1})
            return msgs + await collect(ws, 0.5)

    diffs = run(main())
    gaps = [
        (a["u"], b["U"]) for a, b in zip(diffs, diffs[1:], strict=False) if b["U"] != a["u"] + 1
    ]
    assert len(gaps) == 1 and gaps[0][1] > gaps[0][0] + 1


def test_fault_malformed_frames(url: str) -> None:
    _post(url, "/_sim/ws/faults", {"malformed_rate": 1.0})

    async def main() -> list[Any]:
        url_ = ws_url(url, "/ws/btcusdt@trade/btcusdt@depth@100ms")
        async with aiohttp.ClientSession() as s, s.ws_connect(url_) as ws:
            return await collect(ws, 1.0)

    msgs = run(main())
    invalid = [m for m in msgs if isinstance(m, str)]
    bad_field = [
        m
        for m in msgs
        if isinstance(m, dict) and ("NaN-bad" in (m.get("p"), m.get("b")) or m.get("U") == "bad")
    ]
    assert invalid and bad_field and len(invalid) + len(bad_field) == len(msgs)


def test_fault_stall_keeps_socket_open(url: str) -> None:
    async def main() -> tuple[list[float], bool]:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(ws_url(url, "/ws/btcusdt@depth@100ms")) as ws,
        ):
            await collect(ws, 0.3)
            await asyncio.to_thread(_post, url, "/_sim/ws/stall", {"seconds": 1.0})
            arrivals = [time.monotonic()]
            end = arrivals[0] + 2.0
            while time.monotonic() < end:
                try:
                    msg = await ws.receive(timeout=end - time.monotonic())
                except TimeoutError:
                    break
                assert msg.type == aiohttp.WSMsgType.TEXT
                arrivals.append(time.monotonic())
            return arrivals, not ws.closed

    arrivals, open_ = run(main())
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert open_ and max(gaps) > 0.7
    assert len(arrivals) > 5  # streaming resumed, with what was held back


def test_fault_server_shutdown(url: str) -> None:
    async def main() -> tuple[list[Any], int | None]:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(ws_url(url, "/ws/btcusdt@trade")) as ws,
        ):
            await asyncio.sleep(0.2)
            await asyncio.to_thread(_post, url, "/_sim/ws/shutdown")
            return await collect_to_close(ws, 3.0)

    msgs, code = run(main())
    assert msgs[-1]["e"] == "serverShutdown" and isinstance(msgs[-1]["E"], int)
    assert code == 1000
