"""Archive faults against the simulator: every hour ends up equal to REST, the faulty ones
through REST, never a silently short hour."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from ingest_pipeline.binance.archive import ArchiveClient, ArchiveError
from ingest_pipeline.binance.history import (
    FROM_ARCHIVE,
    FROM_REST,
    HistorySource,
    HourFetch,
    fetch_agg_trades,
    fetch_klines,
    fetch_trades,
)
from ingest_pipeline.binance.rest import BinanceRestClient
from ingest_pipeline.records import Record
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline.storage.bronze import TradeCoverage
from ingest_pipeline.timeutil import HOUR_MS, parse_hour

# Servers over real sockets (see ingest_pipeline_tests/tiers.py).
pytestmark = pytest.mark.integration

SYMBOL = "SYM0001USDT"
DAY = parse_hour("2024-12-30-00:00")
HOURS = [DAY + i * HOUR_MS for i in range(24)]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    # REST is asked for the truth of every hour: a budget above Binance's keeps it from waiting
    # for the next minute (pacing is tested elsewhere).
    with SimulatorServer(SimulatorConfig(extra_symbols=2, weight_limit=200_000)) as server:
        yield server


@pytest.fixture
def faults(sim: SimulatorServer) -> Iterator[Any]:
    def switch(*items: dict[str, Any], **settings: Any) -> None:
        body = {"faults": list(items), **settings}
        resp = requests.post(f"{sim.url}/_sim/archive/faults", json=body, timeout=10)
        assert resp.status_code == 200, resp.text

    yield switch
    switch(microseconds=True)


def strip(records: list[Record]) -> list[Record]:
    return [{k: v for k, v in r.items() if k != "ingest_ts"} for r in records]


class Truth:
    """What Binance's REST says about each hour (the simulator asked directly)."""

    def __init__(self, url: str) -> None:
        self.rest = BinanceRestClient(url)
        self._aggs: dict[int, list[Record]] = {}

    def aggs(self, hour: int) -> list[Record]:
        if hour not in self._aggs:
            self._aggs[hour] = fetch_agg_trades(self.rest, SYMBOL, hour).records
        return self._aggs[hour]

    def bounds(self, hour: int) -> tuple[int, int] | None:
        return TradeCoverage.of(self.aggs(hour)).bounds

    def trades(self, hour: int) -> list[Record]:
        a = self.aggs(hour)
        return fetch_trades(
            self.rest, SYMBOL, a[0]["first_trade_id"], a[-1]["last_trade_id"]
        ).records

    def klines(self, hour: int) -> list[Record]:
        return fetch_klines(self.rest, SYMBOL, "1m", hour).records


def source(sim: SimulatorServer, mode: str = "auto") -> tuple[HistorySource, ArchiveClient]:
    archive = ArchiveClient(sim.url, backoff_base_s=0.01)
    return HistorySource(BinanceRestClient(sim.url), archive, mode), archive


def run_all(src: HistorySource, truth: Truth) -> dict[str, list[HourFetch]]:
    got = {
        "agg_trades": list(src.agg_trades(SYMBOL, HOURS)),
        "trades": list(src.trades(SYMBOL, HOURS, truth.bounds)),
        "klines_1m": list(src.klines(SYMBOL, "1m", HOURS)),
    }
    expect = {"agg_trades": truth.aggs, "trades": truth.trades, "klines_1m": truth.klines}
    for data_type, hours in got.items():
        assert [h.hour for h in hours] == HOURS, data_type
        for h in hours:
            assert h.fetched.records, (data_type, h.hour)  # a busy-enough symbol: never empty
            assert strip(h.fetched.records) == strip(expect[data_type](h.hour)), (data_type, h.hour)
    return got


def sources(hours: list[HourFetch]) -> list[str]:
    return [h.source for h in hours]


ALL_ARCHIVE = [FROM_ARCHIVE] * 24
CUT_AT_20_30 = [FROM_ARCHIVE] * 20 + [FROM_REST] * 4


REST_HISTORY = ("/api/v3/aggTrades", "/api/v3/historicalTrades", "/api/v3/klines")


def rest_history_requests(sim: SimulatorServer) -> int:
    by_path = requests.get(f"{sim.url}/_sim/stats", timeout=5).json()["by_path"]
    return sum(by_path.get(p, 0) for p in REST_HISTORY)


