"""Binance WebSocket messages -> records: the payload normalizers (the ``data`` object of a
combined-stream message) and ``parse_ws_message``, which routes one text frame to them. Pure: no
I/O; the rules are ``normalize/__init__.py``'s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import orjson

from ingest_pipeline.binance.normalize.checks import (
    AGG_TRADE_FIELDS,
    FIRST_LAST,
    INF,
    Relations,
    Spec,
    diagnose,
    fail,
    fields,
    is_symbol,
    kline_values,
    levels_ok,
    short,
    want_bool,
    want_diff,
    want_event,
    want_int,
    want_non_negative,
    want_positive,
    want_symbol,
    want_text,
)
from ingest_pipeline.records import (
    BBA,
    DEPTH_DELTA,
    SOURCE_WS,
    TRADE,
    BestBidAsk,
    DepthDelta,
    Kline,
    MalformedPayload,
    MarketTrade,
    Record,
)

# Data types returned by parse_ws_message besides records.TRADE, records.BBA, records.DEPTH_DELTA.
AGG_TRADE = "agg_trade"
KLINE = "kline"
# Not records: parse_ws_message returns (CONTROL, message) for replies to SUBSCRIBE & co. and
# error replies, and (SERVER_SHUTDOWN, event) when Binance announces a disconnect (reconnect now).
CONTROL = "control"
SERVER_SHUTDOWN = "server_shutdown"


_TRADE_WS = fields(
    ("e", want_event("trade")), ("s", want_symbol), ("t", want_int), ("p", want_positive),
    ("q", want_positive), ("T", want_int), ("m", want_bool),
)  # fmt: skip


def trade_from_ws(data: dict[str, Any], ingest_ts: int) -> MarketTrade:
    """``<symbol>@trade`` payload -> MarketTrade; ``event_ts`` is the trade time ``T``, not E."""
    try:
        sym = data["s"]
        tid = data["t"]
        p = data["p"]
        q = data["q"]
        ts = data["T"]
        m = data["m"]
        price = float(p)
        qty = float(q)
        ok = (
            data["e"] == "trade" and is_symbol(sym)
            and type(tid) is int and tid >= 0 and type(ts) is int and ts >= 0
            and type(p) is str and 0.0 < price < INF and type(q) is str and 0.0 < qty < INF
            and type(m) is bool
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        raise fail("trade", data, _TRADE_WS)
    return {
        "symbol": sym,
        "event_ts": ts,
        "ingest_ts": ingest_ts,
        "trade_id": tid,
        "price": price,
        "qty": qty,
        "is_buyer_maker": m,
        "source": SOURCE_WS,
    }


_AGG_TRADE_WS = (
    ("e", "'e'", want_event("aggTrade")),
    ("s", "'s'", want_symbol),
    *AGG_TRADE_FIELDS,
)


def agg_trade_from_ws(data: dict[str, Any], ingest_ts: int) -> MarketTrade:
    """``<symbol>@aggTrade`` payload -> MarketTrade with first/last trade ids; ``event_ts = T``."""
    try:
        sym = data["s"]
        a = data["a"]
        p = data["p"]
        q = data["q"]
        f = data["f"]
        last = data["l"]
        ts = data["T"]
        m = data["m"]
        price = float(p)
        qty = float(q)
        ok = (
            data["e"] == "aggTrade" and is_symbol(sym)
            and type(a) is int and a >= 0 and type(ts) is int and ts >= 0
            and type(f) is int and type(last) is int and 0 <= f <= last
            and type(p) is str and 0.0 < price < INF and type(q) is str and 0.0 < qty < INF
            and type(m) is bool
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        raise fail("aggTrade", data, _AGG_TRADE_WS, FIRST_LAST)
    return {
        "symbol": sym,
        "event_ts": ts,
        "ingest_ts": ingest_ts,
        "trade_id": a,
        "price": price,
        "qty": qty,
        "is_buyer_maker": m,
        "source": SOURCE_WS,
        "first_trade_id": f,
        "last_trade_id": last,
    }


_BBA_WS = fields(
    ("u", want_int), ("s", want_symbol), ("b", want_positive), ("B", want_positive),
    ("a", want_positive), ("A", want_positive),
)  # fmt: skip


def bba_from_ws(data: dict[str, Any], ingest_ts: int) -> BestBidAsk:
    """``<symbol>@bookTicker`` payload -> BestBidAsk.

    Spot bookTicker carries no exchange time, so ``event_ts`` is the receive time ``ingest_ts``.
    All four numbers must be > 0: a side without a level is not a best bid/ask.
    """
    try:
        u = data["u"]
        sym = data["s"]
        b = data["b"]
        bq = data["B"]
        a = data["a"]
        aq = data["A"]
        bid_px = float(b)
        bid_sz = float(bq)
        ask_px = float(a)
        ask_sz = float(aq)
        ok = (
            type(u) is int and u >= 0 and is_symbol(sym)
            and type(b) is str and type(bq) is str and type(a) is str and type(aq) is str
            and 0.0 < bid_px < INF and 0.0 < bid_sz < INF
            and 0.0 < ask_px < INF and 0.0 < ask_sz < INF
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        raise fail("bookTicker", data, _BBA_WS)
    return {
        "symbol": sym,
        "event_ts": ingest_ts,
        "ingest_ts": ingest_ts,
        "bid_px": bid_px,
        "bid_sz": bid_sz,
        "ask_px": ask_px,
        "ask_sz": ask_sz,
        "source": SOURCE_WS,
        "update_id": u,
    }


_DEPTH_WS = fields(
    ("e", want_event("depthUpdate")), ("E", want_int), ("s", want_symbol), ("U", want_int),
    ("u", want_int), ("b", want_diff), ("a", want_diff),
)  # fmt: skip
_FIRST_FINAL = (("first update id 'U' > final update id 'u'", lambda d: d["U"] <= d["u"]),)


def depth_delta_from_ws(data: dict[str, Any], ingest_ts: int) -> DepthDelta:
    """``<symbol>@depth[@100ms]`` payload -> DepthDelta; sizes "0" (level removals) are allowed."""
    try:
        ts = data["E"]
        sym = data["s"]
        first = data["U"]
        final = data["u"]
        bids = data["b"]
        asks = data["a"]
        ok = (
            data["e"] == "depthUpdate" and type(ts) is int and ts >= 0
            and is_symbol(sym)
            and type(first) is int and type(final) is int and 0 <= first <= final
            and levels_ok(bids, True) and levels_ok(asks, True)
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        raise fail("depthUpdate", data, _DEPTH_WS, _FIRST_FINAL)
    return {
        "symbol": sym,
        "event_ts": ts,
        "ingest_ts": ingest_ts,
        "bids": bids,
        "asks": asks,
        "source": SOURCE_WS,
        "first_update_id": first,
        "final_update_id": final,
    }


_KLINE_WS = fields(
    ("e", want_event("kline")),
    ("s", want_symbol),
    ("k", lambda v: None if type(v) is dict else "expected an object"),
)
_KLINE_WS_K: Spec = tuple(
    (key, f"'k.{key}'", check)
    for key, check in (
        ("t", want_int), ("T", want_int), ("s", want_symbol), ("i", want_text),
        ("o", want_positive), ("c", want_positive), ("h", want_positive), ("l", want_positive),
        ("v", want_non_negative), ("n", want_int), ("q", want_non_negative),
        ("V", want_non_negative), ("Q", want_non_negative),
    )
)  # fmt: skip
_KLINE_WS_RELATIONS: Relations = (
    ("'k.s' differs from 's'", lambda d: d["k"]["s"] == d["s"]),
    ("open time 'k.t' > close time 'k.T'", lambda d: d["k"]["t"] <= d["k"]["T"]),
)


def kline_from_ws(data: dict[str, Any], ingest_ts: int) -> Kline:
    """``<symbol>@kline_<interval>`` payload -> Kline (the ``k`` object, closed or not)."""
    try:
        sym = data["s"]
        k = data["k"]
        open_time = k["t"]
        close_time = k["T"]
        interval = k["i"]
        n = k["n"]
        values = kline_values(k["o"], k["h"], k["l"], k["c"], k["v"], k["q"], k["V"], k["Q"])
        ok = (
            data["e"] == "kline" and is_symbol(sym)
            and k["s"] == sym and type(interval) is str and interval != ""
            and type(open_time) is int and type(close_time) is int and 0 <= open_time <= close_time
            and type(n) is int and n >= 0
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        reason = diagnose(data, _KLINE_WS)
        if reason is None:
            reason = diagnose(data["k"], _KLINE_WS_K)
        if reason is None:
            reason = next(
                (msg for msg, holds in _KLINE_WS_RELATIONS if not holds(data)), "invalid payload"
            )
        raise MalformedPayload(f"kline: {reason}", data)
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
        "symbol": sym,
        "interval": interval,
        "ingest_ts": ingest_ts,
    }


# --------------------------------------------------------------------------------------------
# Dispatcher

_BY_EVENT: dict[str, tuple[str, Callable[[dict[str, Any], int], Any]]] = {
    "trade": (TRADE, trade_from_ws),
    "depthUpdate": (DEPTH_DELTA, depth_delta_from_ws),
    "aggTrade": (AGG_TRADE, agg_trade_from_ws),
    "kline": (KLINE, kline_from_ws),
}
_BBA_KEYS = frozenset("usbBaA")
_SHUTDOWN = "serverShutdown"


def _is_shutdown(msg: dict[str, Any]) -> bool:
    # Streams send {"e": "serverShutdown", "E": ...} (bare or in "data", caught by the caller);
    # the WebSocket API wraps the same event in "event". Accept that form too.
    inner = msg.get("event")
    return type(inner) is dict and inner.get("e") == _SHUTDOWN


def _is_control(msg: dict[str, Any]) -> bool:
    # Replies to SUBSCRIBE/LIST_SUBSCRIPTIONS/...: {"result": ..., "id": ...}; errors:
    # {"code": ..., "msg": ..., "id"?: ...} or {"error": {...}, "id": ...}.
    return (
        "data" not in msg
        and "e" not in msg
        and ("result" in msg or "error" in msg or ("code" in msg and "msg" in msg))
    )


def parse_ws_message(
    raw: bytes | str, ingest_ts: int, symbols: frozenset[str] | None = None
) -> tuple[str, Record]:
    """One WebSocket text frame -> ``(data_type, record)``.

    Accepts the combined-stream wrapper ``{"stream", "data"}`` and bare single-stream payloads.
    ``data_type`` is ``TRADE``, ``BBA``, ``DEPTH_DELTA``, ``AGG_TRADE`` or ``KLINE``. Two results
    are not records and must not be stored: ``(CONTROL, message)`` for subscription/property
    replies and error replies, ``(SERVER_SHUTDOWN, message)`` when Binance announces it will drop
    the connection (reconnect at once). Anything else that is not a valid record, including a
    symbol outside ``symbols`` when given, raises MalformedPayload with ``raw`` as received.
    """
    try:
        msg = orjson.loads(raw)
    except (ValueError, TypeError) as exc:
        raise MalformedPayload(f"invalid JSON: {exc}", raw) from None
    if type(msg) is not dict:
        raise MalformedPayload(f"expected a JSON object, got {type(msg).__name__}", raw)
    data = msg.get("data")
    stream = None
    if data is None:
        data = msg
    else:
        stream = msg.get("stream")
        if type(data) is not dict:
            raise MalformedPayload(f"field 'data': expected an object, got {short(data)}", raw)
    event = data.get("e")
    try:
        if event is None:
            if (type(stream) is str and stream.endswith("@bookTicker")) or data.keys() >= _BBA_KEYS:
                # A TypedDict is a plain dict at runtime, which mypy does not let pass as one.
                data_type, record = BBA, cast(Record, bba_from_ws(data, ingest_ts))
            elif _is_control(msg):
                return CONTROL, msg
            elif _is_shutdown(msg):
                return SERVER_SHUTDOWN, msg
            else:
                raise MalformedPayload(
                    "unrecognized message: no event type 'e' and not a bookTicker", raw
                )
        else:
            route = _BY_EVENT.get(event) if type(event) is str else None
            if route is None:
                if event == _SHUTDOWN:
                    return SERVER_SHUTDOWN, msg
                raise MalformedPayload(f"field 'e': unknown event type {short(event)}", raw)
            data_type, normalize = route
            record = normalize(data, ingest_ts)
    except MalformedPayload as exc:
        raise MalformedPayload(exc.reason, raw) from None
    if symbols is not None and record["symbol"] not in symbols:
        raise MalformedPayload(f"field 's': unexpected symbol {record['symbol']!r}", raw)
    return data_type, record
