"""Binance spot payloads -> records (SPEC §1, §2). Pure functions: no I/O, no logging.

Every function either returns a record or raises ``MalformedPayload`` whose ``reason`` names the
offending field and whose ``raw`` is the payload as received; no other exception escapes.

Validation rules, the same everywhere:

- ids and timestamps are JSON integers >= 0 (``true``/``false``, floats and strings are refused);
- prices and sizes are JSON strings that ``float`` parses to a finite number; prices and trade
  quantities must be > 0, volumes and depth-diff sizes >= 0 (a diff size "0" removes a level),
  snapshot and bookTicker sizes > 0;
- ``bids``/``asks`` are kept exactly as sent (lists of ``[price, size]`` strings) after the same
  checks. Formats ``float`` accepts but Binance never sends (``"1e5"``, ``" 1"``, ``"1_0"``) are
  not refused: a strict character check costs ~75 ns a string, ~2 us on a typical depth diff;
- a payload symbol is a non-empty string of letters and digits (Unicode letters allowed) and
  Binance's documented ``-``, ``_``, ``.`` after its first character (``symbols.py`` admits the same
  alphabet), never ``..``: it can never smuggle ``/`` or ``..`` into an S3 key.

Speed: each normalizer reads the fields and checks them in one expression on the fast path; only
when that fails does ``_diagnose`` walk a field spec to find which field is wrong. A failure costs
microseconds more, a good message nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from ingest_pipeline.records import (
    BBA,
    DEPTH_DELTA,
    SOURCE_REST,
    SOURCE_WS,
    TRADE,
    BestBidAsk,
    DepthDelta,
    DepthSnapshot,
    Kline,
    MalformedPayload,
    MarketTrade,
    Record,
)

__all__ = [
    "AGG_TRADE",
    "BBA",
    "CONTROL",
    "DEPTH_DELTA",
    "KLINE",
    "SERVER_SHUTDOWN",
    "TRADE",
    "Rejected",
    "agg_trade_from_rest",
    "agg_trade_from_ws",
    "bba_from_ws",
    "depth_delta_from_ws",
    "depth_snapshot_from_rest",
    "kline_from_rest",
    "kline_from_ws",
    "normalize_page",
    "parse_ws_message",
    "trade_from_rest",
    "trade_from_ws",
]

# Data types returned by parse_ws_message besides records.TRADE, records.BBA, records.DEPTH_DELTA.
AGG_TRADE = "agg_trade"
KLINE = "kline"
# Not records: parse_ws_message returns (CONTROL, message) for replies to SUBSCRIBE & co. and
# error replies, and (SERVER_SHUTDOWN, event) when Binance announces a disconnect (reconnect now).
CONTROL = "control"
SERVER_SHUTDOWN = "server_shutdown"

_INF = float("inf")


class Rejected(NamedTuple):
    """An item of a REST page that could not become a record (dead-letter material)."""

    reason: str
    raw: Any


# --------------------------------------------------------------------------------------------
# Slow path: find and describe the first bad field. Only runs once the fast path has failed.

Check = Callable[[Any], "str | None"]
Spec = tuple[tuple[Any, str, Check], ...]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _want_int(v: Any) -> str | None:
    if type(v) is not int:
        return "expected an integer"
    return "expected an integer >= 0" if v < 0 else None


def _number(v: Any) -> float | None:
    if type(v) is not str:
        return None
    try:
        return float(v)
    except ValueError:
        return None


def _want_positive(v: Any) -> str | None:
    x = _number(v)
    if x is None:
        return "expected a decimal string"
    return None if 0.0 < x < _INF else "expected a finite decimal > 0"


def _want_non_negative(v: Any) -> str | None:
    x = _number(v)
    if x is None:
        return "expected a decimal string"
    return None if 0.0 <= x < _INF else "expected a finite decimal >= 0"


def _want_bool(v: Any) -> str | None:
    return None if type(v) is bool else "expected true or false"


_SYMBOL_SIGNS = str.maketrans("", "", "-_.")


def _is_symbol(v: Any) -> bool:
    # isalnum() decides every listed symbol today; the slow branch admits the rest of Binance's
    # documented alphabet ``^[A-Z0-9-_.]{1,20}$``.
    return type(v) is str and (
        v.isalnum() or (v[:1].isalnum() and ".." not in v and v.translate(_SYMBOL_SIGNS).isalnum())
    )


def _want_symbol(v: Any) -> str | None:
    return None if _is_symbol(v) else "expected a symbol (letters, digits, '-', '_', '.')"


def _want_text(v: Any) -> str | None:
    return None if type(v) is str and v else "expected a non-empty string"


def _want_levels(size_check: Check) -> Check:
    def check(levels: Any) -> str | None:
        if type(levels) is not list:
            return "expected an array of [price, size]"
        for i, level in enumerate(levels):
            if type(level) is not list or len(level) != 2:
                return f"level {i}: expected [price, size], got {_short(level)}"
            problem = _want_positive(level[0])
            if problem is not None:
                return f"level {i} price: {problem}, got {_short(level[0])}"
            problem = size_check(level[1])
            if problem is not None:
                return f"level {i} size: {problem}, got {_short(level[1])}"
        return None

    return check


_want_book = _want_levels(_want_positive)
_want_diff = _want_levels(_want_non_negative)


def _want_event(name: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v == name else f"expected event type {name!r}"

    return check


def _diagnose(obj: Any, spec: Spec, container: type = dict) -> str | None:
    if type(obj) is not container:
        kind = "object" if container is dict else "array"
        return f"expected a JSON {kind}, got {type(obj).__name__}: {_short(obj)}"
    for key, label, check in spec:
        try:
            value = obj[key]
        except (KeyError, IndexError):
            return f"missing field {label}"
        problem = check(value)
        if problem is not None:
            # Problems about a level already quote the value; others get it appended.
            suffix = "" if problem.startswith("level ") else f", got {_short(value)}"
            return f"field {label}: {problem}{suffix}"
    return None


def _fields(*items: tuple[str, Check]) -> Spec:
    return tuple((key, repr(key), check) for key, check in items)


def _fail(
    what: str,
    raw: Any,
    spec: Spec,
    relations: tuple[tuple[str, Callable[[Any], bool]], ...] = (),
    container: type = dict,
) -> MalformedPayload:
    reason = _diagnose(raw, spec, container)
    if reason is None:
        reason = next((msg for msg, holds in relations if not holds(raw)), "invalid payload")
    return MalformedPayload(f"{what}: {reason}", raw)


# --------------------------------------------------------------------------------------------
# REST

_AGG_TRADE_REST = _fields(
    ("a", _want_int), ("p", _want_positive), ("q", _want_positive), ("f", _want_int),
    ("l", _want_int), ("T", _want_int), ("m", _want_bool),
)  # fmt: skip
_FIRST_LAST = (("first trade id 'f' > last trade id 'l'", lambda d: d["f"] <= d["l"]),)


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
            and type(p) is str and 0.0 < price < _INF and type(q) is str and 0.0 < qty < _INF
            and type(m) is bool
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        raise _fail("aggTrade", raw, _AGG_TRADE_REST, _FIRST_LAST)
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


_TRADE_REST = _fields(
    ("id", _want_int), ("price", _want_positive), ("qty", _want_positive), ("time", _want_int),
    ("isBuyerMaker", _want_bool),
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
            and type(p) is str and 0.0 < price < _INF and type(q) is str and 0.0 < qty < _INF
            and type(m) is bool
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        raise _fail("trade", raw, _TRADE_REST)
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
    (0, "0 (open time)", _want_int),
    (1, "1 (open)", _want_positive),
    (2, "2 (high)", _want_positive),
    (3, "3 (low)", _want_positive),
    (4, "4 (close)", _want_positive),
    (5, "5 (volume)", _want_non_negative),
    (6, "6 (close time)", _want_int),
    (7, "7 (quote volume)", _want_non_negative),
    (8, "8 (number of trades)", _want_int),
    (9, "9 (taker buy base volume)", _want_non_negative),
    (10, "10 (taker buy quote volume)", _want_non_negative),
    (11, "11 (ignore)", lambda v: None),
)
_KLINE_REST_TIMES = (("open time > close time", lambda k: k[0] <= k[6]),)


_Floats8 = tuple[float, float, float, float, float, float, float, float]


def _kline_values(o: Any, h: Any, lo: Any, c: Any, v: Any, qv: Any, tb: Any, tq: Any) -> _Floats8:
    """The eight kline decimals as floats; ValueError if any is not a valid decimal string."""
    if not (
        type(o) is str and type(h) is str and type(lo) is str and type(c) is str
        and type(v) is str and type(qv) is str and type(tb) is str and type(tq) is str
    ):  # fmt: skip
        raise ValueError
    values = (float(o), float(h), float(lo), float(c), float(v), float(qv), float(tb), float(tq))
    op, hp, lp, cp, vol, qvol, tbv, tqv = values
    # Prices > 0 (an interval without trades repeats the last close), volumes >= 0. Chained
    # comparisons rather than min/max: NaN compares false, and min() would skip it.
    if (
        0.0 < op < _INF and 0.0 < hp < _INF and 0.0 < lp < _INF and 0.0 < cp < _INF
        and 0.0 <= vol < _INF and 0.0 <= qvol < _INF and 0.0 <= tbv < _INF and 0.0 <= tqv < _INF
    ):  # fmt: skip
        return values
    raise ValueError


def kline_from_rest(raw: list[Any], symbol: str, interval: str, ingest_ts: int) -> Kline:
    """One ``GET /api/v3/klines`` 12-element array -> Kline."""
    try:
        open_time = raw[0]
        close_time = raw[6]
        n = raw[8]
        if type(raw) is not list or len(raw) < 12:
            raise ValueError
        values = _kline_values(raw[1], raw[2], raw[3], raw[4], raw[5], raw[7], raw[9], raw[10])
        ok = (
            type(open_time) is int and type(close_time) is int
            and 0 <= open_time <= close_time and type(n) is int and n >= 0
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        raise _fail("kline", raw, _KLINE_REST, _KLINE_REST_TIMES, container=list)
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


def _levels_ok(levels: Any, allow_zero_size: bool) -> bool:
    """``levels`` is a list of [price, size] decimal strings; price > 0, size > 0 (or >= 0)."""
    if type(levels) is not list:
        return False
    # The hottest loop of the module (~30 levels per depth diff): unpacking enforces exactly two
    # elements (ValueError otherwise), and one branch per size rule keeps the loop body minimal.
    try:
        if allow_zero_size:
            for level in levels:
                if type(level) is not list:
                    return False
                p, s = level
                if not (
                    type(p) is type(s) is str and 0.0 < float(p) < _INF and 0.0 <= float(s) < _INF
                ):
                    return False
        else:
            for level in levels:
                if type(level) is not list:
                    return False
                p, s = level
                if not (
                    type(p) is type(s) is str and 0.0 < float(p) < _INF and 0.0 < float(s) < _INF
                ):
                    return False
    except ValueError:
        return False
    return True


_SNAPSHOT = _fields(("lastUpdateId", _want_int), ("bids", _want_book), ("asks", _want_book))


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
            and _levels_ok(bids, False)
            and _levels_ok(asks, False)
        )
    except Exception:
        ok = False
    if not ok:
        raise _fail("depth snapshot", raw, _SNAPSHOT)
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
    fn: Callable[..., Record], items: list[Any], **kwargs: Any
) -> tuple[list[Record], list[Rejected]]:
    """Apply a REST normalizer to every item of a page: ``(records, rejected)``, nothing dropped.

    ``kwargs`` are the normalizer's other arguments (``symbol=``, ``interval=``, ``ingest_ts=``).
    A page that is not a JSON array at all (e.g. a ``{"code", "msg"}`` error body) raises
    MalformedPayload: it has no items to reject one by one.
    """
    if type(items) is not list:
        raise MalformedPayload(
            f"page: expected a JSON array, got {type(items).__name__}: {_short(items)}", items
        )
    records: list[Record] = []
    rejected: list[Rejected] = []
    append = records.append
    for item in items:
        try:
            append(fn(item, **kwargs))
        except MalformedPayload as exc:
            rejected.append(Rejected(exc.reason, item))
    return records, rejected


# --------------------------------------------------------------------------------------------
# WebSocket payloads (the ``data`` object of a combined-stream message)

_TRADE_WS = _fields(
    ("e", _want_event("trade")), ("s", _want_symbol), ("t", _want_int), ("p", _want_positive),
    ("q", _want_positive), ("T", _want_int), ("m", _want_bool),
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
            data["e"] == "trade" and _is_symbol(sym)
            and type(tid) is int and tid >= 0 and type(ts) is int and ts >= 0
            and type(p) is str and 0.0 < price < _INF and type(q) is str and 0.0 < qty < _INF
            and type(m) is bool
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        raise _fail("trade", data, _TRADE_WS)
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
    ("e", "'e'", _want_event("aggTrade")),
    ("s", "'s'", _want_symbol),
    *_AGG_TRADE_REST,
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
            data["e"] == "aggTrade" and _is_symbol(sym)
            and type(a) is int and a >= 0 and type(ts) is int and ts >= 0
            and type(f) is int and type(last) is int and 0 <= f <= last
            and type(p) is str and 0.0 < price < _INF and type(q) is str and 0.0 < qty < _INF
            and type(m) is bool
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        raise _fail("aggTrade", data, _AGG_TRADE_WS, _FIRST_LAST)
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


_BBA_WS = _fields(
    ("u", _want_int), ("s", _want_symbol), ("b", _want_positive), ("B", _want_positive),
    ("a", _want_positive), ("A", _want_positive),
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
            type(u) is int and u >= 0 and _is_symbol(sym)
            and type(b) is str and type(bq) is str and type(a) is str and type(aq) is str
            and 0.0 < bid_px < _INF and 0.0 < bid_sz < _INF
            and 0.0 < ask_px < _INF and 0.0 < ask_sz < _INF
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        raise _fail("bookTicker", data, _BBA_WS)
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


_DEPTH_WS = _fields(
    ("e", _want_event("depthUpdate")), ("E", _want_int), ("s", _want_symbol), ("U", _want_int),
    ("u", _want_int), ("b", _want_diff), ("a", _want_diff),
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
            and _is_symbol(sym)
            and type(first) is int and type(final) is int and 0 <= first <= final
            and _levels_ok(bids, True) and _levels_ok(asks, True)
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        raise _fail("depthUpdate", data, _DEPTH_WS, _FIRST_FINAL)
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


_KLINE_WS = _fields(
    ("e", _want_event("kline")),
    ("s", _want_symbol),
    ("k", lambda v: None if type(v) is dict else "expected an object"),
)
_KLINE_WS_K: Spec = tuple(
    (key, f"'k.{key}'", check)
    for key, check in (
        ("t", _want_int), ("T", _want_int), ("s", _want_symbol), ("i", _want_text),
        ("o", _want_positive), ("c", _want_positive), ("h", _want_positive), ("l", _want_positive),
        ("v", _want_non_negative), ("n", _want_int), ("q", _want_non_negative),
        ("V", _want_non_negative), ("Q", _want_non_negative),
    )
)  # fmt: skip
_KLINE_WS_RELATIONS = (
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
        values = _kline_values(k["o"], k["h"], k["l"], k["c"], k["v"], k["q"], k["V"], k["Q"])
        ok = (
            data["e"] == "kline" and _is_symbol(sym)
            and k["s"] == sym and type(interval) is str and interval != ""
            and type(open_time) is int and type(close_time) is int and 0 <= open_time <= close_time
            and type(n) is int and n >= 0
        )  # fmt: skip
    except Exception:
        ok = False
    if not ok:
        reason = _diagnose(data, _KLINE_WS)
        if reason is None:
            reason = _diagnose(data["k"], _KLINE_WS_K)
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
            raise MalformedPayload(f"field 'data': expected an object, got {_short(data)}", raw)
    event = data.get("e")
    try:
        if event is None:
            if (type(stream) is str and stream.endswith("@bookTicker")) or data.keys() >= _BBA_KEYS:
                data_type, record = BBA, bba_from_ws(data, ingest_ts)
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
                raise MalformedPayload(f"field 'e': unknown event type {_short(event)}", raw)
            data_type, normalize = route
            record = normalize(data, ingest_ts)
    except MalformedPayload as exc:
        raise MalformedPayload(exc.reason, raw) from None
    if symbols is not None and record["symbol"] not in symbols:
        raise MalformedPayload(f"field 's': unexpected symbol {record['symbol']!r}", raw)
    return data_type, record
