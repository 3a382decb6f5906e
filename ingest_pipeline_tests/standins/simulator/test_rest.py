"""The simulator over a real socket, read with plain ``requests`` like any Binance client."""

import json
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
import requests

from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline.standins.simulator.basics import HOUR_MS, default_universe
from ingest_pipeline.standins.simulator.market import Market

# Servers over real sockets (see ingest_pipeline_tests/tiers.py).
pytestmark = pytest.mark.integration

T0 = 1_704_067_200_000  # 2024-01-01T00:00Z
H_2024 = (T0 - 1_499_990_400_000) // HOUR_MS
MODEL = Market(default_universe())


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(weight_limit=10**9)) as server:
        yield server


@pytest.fixture
def url(sim: SimulatorServer) -> str:
    requests.post(f"{sim.url}/_sim/reset", timeout=5)
    return sim.url


def get(url: str, path: str, **params: object) -> requests.Response:
    return requests.get(url + path, params=params, timeout=10)


def test_two_servers_give_identical_bytes(url: str) -> None:
    with SimulatorServer() as other:
        for path, params in [
            (
                "/api/v3/aggTrades",
                {"symbol": "BTCUSDT", "startTime": T0, "endTime": T0 + HOUR_MS - 1, "limit": 1000},
            ),
            (
                "/api/v3/historicalTrades",
                {"symbol": "ETHUSDT", "fromId": 123_456_789, "limit": 1000},
            ),
            (
                "/api/v3/klines",
                {"symbol": "BTCUSDT", "interval": "1m", "startTime": T0, "limit": 120},
            ),
        ]:
            a, b = get(url, path, **params), get(other.url, path, **params)
            assert a.status_code == b.status_code == 200
            assert a.content == b.content and len(a.json()) > 0


