"""Normalizers against Binance's documented examples, real captures and malformed input."""

from __future__ import annotations

import copy
import gzip
import math
from collections import Counter
from itertools import pairwise
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest_pipeline.binance.normalize import (
    AGG_TRADE,
    CONTROL,
    KLINE,
    SERVER_SHUTDOWN,
    Rejected,
    agg_trade_from_rest,
    agg_trade_from_ws,
    bba_from_ws,
    depth_delta_from_ws,
    depth_snapshot_from_rest,
    kline_from_rest,
    kline_from_ws,
    normalize_page,
    parse_ws_message,
    trade_from_rest,
    trade_from_ws,
)
from ingest_pipeline.records import BBA, DEPTH_DELTA, TRADE, MalformedPayload
from ingest_pipeline_tests.paths import CAPTURES

INGEST = 1_700_000_000_123

# ---------------------------------------------------------------------------------------------
# Binance's documented examples (binance-spot-api-docs rest-api.md, web-socket-streams.md)

DOC_AGG_TRADE_REST = {
    "a": 26129,
    "p": "0.01633102",
    "q": "4.70443515",
    "f": 27781,
    "l": 27781,
    "T": 1498793709153,
    "m": True,
    "M": True,
}
DOC_HISTORICAL_TRADE = {
    "id": 28457,
    "price": "4.00000100",
    "qty": "12.00000000",
    "quoteQty": "48.000012",
    "time": 1499865549590,
    "isBuyerMaker": True,
    "isBestMatch": True,
}
DOC_KLINE_REST = [
    1499040000000,
    "0.01634790",
    "0.80000000",
    "0.01575800",
    "0.01577100",
    "148976.11427815",
    1499644799999,
    "2434.19055334",
    308,
    "1756.87402397",
    "28.46694368",
    "17928899.62484339",
]
DOC_DEPTH = {
    "lastUpdateId": 1027024,
    "bids": [["4.00000000", "431.00000000"]],
    "asks": [["4.00000200", "12.00000000"]],
}
DOC_WS_TRADE = {
    "e": "trade",
    "E": 1672515782136,
    "s": "BNBBTC",
    "t": 12345,
    "p": "0.001",
    "q": "100",
    "b": 88,
    "a": 50,
    "T": 1672515782136,
    "m": True,
    "M": True,
}
DOC_WS_AGG_TRADE = {
    "e": "aggTrade",
    "E": 1672515782136,
    "s": "BNBBTC",
    "a": 12345,
    "p": "0.001",
    "q": "100",
    "f": 100,
    "l": 105,
    "T": 1672515782136,
    "m": True,
    "M": True,
}
DOC_WS_BOOK_TICKER = {
    "u": 400900217,
    "s": "BNBUSDT",
    "b": "25.35190000",
    "B": "31.21000000",
    "a": "25.36520000",
    "A": "40.66000000",
}
DOC_WS_DEPTH = {
    "e": "depthUpdate",
    "E": 1672515782136,
    "s": "BNBBTC",
    "U": 157,
    "u": 160,
    "b": [["0.0024", "10"]],
    "a": [["0.0026", "100"]],
}
DOC_WS_KLINE = {
    "e": "kline",
    "E": 1672515782136,
    "s": "BNBBTC",
    "k": {
        "t": 1672515780000,
        "T": 1672515839999,
        "s": "BNBBTC",
        "i": "1m",
        "f": 100,
        "L": 200,
        "o": "0.0010",
        "c": "0.0020",
        "h": "0.0025",
        "l": "0.0015",
        "v": "1000",
        "n": 100,
        "x": False,
        "q": "1.0000",
        "V": "500",
        "Q": "0.500",
        "B": "123456",
    },
}


def test_doc_agg_trade_rest() -> None:
    assert agg_trade_from_rest(DOC_AGG_TRADE_REST, "BNBBTC", INGEST) == {
        "symbol": "BNBBTC",
        "event_ts": 1498793709153,
        "ingest_ts": INGEST,
        "trade_id": 26129,
        "price": 0.01633102,
        "qty": 4.70443515,
        "is_buyer_maker": True,
        "source": "rest",
        "first_trade_id": 27781,
        "last_trade_id": 27781,
    }


