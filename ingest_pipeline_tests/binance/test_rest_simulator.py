"""The REST client against the simulator over a real socket, with and without faults."""

from __future__ import annotations

import pytest
import requests

from ingest_pipeline.binance.history import fetch_agg_trades, fetch_klines, fetch_trades
from ingest_pipeline.binance.rest import BinanceRestClient
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline.timeutil import HOUR_MS, parse_hour

HOUR = parse_hour("2024-08-09-03:00")


def without_ingest_ts(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "ingest_ts"} for r in records]


def test_hour_of_agg_trades_is_exact_and_ids_tile_the_trades(simulator_url: str) -> None:
    client = BinanceRestClient(simulator_url)
    aggs = fetch_agg_trades(client, "ETHUSDT", HOUR)
    assert not aggs.rejects
    ids = [r["trade_id"] for r in aggs.records]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert all(HOUR <= r["event_ts"] < HOUR + HOUR_MS for r in aggs.records)
    # The neighbours of the hour, asked for directly, are outside it.
    before = requests.get(
        f"{simulator_url}/api/v3/aggTrades",
        params={"symbol": "ETHUSDT", "fromId": ids[0] - 1, "limit": 1},
        timeout=5,
    ).json()[0]
    assert before["T"] < HOUR
    trades = fetch_trades(
        client, "ETHUSDT", aggs.records[0]["first_trade_id"], aggs.records[-1]["last_trade_id"]
    )
    assert len(trades.records) == sum(
        r["last_trade_id"] - r["first_trade_id"] + 1 for r in aggs.records
    )
    assert sum(t["qty"] for t in trades.records) == pytest.approx(
        sum(a["qty"] for a in aggs.records), abs=1e-6
    )
    klines = fetch_klines(client, "ETHUSDT", "1m", HOUR)
    assert [k["open_time"] for k in klines.records] == list(range(HOUR, HOUR + HOUR_MS, 60_000))
    assert sum(k["trade_count"] for k in klines.records) == len(trades.records)


def test_faults_lose_nothing_double_nothing_and_never_earn_a_418(simulator_url: str) -> None:
    hours = (HOUR, HOUR + HOUR_MS)
    clean = [fetch_agg_trades(BinanceRestClient(simulator_url), "BTCUSDT", h) for h in hours]
    config = SimulatorConfig(fault_rate=0.2, fault_retry_after=1, slow_seconds=1.5, seed=7)
    with SimulatorServer(config) as faulty:
        client = BinanceRestClient(
            faulty.url, read_timeout_s=0.5, backoff_base_s=0.05, backoff_cap_s=0.5
        )
        got = [fetch_agg_trades(client, "BTCUSDT", h) for h in hours]
        stats = requests.get(f"{faulty.url}/_sim/stats", timeout=5).json()
    for fetched, expected in zip(got, clean, strict=True):
        assert without_ingest_ts(fetched.records) == without_ingest_ts(expected.records)
        assert not fetched.rejects
    assert set(stats["faults"]) == {"429", "5xx", "slow", "truncated", "malformed"}
    assert stats["bans"] == 0 and "418" not in stats["by_status"]
    assert client.stats.banned_418 == 0
    assert client.stats.throttled_429 == stats["faults"]["429"]
    assert client.stats.retries >= sum(stats["faults"].values())