def test_wire_format(url: str) -> None:
    r = get(url, "/api/v3/aggTrades", symbol="BTCUSDT", startTime=T0, endTime=T0 + 60_000, limit=1)
    assert r.headers["Content-Type"].startswith("application/json")
    [agg] = r.json()
    assert list(agg) == ["a", "p", "q", "f", "l", "T", "m", "M"]
    assert agg["p"].count(".") == 1 and len(agg["p"].split(".")[1]) == 8
    [trade] = get(
        url, "/api/v3/historicalTrades", symbol="BTCUSDT", fromId=agg["f"], limit=1
    ).json()
    assert list(trade) == ["id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"]
    assert Decimal(trade["quoteQty"]) == Decimal(trade["price"]) * Decimal(trade["qty"])
    [kline] = get(
        url, "/api/v3/klines", symbol="BTCUSDT", interval="1m", startTime=T0, limit=1
    ).json()
    assert len(kline) == 12 and kline[0] == T0 and kline[6] == T0 + 59_999 and kline[11] == "0"
    info = get(url, "/api/v3/exchangeInfo").json()
    assert {
        "rateLimitType": "REQUEST_WEIGHT",
        "interval": "MINUTE",
        "intervalNum": 1,
        "limit": 10**9,
    } in info["rateLimits"]
    btc = next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")
    filters = {f["filterType"]: f for f in btc["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.01000000"
    assert filters["LOT_SIZE"]["stepSize"] == "0.00001000"


def test_trade_ids_contiguous_across_hour_boundary(url: str) -> None:
    first = MODEL["ETHUSDT"].trade_id_start(H_2024)
    rows = get(
        url, "/api/v3/historicalTrades", symbol="ETHUSDT", fromId=first - 500, limit=1000
    ).json()
    ids = [r["id"] for r in rows]
    assert ids == list(range(first - 500, first + 500))
    times = [r["time"] for r in rows]
    assert times == sorted(times) and times[499] < T0 <= times[500]


def _page_trades(url: str, symbol: str, from_id: int, until_ms: int) -> list[dict]:
    out: list[dict] = []
    while True:
        page = get(
            url, "/api/v3/historicalTrades", symbol=symbol, fromId=from_id, limit=1000
        ).json()
        out += [t for t in page if t["time"] < until_ms]
        if not page or page[-1]["time"] >= until_ms:
            return out
        from_id = page[-1]["id"] + 1


def _page_aggs(url: str, symbol: str, start_ms: int, until_ms: int) -> list[dict]:
    page = get(
        url,
        "/api/v3/aggTrades",
        symbol=symbol,
        startTime=start_ms,
        endTime=until_ms - 1,
        limit=1000,
    ).json()
    out = list(page)
    while len(page) == 1000 and page[-1]["T"] < until_ms:
        page = get(
            url, "/api/v3/aggTrades", symbol=symbol, fromId=page[-1]["a"] + 1, limit=1000
        ).json()
        out += [a for a in page if a["T"] < until_ms]
    return out


def test_agg_trades_tile_trades_and_klines_aggregate_them(url: str) -> None:
    h0, h1 = T0, T0 + HOUR_MS
    aggs = _page_aggs(url, "BNBUSDT", h0, h1)
    trades = _page_trades(url, "BNBUSDT", aggs[0]["f"], h1)
    assert [a["a"] for a in aggs] == list(range(aggs[0]["a"], aggs[0]["a"] + len(aggs)))
    assert [t["id"] for t in trades] == list(range(aggs[0]["f"], aggs[-1]["l"] + 1))
    by_id = {t["id"]: t for t in trades}
    for a, b in zip(aggs, aggs[1:], strict=False):
        assert b["f"] == a["l"] + 1
    for a in aggs:
        members = [by_id[i] for i in range(a["f"], a["l"] + 1)]
        assert {(t["price"], t["time"], t["isBuyerMaker"]) for t in members} == {
            (a["p"], a["T"], a["m"])
        }
        assert sum(Decimal(t["qty"]) for t in members) == Decimal(a["q"])

    [k] = get(url, "/api/v3/klines", symbol="BNBUSDT", interval="1h", startTime=h0, limit=1).json()
    prices = [Decimal(t["price"]) for t in trades]
    qty = [Decimal(t["qty"]) for t in trades]
    buy = [not t["isBuyerMaker"] for t in trades]
    assert Decimal(k[1]) == prices[0] and Decimal(k[4]) == prices[-1]
    assert Decimal(k[2]) == max(prices) and Decimal(k[3]) == min(prices)
    assert Decimal(k[5]) == sum(qty)
    assert Decimal(k[7]) == sum(p * q for p, q in zip(prices, qty, strict=True))
    assert k[8] == len(trades)
    assert Decimal(k[9]) == sum(q for q, b in zip(qty, buy, strict=True) if b)
    assert Decimal(k[10]) == sum(p * q for p, q, b in zip(prices, qty, buy, strict=True) if b)
    minutes = get(
        url, "/api/v3/klines", symbol="BNBUSDT", interval="1m", startTime=h0, endTime=h1 - 1
    ).json()
    assert len(minutes) == 60 and sum(m[8] for m in minutes) == len(trades)
    assert sum(Decimal(m[7]) for m in minutes) == Decimal(k[7])


def test_paging_through_a_crowded_millisecond(url: str) -> None:
    btc = MODEL["BTCUSDT"]
    h = next(h for h in range(H_2024, H_2024 + 48) if _busiest_ms(btc.hour(h).time)[1] > 1000)
    ms, n = _busiest_ms(btc.hour(h).time)
    aggs = _page_aggs(url, "BTCUSDT", ms, ms + 1)
    assert {a["T"] for a in aggs} == {ms}
    trades = _page_trades(url, "BTCUSDT", aggs[0]["f"], ms + 1)
    assert len(trades) == n == aggs[-1]["l"] - aggs[0]["f"] + 1
    assert len({t["id"] for t in trades}) == n


def _busiest_ms(times) -> tuple[int, int]:
    import numpy as np

    values, counts = np.unique(times, return_counts=True)
    i = int(counts.argmax())
    return int(values[i]), int(counts[i])


def test_limits_default_and_cap(url: str) -> None:
    for path, default in [
        ("/api/v3/aggTrades", 500),
        ("/api/v3/trades", 500),
        ("/api/v3/historicalTrades", 500),
    ]:
        assert len(get(url, path, symbol="BTCUSDT").json()) == default
        assert len(get(url, path, symbol="BTCUSDT", limit=5000).json()) == 1000
    assert len(get(url, "/api/v3/klines", symbol="BTCUSDT", interval="1s").json()) == 500
    assert (
        len(get(url, "/api/v3/klines", symbol="BTCUSDT", interval="1s", limit=2000).json()) == 1000
    )
    book = get(url, "/api/v3/depth", symbol="BTCUSDT").json()
    assert len(book["bids"]) == len(book["asks"]) == 100
    book = get(url, "/api/v3/depth", symbol="BTCUSDT", limit=9999).json()
    assert len(book["bids"]) == len(book["asks"]) == 5000


@pytest.mark.parametrize(
    ("path", "params", "code", "msg"),
    [
        ("/api/v3/aggTrades", {"symbol": "NOPEUSDT"}, -1121, "Invalid symbol."),
        (
            "/api/v3/depth",
            {},
            -1102,
            "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
        ),
        ("/api/v3/klines", {"symbol": "BTCUSDT", "interval": "7m"}, -1120, "Invalid interval."),
        ("/api/v3/klines", {"symbol": "BTCUSDT"}, -1102, None),
        ("/api/v3/aggTrades", {"symbol": "BTCUSDT", "limit": "ten"}, -1100, None),
        ("/api/v3/aggTrades", {"symbol": "BTCUSDT", "fromId": 5, "startTime": T0}, -1128, None),
        (
            "/api/v3/aggTrades",
            {"symbol": "BTCUSDT", "startTime": T0, "endTime": T0 + HOUR_MS + 1},
            -1127,
            None,
        ),
        ("/api/v3/exchangeInfo", {"symbols": '["BTCUSDT","NOPE"]'}, -1121, "Invalid symbol."),
    ],
)
def test_error_bodies(url: str, path: str, params: dict, code: int, msg: str | None) -> None:
    r = get(url, path, **params)
    assert r.status_code == 400
    body = r.json()
    assert list(body) == ["code", "msg"] and body["code"] == code
    if msg:
        assert body["msg"] == msg


def test_weight_header_counts_documented_weights(url: str) -> None:
    calls = [
        ("/api/v3/ping", {}, 1),
        ("/api/v3/time", {}, 1),
        ("/api/v3/exchangeInfo", {}, 20),
        ("/api/v3/aggTrades", {"symbol": "BTCUSDT", "limit": 1}, 4),
        ("/api/v3/trades", {"symbol": "BTCUSDT", "limit": 1}, 25),
        ("/api/v3/historicalTrades", {"symbol": "BTCUSDT", "limit": 1}, 25),
        ("/api/v3/klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": 1}, 2),
        ("/api/v3/depth", {"symbol": "BTCUSDT", "limit": 100}, 5),
        ("/api/v3/depth", {"symbol": "BTCUSDT", "limit": 500}, 25),
        ("/api/v3/depth", {"symbol": "BTCUSDT", "limit": 1000}, 50),
        ("/api/v3/depth", {"symbol": "BTCUSDT", "limit": 5000}, 250),
    ]
    used = None
    for path, params, weight in calls:
        r = get(url, path, **params)
        now = int(r.headers["X-MBX-USED-WEIGHT-1M"])
        assert r.headers["X-MBX-USED-WEIGHT"] == r.headers["X-MBX-USED-WEIGHT-1M"]
        if used is not None and now > used:  # a new calendar minute restarts the count
            assert now - used == weight, path
        used = now


def test_depth_snapshot(url: str) -> None:
    first = get(url, "/api/v3/depth", symbol="ETHUSDT", limit=1000).json()
    assert list(first) == ["lastUpdateId", "bids", "asks"]
    bids = [(Decimal(p), Decimal(q)) for p, q in first["bids"]]
    asks = [(Decimal(p), Decimal(q)) for p, q in first["asks"]]
    assert [p for p, _ in bids] == sorted((p for p, _ in bids), reverse=True)
    assert [p for p, _ in asks] == sorted(p for p, _ in asks)
    assert bids[0][0] < asks[0][0]
    assert all(q > 0 for _, q in bids + asks)
    time.sleep(0.25)
    later = get(url, "/api/v3/depth", symbol="ETHUSDT", limit=5).json()
    assert later["lastUpdateId"] > first["lastUpdateId"]


def test_non_ascii_symbol(url: str) -> None:
    symbol = "币安人生USDT"
    r = requests.get(f"{url}/api/v3/exchangeInfo", params={"symbol": symbol}, timeout=5)
    assert "%E5%B8%81" in r.url
    [info] = r.json()["symbols"]
    assert info["symbol"] == symbol and info["baseAsset"] == "币安人生"
    assert len(get(url, "/api/v3/aggTrades", symbol=symbol, startTime=T0, limit=10).json()) == 10
    assert get(url, "/api/v3/depth", symbol=symbol, limit=5).json()["bids"]


def test_no_data_before_genesis_or_after_now(url: str) -> None:
    genesis = 1_499_990_400_000
    assert (
        get(
            url,
            "/api/v3/aggTrades",
            symbol="BTCUSDT",
            startTime=genesis - HOUR_MS,
            endTime=genesis - 1,
        ).json()
        == []
    )
    kl = get(
        url,
        "/api/v3/klines",
        symbol="BTCUSDT",
        interval="1h",
        startTime=genesis - 10 * HOUR_MS,
        limit=3,
    ).json()
    assert kl[0][0] == genesis
    future = int(time.time() * 1000) + HOUR_MS
    assert get(url, "/api/v3/aggTrades", symbol="BTCUSDT", startTime=future).json() == []
    recent = get(url, "/api/v3/trades", symbol="BTCUSDT", limit=1000).json()
    assert recent[-1]["time"] <= int(time.time() * 1000)


def test_429_then_418_when_retry_after_is_ignored() -> None:
    cfg = SimulatorConfig(weight_limit=30, ban_seconds=1.5)
    with SimulatorServer(cfg) as server:
        statuses = []
        for _ in range(40):
            r = requests.get(f"{server.url}/api/v3/exchangeInfo", timeout=5)
            statuses.append(r.status_code)
            if r.status_code != 200:
                break
        # A new minute may start mid-loop; the limit is hit within two minutes' worth anyway.
        assert statuses[-1] == 429
        assert r.json()["code"] == -1003 and 1 <= int(r.headers["Retry-After"]) <= 60
        ban = requests.get(f"{server.url}/api/v3/ping", timeout=5)
        assert ban.status_code == 418 and ban.json()["code"] == -1003
        assert "IP banned until" in ban.json()["msg"]
        assert 1 <= int(ban.headers["Retry-After"]) <= 2
        stats = requests.get(f"{server.url}/_sim/stats", timeout=5).json()
        assert (
            stats["bans"] == 1 and stats["by_status"]["429"] == 1 and stats["by_status"]["418"] == 1
        )


def test_faults_happen_at_the_configured_rate(url: str) -> None:
    setting = {
        "rate": 0.4,
        "kinds": ["429", "5xx", "truncated", "malformed"],
        "retry_after": 0,
        "seed": 7,
    }
    assert requests.post(f"{url}/_sim/faults", json=setting, timeout=5).json()["rate"] == 0.4
    seen = {"429": 0, "5xx": 0, "truncated": 0, "malformed": 0, "ok": 0}
    n = 500
    for _ in range(n):
        r = get(url, "/api/v3/time")
        if r.status_code == 429:
            assert r.headers["Retry-After"] == "0"
            seen["429"] += 1
        elif r.status_code >= 500:
            assert r.status_code in (500, 502, 503, 504)
            seen["5xx"] += 1
        else:
            assert r.status_code == 200
            try:
                assert "serverTime" in json.loads(r.content)
                seen["ok"] += 1
            except json.JSONDecodeError:
                kind = "truncated" if r.content.startswith(b'{"serverTime') else "malformed"
                seen[kind] += 1
    stats = requests.get(f"{url}/_sim/stats", timeout=5).json()
    assert stats["bans"] == 0 and "418" not in stats["by_status"]
    assert {k: v for k, v in seen.items() if k != "ok"} == stats["faults"]
    assert seen["ok"] == pytest.approx(0.6 * n, abs=50)
    for kind in ("429", "5xx", "truncated", "malformed"):
        assert seen[kind] == pytest.approx(0.1 * n, abs=25), kind
    requests.post(f"{url}/_sim/faults", json={"rate": 0.0}, timeout=5)


def test_slow_fault(url: str) -> None:
    requests.post(
        f"{url}/_sim/faults", json={"rate": 0.3, "kinds": ["slow"], "slow_seconds": 0.3}, timeout=5
    )
    slow = 0
    for _ in range(20):
        t = time.perf_counter()
        assert get(url, "/api/v3/ping").status_code == 200
        slow += time.perf_counter() - t >= 0.3
    faults = requests.get(f"{url}/_sim/stats", timeout=5).json()["faults"]
    assert slow == faults["slow"] and 2 <= slow <= 12
    requests.post(f"{url}/_sim/faults", json={"rate": 0.0}, timeout=5)