def test_doc_historical_trade() -> None:
    assert trade_from_rest(DOC_HISTORICAL_TRADE, "BNBBTC", INGEST) == {
        "symbol": "BNBBTC",
        "event_ts": 1499865549590,
        "ingest_ts": INGEST,
        "trade_id": 28457,
        "price": 4.000001,
        "qty": 12.0,
        "is_buyer_maker": True,
        "source": "rest",
    }


def test_doc_kline_rest() -> None:
    assert kline_from_rest(DOC_KLINE_REST, "BNBBTC", "1m", INGEST) == {
        "open_time": 1499040000000,
        "close_time": 1499644799999,
        "open_price": 0.0163479,
        "high_price": 0.8,
        "low_price": 0.015758,
        "close_price": 0.015771,
        "volume": 148976.11427815,
        "quote_volume": 2434.19055334,
        "trade_count": 308,
        "taker_buy_base_volume": 1756.87402397,
        "taker_buy_quote_volume": 28.46694368,
        "symbol": "BNBBTC",
        "interval": "1m",
        "ingest_ts": INGEST,
    }


def test_doc_depth_snapshot() -> None:
    assert depth_snapshot_from_rest(DOC_DEPTH, "BNBBTC", 1499827319559, INGEST) == {
        "symbol": "BNBBTC",
        "timestamp": 1499827319559,
        "ingest_ts": INGEST,
        "last_update_id": 1027024,
        "bids": [["4.00000000", "431.00000000"]],
        "asks": [["4.00000200", "12.00000000"]],
        "source": "rest",
    }


