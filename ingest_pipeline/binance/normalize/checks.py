"""The checks every Binance normalizer shares (``normalize/__init__.py`` states the rules): the
fast-path helpers (``levels_ok``, ``kline_values``, ``is_symbol``) and the slow path that finds
and describes the first bad field of a payload once the fast path has failed (``fail``).
Pure: no I/O."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ingest_pipeline.records import MalformedPayload

INF = float("inf")

# --------------------------------------------------------------------------------------------
# Slow path: find and describe the first bad field. Only runs once the fast path has failed.

Check = Callable[[Any], "str | None"]
Spec = tuple[tuple[Any, str, Check], ...]
# The JSON container a payload must be: an object (most) or an array (a REST kline).
Container = type[dict[Any, Any]] | type[list[Any]]
# Checks between fields, each with the message when it does not hold.
Relations = tuple[tuple[str, Callable[[Any], bool]], ...]


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def want_int(v: Any) -> str | None:
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


def want_positive(v: Any) -> str | None:
    x = _number(v)
    if x is None:
        return "expected a decimal string"
    return None if 0.0 < x < INF else "expected a finite decimal > 0"


def want_non_negative(v: Any) -> str | None:
    x = _number(v)
    if x is None:
        return "expected a decimal string"
    return None if 0.0 <= x < INF else "expected a finite decimal >= 0"


def want_bool(v: Any) -> str | None:
    return None if type(v) is bool else "expected true or false"


_SYMBOL_SIGNS = str.maketrans("", "", "-_.")


def is_symbol(v: Any) -> bool:
    # isalnum() decides every listed symbol today; the slow branch admits the rest of Binance's
    # documented alphabet ``^[A-Z0-9-_.]{1,20}$``.
    return type(v) is str and (
        v.isalnum() or (v[:1].isalnum() and ".." not in v and v.translate(_SYMBOL_SIGNS).isalnum())
    )


def want_symbol(v: Any) -> str | None:
    return None if is_symbol(v) else "expected a symbol (letters, digits, '-', '_', '.')"


def want_text(v: Any) -> str | None:
    return None if type(v) is str and v else "expected a non-empty string"


def _want_levels(size_check: Check) -> Check:
    def check(levels: Any) -> str | None:
        if type(levels) is not list:
            return "expected an array of [price, size]"
        for i, level in enumerate(levels):
            if type(level) is not list or len(level) != 2:
                return f"level {i}: expected [price, size], got {short(level)}"
            problem = want_positive(level[0])
            if problem is not None:
                return f"level {i} price: {problem}, got {short(level[0])}"
            problem = size_check(level[1])
            if problem is not None:
                return f"level {i} size: {problem}, got {short(level[1])}"
        return None

    return check


want_book = _want_levels(want_positive)
want_diff = _want_levels(want_non_negative)


def want_event(name: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v == name else f"expected event type {name!r}"

    return check


def diagnose(obj: Any, spec: Spec, container: Container = dict) -> str | None:
    if type(obj) is not container:
        kind = "object" if container is dict else "array"
        return f"expected a JSON {kind}, got {type(obj).__name__}: {short(obj)}"
    for key, label, check in spec:
        try:
            value = obj[key]
        except (KeyError, IndexError):
            return f"missing field {label}"
        problem = check(value)
        if problem is not None:
            # Problems about a level already quote the value; others get it appended.
            suffix = "" if problem.startswith("level ") else f", got {short(value)}"
            return f"field {label}: {problem}{suffix}"
    return None


def fields(*items: tuple[str, Check]) -> Spec:
    return tuple((key, repr(key), check) for key, check in items)


def fail(
    what: str,
    raw: Any,
    spec: Spec,
    relations: Relations = (),
    container: Container = dict,
) -> MalformedPayload:
    reason = diagnose(raw, spec, container)
    if reason is None:
        reason = next((msg for msg, holds in relations if not holds(raw)), "invalid payload")
    return MalformedPayload(f"{what}: {reason}", raw)


# --------------------------------------------------------------------------------------------
# Pieces shared by the REST and WebSocket normalizers.

# An aggTrade's fields, the same in a REST item and in a WebSocket payload (after "e" and "s").
AGG_TRADE_FIELDS = fields(
    ("a", want_int), ("p", want_positive), ("q", want_positive), ("f", want_int),
    ("l", want_int), ("T", want_int), ("m", want_bool),
)  # fmt: skip
FIRST_LAST = (("first trade id 'f' > last trade id 'l'", lambda d: d["f"] <= d["l"]),)


_Floats8 = tuple[float, float, float, float, float, float, float, float]


def kline_values(o: Any, h: Any, lo: Any, c: Any, v: Any, qv: Any, tb: Any, tq: Any) -> _Floats8:
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
        0.0 < op < INF and 0.0 < hp < INF and 0.0 < lp < INF and 0.0 < cp < INF
        and 0.0 <= vol < INF and 0.0 <= qvol < INF and 0.0 <= tbv < INF and 0.0 <= tqv < INF
    ):  # fmt: skip
        return values
    raise ValueError


def levels_ok(levels: Any, allow_zero_size: bool) -> bool:
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
                    type(p) is type(s) is str and 0.0 < float(p) < INF and 0.0 <= float(s) < INF
                ):
                    return False
        else:
            for level in levels:
                if type(level) is not list:
                    return False
                p, s = level
                if not (
                    type(p) is type(s) is str and 0.0 < float(p) < INF and 0.0 < float(s) < INF
                ):
                    return False
    except ValueError:
        return False
    return True
