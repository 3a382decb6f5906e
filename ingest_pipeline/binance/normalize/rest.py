"""Binance REST items -> records: one item of ``/api/v3/aggTrades``, ``/historicalTrades``
(``/trades``), ``/klines``, a ``/depth`` snapshot, and ``normalize_page`` over a whole page. Pure:
no I/O; the rules are ``normalize/__init__.py``'s."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ingest_pipeline.binance.normalize.checks import (
    AGG_TRADE_FIELDS,
    FIRST_LAST,
    INF,
    Spec,
    fail,
    fields,
    kline_values,
    levels_ok,
    short,
    want_book,
    want_bool,
    want_int,
    want_non_negative,
    want_positive,
)
from ingest_pipeline.records import (
    SOURCE_REST,
    DepthSnapshot,
    Kline,
    MalformedPayload,
    MarketTrade,
    Record,
)


class Rejected(NamedTuple):
    """An item of a REST page that could not become a record (dead-letter material)."""

    reason: str
    raw: Any


def agg_trade_from_rest(raw: dict[str, Any], symbol: str, ingest_ts: int) -> MarketTrade:
    """One ``GET /api/v3/aggTrades`` item -> MarketTrade (source "rest")."""
    try:
        a = raw["a"]
        p = raw["p"]
        q = raw["q"]
        f = raw["f"]
        last = raw["l"]
        ts = raw["T"]
        m = raw["m"]
        price = float(p)
        qty = float(q)
        ok = (
            type(a) is int and a >= 0 and type(ts) is int and ts >= 0
            and type(f) is int and type(last) is int and 0 <= f <= last
            and type(p) is str and 0.0 < price < INF and type(q) is str and 0.0 < qty < INF
            and type(m) is bool
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        raise fail("aggTrade", raw, AGG_TRADE_FIELDS, FIRST_LAST)
    return {
        "symbol": symbol,
        "event_ts": ts,
        "ingest_ts": ingest_ts,
        "trade_id": a,
        "price": price,
        "qty": qty,
        "is_buyer_maker": m,
        "source": SOURCE_REST,
        "first_trade_id": f,
        "last_trade_id": last,
    }


_TRADE_REST = fields(
    ("id", want_int), ("price", want_positive), ("qty", want_positive), ("time", want_int),
    ("isBuyerMaker", want_bool),
)  # fmt: skip


def trade_from_rest(raw: dict[str, Any], symbol: str, ingest_ts: int) -> MarketTrade:
    """One ``GET /api/v3/historicalTrades`` (or ``/trades``) item -> MarketTrade (source "rest")."""
    try:
        tid = raw["id"]
        p = raw["price"]
        q = raw["qty"]
        ts = raw["time"]
        m = raw["isBuyerMaker"]
        price = float(p)
        qty = float(q)
        ok = (
            type(tid) is int and tid >= 0 and type(ts) is int and ts >= 0
            and type(p) is str and 0.0 < price < INF and type(q) is str and 0.0 < qty < INF
            and type(m) is bool
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        raise fail("trade", raw, _TRADE_REST)
    return {
        "symbol": symbol,
        "event_ts": ts,
        "ingest_ts": ingest_ts,
        "trade_id": tid,
        "price": price,
        "qty": qty,
        "is_buyer_maker": m,
        "source": SOURCE_REST,
    }


_KLINE_REST: Spec = (
    (0, "0 (open time)", want_int),
    (1, "1 (open)", want_positive),
    (2, "2 (high)", want_positive),
    (3, "3 (low)", want_positive),
    (4, "4 (close)", want_positive),
    (5, "5 (volume)", want_non_negative),
    (6, "6 (close time)", want_int),
    (7, "7 (quote volume)", want_non_negative),
    (8, "8 (number of trades)", want_int),
    (9, "9 (taker buy base volume)", want_non_negative),
    (10, "10 (taker buy quote volume)", want_non_negative),
    (11, "11 (ignore)", lambda v: None),
)
_KLINE_REST_TIMES = (("open time > close time", lambda k: k[0] <= k[6]),)


def kline_from_rest(raw: list[Any], symbol: str, interval: str, ingest_ts: int) -> Kline:
    """One ``GET /api/v3/klines`` 12-element array -> Kline."""
    try:
        open_time = raw[0]
        close_time = raw[6]
        n = raw[8]
        if type(raw) is not list or len(raw) < 12:
            raise ValueError
        values = kline_values(raw[1], raw[2], raw[3], raw[4], raw[5], raw[7], raw[9], raw[10])
        ok = (
            type(open_time) is int and type(close_time) is int
            and 0 <= open_time <= close_time and type(n) is int and n >= 0
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        raise fail("kline", raw, _KLINE_REST, _KLINE_REST_TIMES, container=list)
    o, h, lo, c, v, qv, tb, tq = values
    return {
        "open_time": open_time,
        "close_time": close_time,
        "open_price": o,
        "high_price": h,
        "low_price": lo,
        "close_price": c,
        "volume": v,
        "quote_volume": qv,
        "trade_count": n,
        "taker_buy_base_volume": tb,
        "taker_buy_quote_volume": tq,
        "symbol": symbol,
        "interval": interval,
        "ingest_ts": ingest_ts,
    }


_SNAPSHOT = fields(("lastUpdateId", want_int), ("bids", want_book), ("asks", want_book))


def depth_snapshot_from_rest(
    raw: dict[str, Any], symbol: str, timestamp: int, ingest_ts: int
) -> DepthSnapshot:
    """``GET /api/v3/depth`` response -> DepthSnapshot; ``timestamp`` is the server time of it.

    Checks shape and numbers only (every size > 0); level ordering is a data-quality check.
    """
    try:
        last_id = raw["lastUpdateId"]
        bids = raw["bids"]
        asks = raw["asks"]
        ok = (
            type(last_id) is int
            and last_id >= 0
            and levels_ok(bids, False)
            and levels_ok(asks, False)
        )
    except Exception:
        ok = False
    if not ok:
        raise fail("depth snapshot", raw, _SNAPSHOT)
    return {
        "symbol": symbol,
        "timestamp": timestamp,
        "ingest_ts": ingest_ts,
        "last_update_id": last_id,
        "bids": bids,
        "asks": asks,
        "source": SOURCE_REST,
    }


def normalize_page(
    fn: Callable[..., Mapping[str, Any]], items: list[Any], **kwargs: Any
) -> tuple[list[Record], list[Rejected]]:
    """Apply a REST normalizer to every item of a page: ``(records, rejected)``, nothing dropped.

    ``kwargs`` are the normalizer's other arguments (``symbol=``, ``interval=``, ``ingest_ts=``).
    A page that is not a JSON array at all (e.g. a ``{"code", "msg"}`` error body) raises
    MalformedPayload: it has no items to reject one by one.
    """
    if type(items) is not list:
        raise MalformedPayload(
            f"page: expected a JSON array, got {type(items).__name__}: {short(items)}", items
        )
    # The normalizers return their TypedDicts: plain dicts, i.e. Records, at run time.
    records: list[Any] = []
    rejected: list[Rejected] = []
    append = records.append
    for item in items:
        try:
            append(fn(item, **kwargs))
        except MalformedPayload as exc:
            rejected.append(Rejected(exc.reason, item))
    return records, rejected