def _wrap(stream: str, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


@pytest.mark.parametrize("wrapped", [True, False], ids=["combined", "raw"])
def test_doc_ws_trade(wrapped: bool) -> None:
    raw = _wrap("bnbbtc@trade", DOC_WS_TRADE) if wrapped else orjson.dumps(DOC_WS_TRADE)
    expected = {
        "symbol": "BNBBTC",
        "event_ts": 1672515782136,  # T, the trade time
        "ingest_ts": INGEST,
        "trade_id": 12345,
        "price": 0.001,
        "qty": 100.0,
        "is_buyer_maker": True,
        "source": "sbe",
    }
    assert parse_ws_message(raw, INGEST) == (TRADE, expected)
    assert trade_from_ws(DOC_WS_TRADE, INGEST) == expected


def test_ws_trade_event_ts_is_trade_time_not_message_time() -> None:
    data = {**DOC_WS_TRADE, "E": 1672515782999}
    assert trade_from_ws(data, INGEST)["event_ts"] == 1672515782136


def test_doc_ws_agg_trade() -> None:
    expected = {
        "symbol": "BNBBTC",
        "event_ts": 1672515782136,
        "ingest_ts": INGEST,
        "trade_id": 12345,
        "price": 0.001,
        "qty": 100.0,
        "is_buyer_maker": True,
        "source": "sbe",
        "first_trade_id": 100,
        "last_trade_id": 105,
    }
    assert parse_ws_message(_wrap("bnbbtc@aggTrade", DOC_WS_AGG_TRADE), INGEST) == (
        AGG_TRADE,
        expected,
    )
    assert agg_trade_from_ws(DOC_WS_AGG_TRADE, INGEST) == expected


@pytest.mark.parametrize("wrapped", [True, False], ids=["combined", "raw-by-key-shape"])
def test_doc_ws_book_ticker(wrapped: bool) -> None:
    raw = (
        _wrap("bnbusdt@bookTicker", DOC_WS_BOOK_TICKER)
        if wrapped
        else orjson.dumps(DOC_WS_BOOK_TICKER)
    )
    expected = {
        "symbol": "BNBUSDT",
        "event_ts": INGEST,  # no exchange time in spot bookTicker
        "ingest_ts": INGEST,
        "bid_px": 25.3519,
        "bid_sz": 31.21,
        "ask_px": 25.3652,
        "ask_sz": 40.66,
        "source": "sbe",
        "update_id": 400900217,
    }
    assert parse_ws_message(raw, INGEST) == (BBA, expected)
    assert bba_from_ws(DOC_WS_BOOK_TICKER, INGEST) == expected


def test_doc_ws_depth_update() -> None:
    expected = {
        "symbol": "BNBBTC",
        "event_ts": 1672515782136,
        "ingest_ts": INGEST,
        "bids": [["0.0024", "10"]],
        "asks": [["0.0026", "100"]],
        "source": "sbe",
        "first_update_id": 157,
        "final_update_id": 160,
    }
    assert parse_ws_message(_wrap("bnbbtc@depth", DOC_WS_DEPTH), INGEST) == (DEPTH_DELTA, expected)
    assert depth_delta_from_ws(DOC_WS_DEPTH, INGEST) == expected


def test_doc_ws_kline() -> None:
    expected = {
        "open_time": 1672515780000,
        "close_time": 1672515839999,
        "open_price": 0.001,
        "high_price": 0.0025,
        "low_price": 0.0015,
        "close_price": 0.002,
        "volume": 1000.0,
        "quote_volume": 1.0,
        "trade_count": 100,
        "taker_buy_base_volume": 500.0,
        "taker_buy_quote_volume": 0.5,
        "symbol": "BNBBTC",
        "interval": "1m",
        "ingest_ts": INGEST,
    }
    assert parse_ws_message(_wrap("bnbbtc@kline_1m", DOC_WS_KLINE), INGEST) == (KLINE, expected)
    assert kline_from_ws(DOC_WS_KLINE, INGEST) == expected


# ---------------------------------------------------------------------------------------------
# Control messages


@pytest.mark.parametrize(
    "message",
    [
        {"result": None, "id": 1},
        {"result": ["btcusdt@aggTrade"], "id": 3},
        {"result": True, "id": 2},
        {"code": 0, "msg": "Unknown property", "id": 5},
        {"code": 2, "msg": "Invalid request: property name must be a string"},
    ],
)
def test_control_replies_are_not_records(message: dict[str, Any]) -> None:
    assert parse_ws_message(orjson.dumps(message), INGEST) == (CONTROL, message)


@pytest.mark.parametrize(
    "message",
    [
        {"e": "serverShutdown", "E": 1770123456789},
        {"stream": "btcusdt@trade", "data": {"e": "serverShutdown", "E": 1770123456789}},
        {"event": {"e": "serverShutdown", "E": 1770123456789}},
    ],
)
def test_server_shutdown_is_signalled(message: dict[str, Any]) -> None:
    assert parse_ws_message(orjson.dumps(message), INGEST) == (SERVER_SHUTDOWN, message)


# ---------------------------------------------------------------------------------------------
# Real captures


def _read_hftbacktest(name: str) -> list[tuple[int, bytes]]:
    with gzip.open(CAPTURES / name, "rb") as fh:
        return [(int(ns) // 1_000_000, raw) for ns, raw in (line.split(b" ", 1) for line in fh)]


@pytest.fixture(scope="module")
def btc_session() -> list[tuple[int, bytes]]:
    return _read_hftbacktest("btcusdt_20240808.gz") + _read_hftbacktest("btcusdt_20240809.gz")


def test_every_btcusdt_message_parses(btc_session: list[tuple[int, bytes]]) -> None:
    by_type: dict[str, list[dict[str, Any]]] = {TRADE: [], BBA: [], DEPTH_DELTA: []}
    snapshots = []
    for ingest_ts, raw in btc_session:
        if raw.startswith(b'{"lastUpdateId"'):
            # The README's one bare REST snapshot line; its symbol is the file's.
            snapshots.append(
                depth_snapshot_from_rest(orjson.loads(raw), "BTCUSDT", ingest_ts, ingest_ts)
            )
            continue
        data_type, record = parse_ws_message(raw, ingest_ts, frozenset({"BTCUSDT"}))
        assert record["ingest_ts"] == ingest_ts
        by_type[data_type].append(record)

    # Counts from the capture README.
    trades, diffs = by_type[TRADE], by_type[DEPTH_DELTA]
    assert (len(trades), len(diffs), len(by_type[BBA]), len(snapshots)) == (
        19_904,
        6_495,
        73_174,
        1,
    )
    ids = [t["trade_id"] for t in trades]
    assert ids == list(range(3_735_683_259, 3_735_703_162 + 1))
    assert all(b["first_update_id"] == a["final_update_id"] + 1 for a, b in pairwise(diffs))
    snapshot = snapshots[0]
    assert snapshot["last_update_id"] == 50_093_239_218
    assert (len(snapshot["bids"]), len(snapshot["asks"])) == (1000, 1000)
    assert snapshot["bids"][0] == ["61837.63000000", "3.78826000"]
    assert snapshot["asks"][-1] == ["62053.18000000", "0.00010000"]


def test_capture_spot_checks(btc_session: list[tuple[int, bytes]]) -> None:
    first_depth, second_depth, first_bba, first_trade = (raw for _, raw in btc_session[:4])
    assert parse_ws_message(first_trade, 1723161254087) == (
        TRADE,
        {
            "symbol": "BTCUSDT",
            "event_ts": 1723161255342,
            "ingest_ts": 1723161254087,
            "trade_id": 3735683259,
            "price": 61837.63,
            "qty": 0.02,
            "is_buyer_maker": True,
            "source": "sbe",
        },
    )
    assert parse_ws_message(first_bba, 1723161254087) == (
        BBA,
        {
            "symbol": "BTCUSDT",
            "event_ts": 1723161254087,
            "ingest_ts": 1723161254087,
            "bid_px": 61837.63,
            "bid_sz": 3.78826,
            "ask_px": 61837.64,
            "ask_sz": 1.54698,
            "source": "sbe",
            "update_id": 50093239212,
        },
    )
    assert parse_ws_message(second_depth, 1723161254036) == (
        DEPTH_DELTA,
        {
            "symbol": "BTCUSDT",
            "event_ts": 1723161255308,
            "ingest_ts": 1723161254036,
            "bids": [["55653.87000000", "0.00000000"]],
            "asks": [
                ["61838.04000000", "0.32332000"],
                ["61844.30000000", "0.40163000"],
                ["61862.50000000", "0.05019000"],
                ["61862.51000000", "0.00000000"],
            ],
            "source": "sbe",
            "first_update_id": 50093239203,
            "final_update_id": 50093239207,
        },
    )
    _, depth = parse_ws_message(first_depth, 0)
    assert (depth["first_update_id"], depth["final_update_id"]) == (50093239189, 50093239202)
    assert depth["bids"][0] == ["61737.63000000", "0.00000000"]
    last_trade = next(raw for _, raw in reversed(btc_session) if b"@trade" in raw[:40])
    _, trade = parse_ws_message(last_trade, 0)
    assert (trade["trade_id"], trade["event_ts"], trade["price"], trade["qty"]) == (
        3735703162,
        1723161905800,
        61602.02,
        0.00536,
    )
    assert trade["is_buyer_maker"] is False


def _read_cryptofeed() -> list[tuple[int, bytes]]:
    lines = (CAPTURES / "cryptofeed-2021" / "BINANCE.ws.1.0").read_bytes().splitlines()
    out = []
    for line in filter(None, lines[1:]):  # the first line is the connection URL
        ts, raw = line.split(b": ", 1)
        out.append((int(float(ts) * 1000), raw))
    return out


def test_every_cryptofeed_message_parses() -> None:
    symbols = frozenset({"NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"})
    results = [parse_ws_message(raw, ts, symbols) for ts, raw in _read_cryptofeed()]
    counts = Counter(data_type for data_type, _ in results)
    assert counts == {DEPTH_DELTA: 177, BBA: 84, AGG_TRADE: 2, KLINE: 2}
    agg = next(r for t, r in results if t == AGG_TRADE)
    assert agg == {
        "symbol": "NKNUSDT",
        "event_ts": 1633998523963,
        "ingest_ts": 1633998523957,
        "trade_id": 15683430,
        "price": 0.3528,
        "qty": 58.0,
        "is_buyer_maker": False,
        "source": "sbe",
        "first_trade_id": 19862790,
        "last_trade_id": 19862790,
    }
    kline = next(r for t, r in results if t == KLINE)
    assert kline == {
        "open_time": 1633998480000,
        "close_time": 1633998539999,
        "open_price": 0.3527,
        "high_price": 0.3528,
        "low_price": 0.3522,
        "close_price": 0.3528,
        "volume": 25877.0,
        "quote_volume": 9116.046,
        "trade_count": 30,
        "taker_buy_base_volume": 58.0,
        "taker_buy_quote_volume": 20.4624,
        "symbol": "NKNUSDT",
        "interval": "1m",
        "ingest_ts": 1633998523957,
    }


# ---------------------------------------------------------------------------------------------
# Malformed input


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is _DROP:
            del out[key]
        else:
            out[key] = value
    return out


_DROP = object()

MALFORMED_WS: list[tuple[str, bytes, str]] = [
    ("missing price", _wrap("bnbbtc@trade", _with(DOC_WS_TRADE, p=_DROP)), "'p'"),
    ("non-numeric price", _wrap("bnbbtc@trade", _with(DOC_WS_TRADE, p="abc")), "'p'"),
    ("NaN price", _wrap("bnbbtc@trade", _with(DOC_WS_TRADE, p="NaN")), "'p'"),
    ("inf price", _wrap("bnbbtc@trade", _with(DOC_WS_TRADE, p="inf")), "'p'"),
    ("zero price", _wrap("bnbbtc@trade", _with(DOC_WS_TRADE, p="0.000")), "'p'"),
    ("negative qty", _wrap("bnbbtc@trade", _with(DOC_WS_TRADE, q="-1")), "'q'"),
    ("number price", _wrap("bnbbtc@trade", _with(DOC_WS_TRADE, p=0.001)), "'p'"),
    ("bool trade id", _wrap("bnbbtc@trade", _with(DOC_WS_TRADE, t=True)), "'t'"),
    ("float trade id", _wrap("bnbbtc@trade", _with(DOC_WS_TRADE, t=12345.0)), "'t'"),
    ("string trade time", _wrap("bnbbtc@trade", _with(DOC_WS_TRADE, T="1672515782136")), "'T'"),
    ("string maker flag", _wrap("bnbbtc@trade", _with(DOC_WS_TRADE, m="true")), "'m'"),
    ("path in symbol", _wrap("bnbbtc@trade", _with(DOC_WS_TRADE, s="../X")), "'s'"),
    ("agg f > l", _wrap("x@aggTrade", _with(DOC_WS_AGG_TRADE, f=106)), "'f'"),
    ("bba zero bid size", _wrap("x@bookTicker", _with(DOC_WS_BOOK_TICKER, B="0")), "'B'"),
    ("bba missing ask", _wrap("x@bookTicker", _with(DOC_WS_BOOK_TICKER, a=_DROP)), "'a'"),
    ("depth U > u", _wrap("x@depth", _with(DOC_WS_DEPTH, U=161)), "'U'"),
    ("depth NaN size", _wrap("x@depth", _with(DOC_WS_DEPTH, b=[["0.0024", "nan"]])), "'b'"),
    ("depth zero price", _wrap("x@depth", _with(DOC_WS_DEPTH, a=[["0", "1"]])), "'a'"),
    ("depth 3-element level", _wrap("x@depth", _with(DOC_WS_DEPTH, a=[["1", "1", "1"]])), "'a'"),
    ("depth number size", _wrap("x@depth", _with(DOC_WS_DEPTH, a=[["1", 1]])), "'a'"),
    ("depth levels not a list", _wrap("x@depth", _with(DOC_WS_DEPTH, b={"1": "2"})), "'b'"),
    (
        "kline bad close",
        _wrap("x@kline_1m", _with(DOC_WS_KLINE, k={**DOC_WS_KLINE["k"], "c": "x"})),
        "'k.c'",
    ),  # fmt: skip
    ("kline k.s differs", _wrap("x@kline_1m", _with(DOC_WS_KLINE, s="ETHBTC")), "'k.s'"),
    ("kline k missing", _wrap("x@kline_1m", _with(DOC_WS_KLINE, k=_DROP)), "'k'"),
    ("unknown event", _wrap("x@ticker", {"e": "24hrTicker", "s": "BNBBTC"}), "'e'"),
    ("event not a string", orjson.dumps({"e": ["trade"], "s": "BNBBTC"}), "'e'"),
    ("data not an object", orjson.dumps({"stream": "x@trade", "data": [1, 2]}), "'data'"),
    ("no event, not a bookTicker", orjson.dumps({"lastUpdateId": 1, "bids": []}), "'e'"),
    ("truncated JSON", _wrap("bnbbtc@trade", DOC_WS_TRADE)[:-7], "JSON"),
    ("empty frame", b"", "JSON"),
    ("not JSON", b"ping", "JSON"),
    ("JSON array", b"[1,2,3]", "JSON object"),
    ("JSON string", b'"trade"', "JSON object"),
    ("not bytes or str", 42, "JSON"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(
    ("raw", "field"), [c[1:] for c in MALFORMED_WS], ids=[c[0] for c in MALFORMED_WS]
)
def test_malformed_ws_message(raw: bytes, field: str) -> None:
    with pytest.raises(MalformedPayload) as info:
        parse_ws_message(raw, INGEST)
    assert type(info.value) is MalformedPayload
    assert info.value.raw is raw  # the frame exactly as received, for the dead-letter
    assert field in info.value.reason


def test_wrong_symbol_is_malformed() -> None:
    raw = _wrap("bnbbtc@trade", DOC_WS_TRADE)
    with pytest.raises(MalformedPayload, match="unexpected symbol 'BNBBTC'") as info:
        parse_ws_message(raw, INGEST, frozenset({"BTCUSDT"}))
    assert info.value.raw is raw
    assert parse_ws_message(raw.decode(), INGEST, frozenset({"BNBBTC"}))[0] == TRADE


@pytest.mark.parametrize("symbol", ["BTC-USDT", "BTC_USDT", "BTC.USDT", "币安人生USDT"])
def test_every_symbol_the_settings_accept_is_streamable(symbol: str) -> None:
    from ingest_pipeline.symbols import check_symbol

    check_symbol(symbol)
    record = trade_from_ws(_with(DOC_WS_TRADE, s=symbol), INGEST)
    assert record["symbol"] == symbol


@pytest.mark.parametrize("symbol", ["", ".BTC", "BTC..USDT", "BTC/USDT", "../x", "BTC USDT"])
def test_payload_symbol_outside_the_alphabet_is_malformed(symbol: str) -> None:
    with pytest.raises(MalformedPayload, match="'s'"):
        trade_from_ws(_with(DOC_WS_TRADE, s=symbol), INGEST)


def test_wrong_event_type_in_direct_call() -> None:
    with pytest.raises(MalformedPayload, match="'e'") as info:
        trade_from_ws(DOC_WS_AGG_TRADE, INGEST)
    assert info.value.raw is DOC_WS_AGG_TRADE


def test_reason_quotes_bad_value() -> None:
    with pytest.raises(MalformedPayload) as info:
        agg_trade_from_rest(_with(DOC_AGG_TRADE_REST, p="1,5"), "BNBBTC", INGEST)
    assert info.value.reason == "aggTrade: field 'p': expected a decimal string, got '1,5'"


@pytest.mark.parametrize(
    ("fn", "raw", "field"),
    [
        (agg_trade_from_rest, _with(DOC_AGG_TRADE_REST, a=_DROP), "'a'"),
        (agg_trade_from_rest, _with(DOC_AGG_TRADE_REST, m=1), "'m'"),
        (agg_trade_from_rest, _with(DOC_AGG_TRADE_REST, l=27780), "'l'"),
        (agg_trade_from_rest, ["not", "a", "dict"], "JSON object"),
        (trade_from_rest, _with(DOC_HISTORICAL_TRADE, id=False), "'id'"),
        (trade_from_rest, _with(DOC_HISTORICAL_TRADE, qty="Infinity"), "'qty'"),
        (trade_from_rest, None, "JSON object"),
    ],
)
def test_malformed_rest_trades(fn: Any, raw: Any, field: str) -> None:
    with pytest.raises(MalformedPayload) as info:
        fn(raw, "BNBBTC", INGEST)
    assert info.value.raw is raw
    assert field in info.value.reason


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (DOC_KLINE_REST[:6], "6 (close time)"),
        (DOC_KLINE_REST[:1] + ["x"] + DOC_KLINE_REST[2:], "1 (open)"),
        (DOC_KLINE_REST[:8] + [308.0] + DOC_KLINE_REST[9:], "8 (number of trades)"),
        (DOC_KLINE_REST[:5] + ["-1"] + DOC_KLINE_REST[6:], "5 (volume)"),
        ([1499644800000, *DOC_KLINE_REST[1:]], "open time > close time"),
        ({"0": 1}, "JSON array"),
    ],
)
def test_malformed_rest_kline(raw: Any, field: str) -> None:
    with pytest.raises(MalformedPayload) as info:
        kline_from_rest(raw, "BNBBTC", "1m", INGEST)
    assert info.value.raw is raw
    assert field in info.value.reason


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (_with(DOC_DEPTH, lastUpdateId="1027024"), "'lastUpdateId'"),
        (_with(DOC_DEPTH, bids=[["4.0", "0.00000000"]]), "level 0 size"),  # snapshot sizes > 0
        (_with(DOC_DEPTH, asks=[["4.0", "1"], ["x", "1"]]), "level 1 price"),
        (_with(DOC_DEPTH, asks=_DROP), "'asks'"),
        ({"code": -1121, "msg": "Invalid symbol."}, "'lastUpdateId'"),
    ],
)
def test_malformed_depth_snapshot(raw: Any, field: str) -> None:
    with pytest.raises(MalformedPayload) as info:
        depth_snapshot_from_rest(raw, "BNBBTC", 1, INGEST)
    assert info.value.raw is raw
    assert field in info.value.reason


def test_depth_delta_allows_zero_sizes_and_empty_sides() -> None:
    data = _with(DOC_WS_DEPTH, b=[["0.0024", "0.00000000"]], a=[])
    record = depth_delta_from_ws(data, INGEST)
    assert (record["bids"], record["asks"]) == ([["0.0024", "0.00000000"]], [])


# ---------------------------------------------------------------------------------------------
# Pages


def test_normalize_page_keeps_good_and_rejects_bad() -> None:
    bad_price = _with(DOC_AGG_TRADE_REST, a=26130, p="NaN")
    good2 = _with(DOC_AGG_TRADE_REST, a=26131)
    records, rejected = normalize_page(
        agg_trade_from_rest,
        [DOC_AGG_TRADE_REST, bad_price, 7, good2],
        symbol="BNBBTC",
        ingest_ts=INGEST,
    )
    assert [r["trade_id"] for r in records] == [26129, 26131]
    assert [r.raw for r in rejected] == [bad_price, 7]
    assert all(isinstance(r, Rejected) for r in rejected)
    assert "'p'" in rejected[0].reason and "JSON object" in rejected[1].reason


def test_normalize_page_klines_and_empty_page() -> None:
    records, rejected = normalize_page(
        kline_from_rest, [DOC_KLINE_REST], symbol="BNBBTC", interval="1m", ingest_ts=INGEST
    )
    assert len(records) == 1 and rejected == []
    assert normalize_page(trade_from_rest, [], symbol="BNBBTC", ingest_ts=INGEST) == ([], [])


def test_normalize_page_rejects_a_non_array_page() -> None:
    body = {"code": -1121, "msg": "Invalid symbol."}
    with pytest.raises(MalformedPayload, match="page") as info:
        normalize_page(agg_trade_from_rest, body, symbol="X", ingest_ts=INGEST)  # type: ignore[arg-type]
    assert info.value.raw is body


# ---------------------------------------------------------------------------------------------
# Property: random damage to real payloads gives a valid record or MalformedPayload, nothing else


def _one_capture_message_per_stream() -> list[bytes]:
    seen: dict[bytes, bytes] = {}
    with gzip.open(CAPTURES / "btcusdt_20240808.gz", "rb") as fh:
        for _, raw in (line.split(b" ", 1) for line in fh):
            seen.setdefault(raw.split(b'"', 5)[3], raw.rstrip())
            if len(seen) == 4:  # trade, bookTicker, depth and the bare snapshot
                break
    for _, raw in _read_cryptofeed():
        seen.setdefault(raw.split(b'"', 5)[3], raw)
    return list(seen.values())


_SEED_MESSAGES = _one_capture_message_per_stream() + [
    _wrap("btcusdt@trade", DOC_WS_TRADE),
    _wrap("bnbbtc@aggTrade", DOC_WS_AGG_TRADE),
    _wrap("bnbusdt@bookTicker", DOC_WS_BOOK_TICKER),
    orjson.dumps(DOC_WS_BOOK_TICKER),
    _wrap("bnbbtc@depth", DOC_WS_DEPTH),
    _wrap("bnbbtc@kline_1m", DOC_WS_KLINE),
]
_REST_SEEDS: list[tuple[Any, Any, tuple[Any, ...]]] = [
    (agg_trade_from_rest, DOC_AGG_TRADE_REST, ("BNBBTC", INGEST)),
    (trade_from_rest, DOC_HISTORICAL_TRADE, ("BNBBTC", INGEST)),
    (kline_from_rest, DOC_KLINE_REST, ("BNBBTC", "1m", INGEST)),
    (depth_snapshot_from_rest, DOC_DEPTH, ("BNBBTC", 1, INGEST)),
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["0", "-0", "1e400", "NaN", "inf", "0.001", " 1", "1_0", "١"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def damaged(draw: st.DrawFn, seed: Any) -> Any:
    """``seed`` with one value dropped or replaced by random JSON somewhere in its tree."""
    doc = copy.deepcopy(seed)
    path = draw(st.sampled_from(_paths(doc)))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return doc


def _assert_valid(record: dict[str, Any]) -> None:
    for key, value in record.items():
        if key in ("bids", "asks"):
            for price, size in value:
                assert type(price) is str and float(price) > 0
                assert type(size) is str and 0 <= float(size) < math.inf
        elif isinstance(value, float):
            assert math.isfinite(value) and value >= 0, key
        elif key in ("symbol", "source", "interval"):
            assert type(value) is str and value
        elif key == "is_buyer_maker":
            assert type(value) is bool
        else:
            assert type(value) is int and value >= 0, key


def _check_ws(raw: bytes | str) -> None:
    try:
        data_type, record = parse_ws_message(raw, INGEST)
    except MalformedPayload as exc:
        assert type(exc) is MalformedPayload and exc.raw is raw and exc.reason
        return
    if data_type not in (CONTROL, SERVER_SHUTDOWN):
        _assert_valid(record)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_ws_messages_never_raise_anything_else(data: st.DataObject) -> None:
    seed = orjson.loads(data.draw(st.sampled_from(_SEED_MESSAGES)))
    _check_ws(orjson.dumps(data.draw(damaged(seed))))


@settings(max_examples=300, deadline=None)
@given(
    seed=st.sampled_from(_SEED_MESSAGES), cut=st.integers(min_value=0), flip=st.binary(max_size=2)
)
def test_truncated_or_garbled_bytes_never_raise_anything_else(
    seed: bytes, cut: int, flip: bytes
) -> None:
    cut %= len(seed) + 1
    _check_ws(seed[:cut])
    _check_ws(seed[:cut] + flip + seed[cut + len(flip) :])


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_damaged_rest_items_never_raise_anything_else(data: st.DataObject) -> None:
    fn, seed, args = data.draw(st.sampled_from(_REST_SEEDS))
    raw = data.draw(damaged(seed) | json_values)
    try:
        record = fn(raw, *args)
    except MalformedPayload as exc:
        assert type(exc) is MalformedPayload and exc.raw is raw and exc.reason
        return
    _assert_valid(record)