def test_clean_day_comes_from_the_archive_without_rest_history(
    sim: SimulatorServer, faults: Any
) -> None:
    faults()
    truth = Truth(sim.url)
    aggs = {h: truth.aggs(h) for h in HOURS}
    before = rest_history_requests(sim)
    src, archive = source(sim)
    got = {
        "agg_trades": list(src.agg_trades(SYMBOL, HOURS)),
        "trades": list(src.trades(SYMBOL, HOURS, truth.bounds)),
        "klines_1m": list(src.klines(SYMBOL, "1m", HOURS)),
    }
    assert rest_history_requests(sim) == before
    assert all(sources(h) == ALL_ARCHIVE for h in got.values())
    # aggTrades, trades and 1m klines: each day file once (the klines also served as the
    # trade-count reference of the aggTrades), nothing left on disk.
    assert archive.stats.downloads == 3
    assert not src._kept
    for h in got["agg_trades"]:
        assert strip(h.fetched.records) == strip(aggs[h.hour])


def fallback_levels(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "ingest_pipeline.binance.history" and "from REST" in r.getMessage()
    ]


def test_missing_day_falls_back_to_rest_for_every_hour(
    sim: SimulatorServer, faults: Any, caplog: pytest.LogCaptureFixture
) -> None:
    faults({"fault": "missing", "symbol": SYMBOL, "date": "2024-12-30"})
    caplog.set_level(logging.INFO, logger="ingest_pipeline.binance.history")
    got = run_all(source(sim)[0], Truth(sim.url))
    for hours in got.values():
        assert sources(hours) == [FROM_REST] * 24
        assert "not in the archive" in hours[0].reason
    # Long past Binance's publication lag: a defect of the archive, worth a warning.
    assert {level for level, _ in fallback_levels(caplog)} == {logging.WARNING}


def test_hours_the_archive_cannot_have_yet_come_from_rest_without_a_warning(
    sim: SimulatorServer, faults: Any, caplog: pytest.LogCaptureFixture
) -> None:
    faults({"fault": "missing", "symbol": SYMBOL, "date": "2024-12-30"})
    caplog.set_level(logging.INFO, logger="ingest_pipeline.binance.history")
    archive = ArchiveClient(sim.url, backoff_base_s=0.01)
    rest = BinanceRestClient(sim.url)
    # The day ended 5 hours ago and is not published yet; then the same day still running.
    for now, reason in (
        (DAY + 29 * HOUR_MS, "is not published yet (its period ended 5 h ago)"),
        (DAY + 23 * HOUR_MS + 1, "the UTC day is not over"),
    ):
        caplog.clear()
        got = list(
            HistorySource(rest, archive, "auto", now=lambda n=now: n).agg_trades(SYMBOL, HOURS)
        )
        assert sources(got) == [FROM_REST] * 24
        assert reason in got[0].reason
        assert fallback_levels(caplog) == [(logging.INFO, f"24 hour(s) from REST: {got[0].reason}")]


@pytest.mark.parametrize("kind", ["aggTrades", "trades", "klines"])
def test_truncated_file_is_detected_and_its_hours_come_from_rest(
    sim: SimulatorServer, faults: Any, kind: str
) -> None:
    faults({"fault": "truncated", "symbol": SYMBOL, "date": "2024-12-30", "kind": kind})
    got = run_all(source(sim)[0], Truth(sim.url))
    cut = {"aggTrades": "agg_trades", "trades": "trades", "klines": "klines_1m"}[kind]
    for data_type, hours in got.items():
        # Hour 20 is cut at 20:30: partly there, still caught.
        assert sources(hours) == (CUT_AT_20_30 if data_type == cut else ALL_ARCHIVE), data_type


def test_bad_checksum_is_never_trusted(sim: SimulatorServer, faults: Any) -> None:
    faults({"fault": "bad_checksum", "symbol": SYMBOL, "date": "2024-12-30", "kind": "aggTrades"})
    src, archive = source(sim)
    got = run_all(src, Truth(sim.url))
    assert sources(got["agg_trades"]) == [FROM_REST] * 24
    assert "sha256" in got["agg_trades"][0].reason
    assert archive.stats.checksum_mismatches == archive.checksum_attempts
    assert sources(got["trades"]) == ALL_ARCHIVE


def test_file_replaced_while_read_is_read_again(sim: SimulatorServer, faults: Any) -> None:
    faults({"fault": "replaced", "symbol": SYMBOL, "date": "2024-12-30", "kind": "trades"})
    src, archive = source(sim)
    got = run_all(src, Truth(sim.url))
    assert all(sources(h) == ALL_ARCHIVE for h in got.values())
    assert archive.stats.checksum_mismatches == 1


