"""Data-quality rules for bronze records: pure functions, one per asset check.

Each rule returns a ``Verdict``: passed or not, a one-line summary and the details a person
needs to find the defect (the first offending ids, not all of them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ingest_pipeline import spans
from ingest_pipeline.records import KLINE_INTERVALS, KLINE_WIDTH_MS, Record
from ingest_pipeline.timeutil import HOUR_MS, iso_ms

MAX_LISTED = 10
VOLUME_TOLERANCE = 1e-8


@dataclass(frozen=True)
class Verdict:
    passed: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    # Numbers worth a plot over partitions (recorded as numeric metadata).
    numbers: Mapping[str, float] = field(default_factory=dict)


def _ranges(missing: Sequence[tuple[int, int]]) -> list[str]:
    return [f"{a}..{b}" for a, b in missing[:MAX_LISTED]]


def id_gaps(ids: Sequence[int]) -> list[tuple[int, int]]:
    """Missing id ranges ``(first, last)`` between consecutive ids of an ascending sequence."""
    return [(a + 1, b - 1) for a, b in zip(ids, ids[1:], strict=False) if b > a + 1]


def check_contiguous_ids(records: Sequence[Record], id_field: str) -> Verdict:
    ids = sorted(r[id_field] for r in records)
    gaps = id_gaps(ids)
    dups = len(ids) - len(set(ids))
    numbers = {
        "records": len(ids),
        "gaps": len(gaps),
        "missing_ids": sum(b - a + 1 for a, b in gaps),
        "duplicates": dups,
    }
    if gaps or dups:
        return Verdict(
            False,
            f"{len(gaps)} gap(s), {dups} duplicate(s) in {id_field}",
            {"gaps": _ranges(gaps), "duplicates": dups},
            numbers,
        )
    span = f"{ids[0]}..{ids[-1]}" if ids else "empty"
    return Verdict(True, f"{len(ids)} contiguous {id_field}s {span}", numbers=numbers)


def check_no_duplicates(records: Sequence[Record], id_field: str) -> Verdict:
    seen: set[int] = set()
    dups = []
    for r in records:
        if r[id_field] in seen:
            dups.append(r[id_field])
        seen.add(r[id_field])
    numbers = {"records": len(records), "duplicates": len(dups)}
    if dups:
        return Verdict(
            False, f"{len(dups)} duplicate {id_field}(s)", {"first": dups[:MAX_LISTED]}, numbers
        )
    return Verdict(True, f"no duplicate {id_field} among {len(records)} records", numbers=numbers)


def check_in_hour(records: Sequence[Record], time_field: str, hour_ms: int) -> Verdict:
    outside = [r[time_field] for r in records if not hour_ms <= r[time_field] < hour_ms + HOUR_MS]
    numbers = {"records": len(records), "outside_hour": len(outside)}
    if outside:
        return Verdict(
            False,
            f"{len(outside)} record(s) outside the hour",
            {"first": outside[:MAX_LISTED]},
            numbers,
        )
    return Verdict(
        True,
        f"every {time_field} in [{iso_ms(hour_ms)}, {iso_ms(hour_ms + HOUR_MS)})",
        numbers=numbers,
    )


def check_positive_price_qty(records: Sequence[Record], id_field: str) -> Verdict:
    bad = [r[id_field] for r in records if not (r["price"] > 0 and r["qty"] > 0)]
    numbers = {"records": len(records), "not_positive": len(bad)}
    if bad:
        return Verdict(
            False, f"{len(bad)} record(s) with price or qty <= 0", {"ids": bad[:10]}, numbers
        )
    return Verdict(True, "every price and qty > 0", numbers=numbers)


def check_continues_previous_hour(
    records: Sequence[Record], previous: Sequence[Record] | None, id_field: str
) -> Verdict:
    """The hour's first id is the previous hour's last id + 1 (when that hour exists)."""
    # compared = 0: nothing to compare; id_jump = first - (previous last + 1): 0 when it follows.
    if previous is None:
        return Verdict(
            True, "previous hour not in bronze: nothing to compare", numbers={"compared": 0}
        )
    if not records or not previous:
        return Verdict(True, "an hour without records: nothing to compare", numbers={"compared": 0})
    first = min(r[id_field] for r in records)
    last = max(r[id_field] for r in previous)
    numbers = {"compared": 1, "id_jump": first - last - 1}
    if first != last + 1:
        return Verdict(
            False,
            f"first {id_field} {first} does not follow the previous hour's last {last}",
            {"missing": _ranges([(last + 1, first - 1)]) if first > last + 1 else []},
            numbers,
        )
    return Verdict(
        True, f"first {id_field} {first} follows the previous hour's last {last}", numbers=numbers
    )


def check_trades_match_agg_trades(trades: Sequence[Record], covered: int, aggs: int) -> Verdict:
    """The hour's trades are as many as its ``aggs`` aggTrades cover (``covered`` =
    sum(l - f + 1) over them)."""
    numbers = {"trades": len(trades), "expected": covered, "difference": len(trades) - covered}
    if len(trades) != covered:
        return Verdict(
            False,
            f"{len(trades)} trades, but the hour's aggTrades cover {covered}",
            {"trades": len(trades), "expected": covered},
            numbers,
        )
    return Verdict(
        True,
        f"{len(trades)} trades == sum(l - f + 1) over {aggs} aggTrades",
        numbers=numbers,
    )


def check_klines(
    klines: Sequence[Record], trades: Sequence[Record] | None, interval: str, hour_ms: int
) -> Verdict:
    """One kline per interval step; OHLC consistent; volume and count equal the hour's trades.

    ``trades`` may be aggTrades (counts come from ``l - f + 1``) or individual trades.
    """
    if interval not in KLINE_INTERVALS:
        raise ValueError(f"{interval} klines do not tile an hour: bronze holds none")
    step = KLINE_WIDTH_MS[interval]
    problems: dict[str, Any] = {}
    opens = [k["open_time"] for k in klines]
    expected = list(range(hour_ms, hour_ms + HOUR_MS, step))
    missing = sorted(set(expected) - set(opens))
    extra = sorted(set(opens) - set(expected))
    numbers = {"klines": len(opens), "missing_steps": len(missing), "unexpected_steps": len(extra)}
    if opens != expected:
        problems["steps"] = {
            "rows": len(opens), "expected": len(expected),
            "missing": [iso_ms(t) for t in missing[:MAX_LISTED]],
            "unexpected": [iso_ms(t) for t in extra[:MAX_LISTED]],
        }  # fmt: skip
    bad_ohlc = [
        k["open_time"]
        for k in klines
        if not (
            k["low_price"] <= min(k["open_price"], k["close_price"])
            and max(k["open_price"], k["close_price"]) <= k["high_price"]
        )
    ]
    numbers["bad_ohlc"] = len(bad_ohlc)
    if bad_ohlc:
        problems["ohlc"] = [iso_ms(t) for t in bad_ohlc[:MAX_LISTED]]
    if trades is not None:
        volume: dict[int, float] = {}
        count: dict[int, int] = {}
        for t in trades:
            slot = t["event_ts"] - (t["event_ts"] - hour_ms) % step
            volume[slot] = volume.get(slot, 0.0) + t["qty"]
            n = t["last_trade_id"] - t["first_trade_id"] + 1 if "first_trade_id" in t else 1
            count[slot] = count.get(slot, 0) + n
        mismatched = [
            k["open_time"]
            for k in klines
            if abs(k["volume"] - volume.get(k["open_time"], 0.0)) > VOLUME_TOLERANCE
            or k["trade_count"] != count.get(k["open_time"], 0)
        ]
        numbers["disagree_with_trades"] = len(mismatched)
        if mismatched:
            problems["disagree_with_trades"] = [iso_ms(t) for t in mismatched[:MAX_LISTED]]
    if problems:
        return Verdict(False, f"klines defects: {', '.join(problems)}", problems, numbers)
    return Verdict(
        True, f"{len(klines)} {interval} klines, consistent with the hour's trades", numbers=numbers
    )


def check_book(snapshot: Record) -> Verdict:
    """Bids strictly descending, asks strictly ascending, not crossed, no zero size."""
    bids = [(float(p), float(q)) for p, q in snapshot["bids"]]
    asks = [(float(p), float(q)) for p, q in snapshot["asks"]]
    problems = []
    if any(nxt[0] >= prev[0] for prev, nxt in zip(bids, bids[1:], strict=False)):
        problems.append("bids not strictly descending")
    if any(nxt[0] <= prev[0] for prev, nxt in zip(asks, asks[1:], strict=False)):
        problems.append("asks not strictly ascending")
    if bids and asks and bids[0][0] >= asks[0][0]:
        problems.append(f"crossed: best bid {bids[0][0]} >= best ask {asks[0][0]}")
    if any(q <= 0 for _, q in bids + asks):
        problems.append("a level with zero size")
    numbers: dict[str, float] = {"bids": len(bids), "asks": len(asks), "problems": len(problems)}
    if bids and asks:
        numbers["spread"] = asks[0][0] - bids[0][0]
    if problems:
        return Verdict(
            False, "; ".join(problems), {"last_update_id": snapshot["last_update_id"]}, numbers
        )
    return Verdict(
        True,
        f"{len(bids)} bids / {len(asks)} asks ordered, not crossed, no zero size",
        numbers=numbers,
    )


def check_increasing_ids(records: Sequence[Record], id_field: str) -> Verdict:
    """Ids strictly increase in the order the records were received (stream order, duplicates
    already removed): a decrease means the stream delivered updates out of order."""
    ids = [r[id_field] for r in records]
    back = [(a, b) for a, b in zip(ids, ids[1:], strict=False) if b <= a]
    numbers = {"records": len(ids), "not_increasing": len(back)}
    if back:
        return Verdict(
            False,
            f"{len(back)} time(s) {id_field} did not increase",
            {"decreases": [f"{a} -> {b}" for a, b in back[:MAX_LISTED]], "count": len(back)},
            numbers,
        )
    span = f"{ids[0]}..{ids[-1]}" if ids else "empty"
    return Verdict(True, f"{len(ids)} {id_field}s strictly increasing ({span})", numbers=numbers)


# A chain with more breaks than this lists the first ones and counts the rest.
MAX_CHAIN_BREAKS_LISTED = 1000


def depth_chain_breaks(records: Sequence[Record]) -> list[tuple[int, int]]:
    """``(previous u, U)`` of every diff whose ``U != previous u + 1``, by final update id."""
    chain = sorted(records, key=lambda r: r["final_update_id"])
    return [
        (a["final_update_id"], b["first_update_id"])
        for a, b in zip(chain, chain[1:], strict=False)
        if b["first_update_id"] != a["final_update_id"] + 1
    ]


def check_depth_chain(records: Sequence[Record]) -> Verdict:
    """Every diff continues the previous one (``U == previous u + 1``, Binance's rule); every
    break is listed with the update ids it skips, and diffs marked ``gap: true`` are counted."""
    breaks = depth_chain_breaks(records)
    marked = sum(1 for r in records if r.get("gap"))
    details: dict[str, Any] = {"breaks": len(breaks), "marked_gap": marked}
    numbers = {
        "diffs": len(records),
        "breaks": len(breaks),
        "marked_gap": marked,
        "missing_update_ids": sum(max(first - u - 1, 0) for u, first in breaks),
    }
    if breaks:
        details["break_list"] = [
            f"u={u} -> U={first} ({first - u - 1} update ids missing)"
            if first > u + 1
            else f"u={u} -> U={first} (overlap)"
            for u, first in breaks[:MAX_CHAIN_BREAKS_LISTED]
        ]
        return Verdict(
            False,
            f"{len(breaks)} break(s) in the depth chain, {marked} diff(s) marked gap",
            details,
            numbers,
        )
    return Verdict(True, f"{len(records)} diffs chained, {marked} marked gap", details, numbers)


def check_coverage(covered: Sequence[tuple[int, int]], hour_ms: int) -> Verdict:
    """The source covered the whole hour; otherwise which spans it left out (``spans``)."""
    missing = spans.gaps(covered, hour_ms, hour_ms + HOUR_MS)
    share = spans.length(spans.clip(covered, hour_ms, hour_ms + HOUR_MS)) / HOUR_MS
    numbers = {"covered_share": share}
    if not missing:
        return Verdict(True, "the source covered the whole hour", numbers=numbers)
    return Verdict(
        False,
        f"the source covered {share:.1%} of the hour; {len(missing)} span(s) not covered",
        {"not_covered_ms": [[a - hour_ms, b - hour_ms] for a, b in missing[:MAX_LISTED]]},
        numbers,
    )