def test_header_rows_are_detected_and_skipped(sim: SimulatorServer, faults: Any) -> None:
    faults({"fault": "header", "symbol": SYMBOL, "date": "2024-12-30"})
    got = run_all(source(sim)[0], Truth(sim.url))
    assert all(sources(h) == ALL_ARCHIVE for h in got.values())


def test_archive_mode_refuses_to_fill_in_from_rest(sim: SimulatorServer, faults: Any) -> None:
    faults({"fault": "truncated", "symbol": SYMBOL, "date": "2024-12-30", "kind": "aggTrades"})
    src, _ = source(sim, "archive")
    with pytest.raises(ArchiveError, match="history_source is archive"):
        list(src.agg_trades(SYMBOL, HOURS))


@pytest.mark.parametrize("symbol", ["SYM0001USDT", "SYM0002USDT"])
def test_days_around_the_microsecond_switch_equal_rest_record_for_record(
    sim: SimulatorServer, faults: Any, symbol: str
) -> None:
    faults()
    hours = [parse_hour("2024-12-30-00:00") + i * HOUR_MS for i in range(4 * 24)]
    src, _ = source(sim)
    rest = BinanceRestClient(sim.url)
    aggs = {}
    for got in src.agg_trades(symbol, hours):
        truth = fetch_agg_trades(rest, symbol, got.hour).records
        assert got.source == FROM_ARCHIVE and strip(got.fetched.records) == strip(truth)
        assert all(r["event_ts"] < 10**13 for r in got.fetched.records)  # ms, not µs
        aggs[got.hour] = truth
    for got in src.trades(symbol, hours, lambda h: TradeCoverage.of(aggs[h]).bounds):
        a = aggs[got.hour]
        truth = fetch_trades(rest, symbol, a[0]["first_trade_id"], a[-1]["last_trade_id"]).records
        assert got.source == FROM_ARCHIVE and strip(got.fetched.records) == strip(truth)
    for got in src.klines(symbol, "1m", hours):
        truth = fetch_klines(rest, symbol, "1m", got.hour).records
        assert got.source == FROM_ARCHIVE and strip(got.fetched.records) == strip(truth)


def test_a_whole_month_comes_from_the_monthly_files(sim: SimulatorServer, faults: Any) -> None:
    faults()
    month = [parse_hour("2024-11-01-00:00") + i * HOUR_MS for i in range(30 * 24)]
    src, archive = source(sim)
    got = list(src.agg_trades(SYMBOL, month))
    src.close()
    assert [g.hour for g in got] == month and set(sources(got)) == {FROM_ARCHIVE}
    assert {g.reason for g in got} == {f"{SYMBOL}-aggTrades-2024-11.zip"}
    # The monthly aggTrades file and its reference, the monthly 1m klines: nothing per day.
    assert archive.stats.downloads == 2
    rest = BinanceRestClient(sim.url)
    for g in got[::97]:
        assert strip(g.fetched.records) == strip(fetch_agg_trades(rest, SYMBOL, g.hour).records)


def test_rows_marked_invalid_send_their_hour_to_rest_and_are_dead_lettered(
    sim: SimulatorServer, faults: Any
) -> None:
    faults({"fault": "invalid_row", "symbol": SYMBOL, "date": "2024-12-30", "cut_at": "07:10"})
    got = run_all(source(sim)[0], Truth(sim.url))
    agg = got["agg_trades"]
    assert sources(agg) == [FROM_ARCHIVE] * 7 + [FROM_REST] + [FROM_ARCHIVE] * 16
    assert agg[7].invalid_marked == 1
    (reject,) = agg[7].fetched.rejects
    assert "marked invalid by Binance" in reject["reason"] and reject["raw"]["f"] == -1
    assert sources(got["trades"]) == ALL_ARCHIVE


def test_2025_files_in_milliseconds_read_the_same(sim: SimulatorServer, faults: Any) -> None:
    # Binance's spot files switched to µs on 2025-01-01; a file still in ms must read the same.
    faults(microseconds=False)
    hours = [parse_hour("2025-01-01-00:00") + i * HOUR_MS for i in range(24)]
    src, _ = source(sim)
    rest = BinanceRestClient(sim.url)
    got = list(src.agg_trades(SYMBOL, hours))
    assert sources(got) == ALL_ARCHIVE
    for g in got:
        assert strip(g.fetched.records) == strip(fetch_agg_trades(rest, SYMBOL, g.hour).records)
