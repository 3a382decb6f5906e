"""Offline (vectorized) features for a range of grid steps, usually one symbol-hour.

Input records are plain lists of record dicts (as read from bronze) or, for trades, also a
DataFrame / mapping of arrays with columns ``event_ts, trade_id, price, qty, is_buyer_maker``
(the fast path for a day of trades). Records outside ``[known_from, known_until)`` are ignored.

Internally every function works on the full grid ``ts_j = known_from + j*step``,
``j = 0..J`` (``ts_J = known_until``) so that windows can look back and labels forward; the
result keeps the rows with ``start_ms < ts <= end_ms``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from ingest_pipeline.features.book import BookTracker, SyncStats, merged_book_events
from ingest_pipeline.features.coverage import (
    BBA_SOURCE,
    DEPTH_SOURCE,
    KLINE_SOURCE,
    SOURCES,
    TRADE_SOURCE,
    CoverageIndex,
    index_all,
)
from ingest_pipeline.features.formulas import (
    BBA_PRIMS,
    INT_PRIMS,
    KLINE_PRIMS,
    NAN,
    block_reach,
    depth_prims,
    derive_block,
    prim_names,
    qty_limbs,
)
from ingest_pipeline.features.spec import (
    DEFAULT_SPEC,
    FeatureSpec,
    GridRange,
    hour_range,
)
from ingest_pipeline.spans import Span, clip
from ingest_pipeline.timeutil import HOUR_MS

Records: TypeAlias = Sequence[Mapping[str, Any]]
TradeInput: TypeAlias = Records | pd.DataFrame | Mapping[str, np.ndarray]
# Covered spans per source (``coverage.SOURCES``); a source left out is covered wherever the
# computation's input is known.
CoverageMap = Mapping[str, Sequence[Span]]

_TRADE_FIELDS = ("event_ts", "trade_id", "price", "qty", "is_buyer_maker")


def _grid(rng: GridRange, spec: FeatureSpec) -> np.ndarray:
    step = spec.step_ms
    if rng.known_from % step or rng.known_until % step or rng.start_ms % step or rng.end_ms % step:
        raise ValueError(f"{rng} is not aligned on the {step} ms grid")
    return np.arange(rng.known_from, rng.known_until + 1, step, dtype=np.int64)


def _nan(n: int) -> np.ndarray:
    return np.full(n, NAN)


def _indexes(coverage: CoverageMap | None, rng: GridRange) -> dict[str, CoverageIndex]:
    """Coverage per source, clipped to the known range (nothing is covered outside it)."""
    clipped = {s: clip(v, rng.known_from, rng.known_until) for s, v in (coverage or {}).items()}
    return index_all(clipped, [(rng.known_from, rng.known_until)])


def _last_before(times: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index of the last of the sorted ``times`` before each grid ts (-1: none)."""
    return np.searchsorted(times, grid, side="left") - 1


# --------------------------------------------------------------------------------------------
# Trades


def trade_arrays(trades: TradeInput) -> dict[str, np.ndarray]:
    """Columns of the trades as numpy arrays (no copy when already arrays)."""
    if isinstance(trades, pd.DataFrame):
        cols = {f: trades[f].to_numpy() for f in _TRADE_FIELDS}
    elif isinstance(trades, Mapping):
        cols = {f: np.asarray(trades[f]) for f in _TRADE_FIELDS}
    else:
        n = len(trades)
        cols = {
            "event_ts": np.fromiter((t["event_ts"] for t in trades), np.int64, n),
            "trade_id": np.fromiter((t["trade_id"] for t in trades), np.int64, n),
            "price": np.fromiter((t["price"] for t in trades), np.float64, n),
            "qty": np.fromiter((t["qty"] for t in trades), np.float64, n),
            "is_buyer_maker": np.fromiter((t["is_buyer_maker"] for t in trades), np.bool_, n),
        }
    return {
        "event_ts": cols["event_ts"].astype(np.int64, copy=False),
        "trade_id": cols["trade_id"].astype(np.int64, copy=False),
        "price": cols["price"].astype(np.float64, copy=False),
        "qty": cols["qty"].astype(np.float64, copy=False),
        "is_buyer_maker": cols["is_buyer_maker"].astype(np.bool_, copy=False),
    }


def _sorted_unique_trades(cols: dict[str, np.ndarray], rng: GridRange) -> dict[str, np.ndarray]:
    """Trades in ``[known_from, known_until)``, one per trade id (first seen), sorted by
    ``(event_ts, trade_id)`` - the order in which both forms accumulate them."""
    ets, tid = cols["event_ts"], cols["trade_id"]
    keep = (ets >= rng.known_from) & (ets < rng.known_until)
    if not keep.all():
        cols = {k: v[keep] for k, v in cols.items()}
        ets, tid = cols["event_ts"], cols["trade_id"]
    if len(tid) > 1:
        d_ts = np.diff(ets)
        d_id = np.diff(tid)
        in_order = bool(np.all((d_ts > 0) | ((d_ts == 0) & (d_id > 0))))
        if not in_order or not bool(np.all(d_id != 0)):
            _, first = np.unique(tid, return_index=True)
            order = first[np.lexsort((tid[first], ets[first]))]
            cols = {k: v[order] for k, v in cols.items()}
    return cols


def trade_primitives(
    trades: TradeInput, rng: GridRange, spec: FeatureSpec, cover: CoverageIndex | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Float and integer trade primitives on the full grid of ``rng``."""
    grid = _grid(rng, spec)
    n = len(grid)
    cover = cover or CoverageIndex([(rng.known_from, rng.known_until)])
    c = _sorted_unique_trades(trade_arrays(trades), rng)
    ets, price, qty, ibm = c["event_ts"], c["price"], c["qty"], c["is_buyer_maker"]
    # Trade at event_ts belongs to the row ts_j with ts_j - step <= event_ts < ts_j.
    j = (ets - rng.known_from) // spec.step_ms + 1
    whole, frac = qty_limbs(qty)
    # Buy and sell buckets side by side (bin 2j: buy, 2j+1: sell): one pass per limb.
    side = 2 * j + ibm
    # bincount adds in float64: exact, every partial sum being an integer below 2**53.
    limbs = [
        np.bincount(side, weights=v, minlength=2 * n).astype(np.int64).reshape(n, 2)
        for v in (whole, frac)
    ]
    ints = {
        "buy_w": limbs[0][:, 0],
        "buy_f": limbs[1][:, 0],
        "sell_w": limbs[0][:, 1],
        "sell_f": limbs[1][:, 1],
    }
    gap_end = cover.gap_end(grid)
    last = _last_before(ets, grid)
    has = last >= 0
    at = np.maximum(last, 0)
    if len(price):
        p = np.where(has & (ets[at] >= gap_end), price[at], NAN)
    else:
        p = _nan(n)
    floats = {
        "count": np.bincount(j, minlength=n).astype(np.float64),
        # (bincount of no weights at all answers in int64)
        "notional": np.bincount(j, weights=price * qty, minlength=n).astype(np.float64),
        "p": p,
        "seen": has.astype(np.float64),
        "cov": (gap_end <= grid - spec.step_ms).astype(np.float64),
    }
    return floats, ints


# --------------------------------------------------------------------------------------------
# BBA, book, klines


def bba_primitives(
    bbas: Records, rng: GridRange, spec: FeatureSpec, cover: CoverageIndex | None = None
) -> dict[str, np.ndarray]:
    """The last BBA with ``event_ts < ts`` (receive time; ties by update id), while no
    uncovered time lies between it and ts."""
    grid = _grid(rng, spec)
    rows = [b for b in bbas if rng.known_from <= b["event_ts"] < rng.known_until]
    if not rows:
        return {k: _nan(len(grid)) for k in BBA_PRIMS}
    cover = cover or CoverageIndex([(rng.known_from, rng.known_until)])
    ets = np.fromiter((b["event_ts"] for b in rows), np.int64, len(rows))
    uid = np.fromiter((b["update_id"] for b in rows), np.int64, len(rows))
    order = np.lexsort((uid, ets))
    ets = ets[order]
    last = _last_before(ets, grid)
    at = np.maximum(last, 0)
    ok = (last >= 0) & (ets[at] >= cover.gap_end(grid))
    idx = order[at]
    out = {}
    for k in BBA_PRIMS:
        values = np.fromiter((b[k] for b in rows), np.float64, len(rows))
        out[k] = np.where(ok, values[idx], NAN)
    return out


def book_primitives(
    snapshots: Records,
    diffs: Records,
    rng: GridRange,
    spec: FeatureSpec,
    cover: CoverageIndex | None = None,
) -> tuple[dict[str, np.ndarray], BookTracker]:
    """Top-K sums of the book with every diff of ``E < ts`` applied; NaN while not synced or
    when uncovered diff time lies between the last diff and ts."""
    grid = _grid(rng, spec)
    tracker = BookTracker(spec.step_ms, int(grid[0]), spec.depth_levels)
    snaps = [s for s in snapshots if s["timestamp"] < rng.known_until]
    ds = [d for d in diffs if rng.known_from <= d["event_ts"] < rng.known_until]
    for kind, rec in merged_book_events(snaps, ds):
        if kind == "diff":
            tracker.on_diff(rec)
        else:
            tracker.on_snapshot(rec)
    tracker.close(int(grid[-1]))
    names = depth_prims(spec)
    values = np.full((len(grid), len(names)), NAN)
    samples = tracker.samples
    for i, ts in enumerate(grid.tolist()):
        s = samples[ts]
        if s is not None:
            values[i] = s
    cover = cover or CoverageIndex([(rng.known_from, rng.known_until)])
    times = np.unique(np.fromiter((d["event_ts"] for d in ds), np.int64, len(ds)))
    if len(times):
        last = _last_before(times, grid)
        known = (last >= 0) & (times[np.maximum(last, 0)] >= cover.gap_end(grid))
        values[~known] = NAN
    else:
        values[:] = NAN
    return {name: values[:, i].copy() for i, name in enumerate(names)}, tracker


_KLINE_FIELDS = dict(
    zip(
        KLINE_PRIMS,
        ("open_price", "high_price", "low_price", "close_price", "volume", "taker_buy_base_volume"),
        strict=True,
    )
)


def kline_primitives(
    klines: Records, rng: GridRange, spec: FeatureSpec, cover: CoverageIndex | None = None
) -> dict[str, np.ndarray]:
    """The last kline (of ``spec.kline_interval``) with ``close_time < ts``, while no uncovered
    time lies between its close and ts."""
    grid = _grid(rng, spec)
    by_open: dict[int, Mapping[str, Any]] = {}
    for k in klines:
        if k.get("interval", spec.kline_interval) != spec.kline_interval:
            continue
        if rng.known_from <= k["close_time"] < rng.known_until:
            by_open[k["open_time"]] = k  # the last update of a kline is its final state
    if not by_open:
        return {k: _nan(len(grid)) for k in KLINE_PRIMS}
    cover = cover or CoverageIndex([(rng.known_from, rng.known_until)])
    rows = [by_open[t] for t in sorted(by_open)]
    close = np.fromiter((k["close_time"] for k in rows), np.int64, len(rows))
    last = _last_before(close, grid)
    idx = np.maximum(last, 0)
    ok = (last >= 0) & (close[idx] >= cover.gap_end(grid))
    out = {}
    for prim, field_name in _KLINE_FIELDS.items():
        values = np.fromiter((k[field_name] for k in rows), np.float64, len(rows))
        out[prim] = np.where(ok, values[idx], NAN)
    return out


# --------------------------------------------------------------------------------------------
# Derivation and tables


def _pad(a: np.ndarray, before: int, after: int, fill: float | int) -> np.ndarray:
    out = np.full(before + len(a) + after, fill, dtype=a.dtype)
    out[before : before + len(a)] = a
    return out


def derive_table(
    floats: Mapping[str, np.ndarray],
    ints: Mapping[str, np.ndarray],
    rng: GridRange,
    spec: FeatureSpec,
) -> dict[str, np.ndarray]:
    """Every column for the rows ``start_ms < ts <= end_ms`` from full-grid primitives."""
    grid = _grid(rng, spec)
    before, after = block_reach(spec)
    lo = (rng.start_ms - rng.known_from) // spec.step_ms + 1
    hi = (rng.end_ms - rng.known_from) // spec.step_ms + 1
    fb = {k: _pad(v, before, after, NAN) for k, v in floats.items()}
    ib = {k: _pad(v, before, after, 0) for k, v in ints.items()}
    out = derive_block(spec, grid[lo:hi], fb, ib, lo + before, rng.known_from, rng.known_until)
    out["ts"] = grid[lo:hi]
    return out


def _full_prims(
    rng: GridRange, spec: FeatureSpec, *parts: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    n = len(_grid(rng, spec))
    prims = {name: _nan(n) for name in prim_names(spec)}
    prims["seen"] = np.zeros(n)
    prims["cov"] = np.zeros(n)
    for part in parts:
        prims.update(part)
    return prims


def _no_trade_ints(rng: GridRange, spec: FeatureSpec) -> dict[str, np.ndarray]:
    n = len(_grid(rng, spec))
    return {k: np.zeros(n, np.int64) for k in INT_PRIMS}


def _frame(cols: Mapping[str, np.ndarray], names: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({"ts": cols["ts"], **{c: cols[c] for c in names}})


def trade_features(
    trades: TradeInput,
    rng: GridRange,
    spec: FeatureSpec = DEFAULT_SPEC,
    coverage: CoverageMap | None = None,
) -> pd.DataFrame:
    """``ts`` + trade columns + ``fwd_ret_*`` labels for the rows of ``rng``."""
    cover = _indexes(coverage, rng)
    floats, ints = trade_primitives(trades, rng, spec, cover[TRADE_SOURCE])
    prims = _full_prims(rng, spec, floats)
    return _frame(
        derive_table(prims, ints, rng, spec), spec.trade_columns() + spec.trade_label_columns()
    )


def book_features(
    bbas: Records,
    snapshots: Records,
    diffs: Records,
    rng: GridRange,
    spec: FeatureSpec = DEFAULT_SPEC,
    coverage: CoverageMap | None = None,
) -> pd.DataFrame:
    """``ts`` + BBA columns (receive time) + book columns (exchange time E) + mid labels."""
    cover = _indexes(coverage, rng)
    depth, _ = book_primitives(snapshots, diffs, rng, spec, cover[DEPTH_SOURCE])
    prims = _full_prims(rng, spec, bba_primitives(bbas, rng, spec, cover[BBA_SOURCE]), depth)
    cols = spec.bba_columns() + spec.depth_columns() + spec.mid_label_columns()
    return _frame(derive_table(prims, _no_trade_ints(rng, spec), rng, spec), cols)


def kline_features(
    klines: Records,
    rng: GridRange,
    spec: FeatureSpec = DEFAULT_SPEC,
    coverage: CoverageMap | None = None,
) -> pd.DataFrame:
    cover = _indexes(coverage, rng)
    prims = _full_prims(rng, spec, kline_primitives(klines, rng, spec, cover[KLINE_SOURCE]))
    return _frame(derive_table(prims, _no_trade_ints(rng, spec), rng, spec), spec.kline_columns())


@dataclass
class SymbolInputs:
    """One symbol's records of an hour (or several), by type (plain record lists as read from
    bronze), and what time they cover.

    ``coverage``: covered spans per source (``coverage.SOURCES``); a source left out covers the
    whole of the hours these inputs are for (REST history, a complete archive hour); a source
    whose bronze object does not exist covers nothing, ``()``.
    """

    trades: Any = ()
    bba: Records = ()
    depth_snapshots: Records = ()
    depth_deltas: Records = ()
    klines: Records = ()
    coverage: Mapping[str, Sequence[Span]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return all(
            len(x) == 0
            for x in (self.trades, self.bba, self.depth_snapshots, self.depth_deltas, self.klines)
        )

    def covered(self, source: str, hour_ms: int) -> Sequence[Span]:
        """The covered spans of ``source`` within the hour starting at ``hour_ms``."""
        return clip(
            self.coverage.get(source, ((hour_ms, hour_ms + HOUR_MS),)), hour_ms, hour_ms + HOUR_MS
        )

    def __add__(self, other: SymbolInputs) -> SymbolInputs:
        """The records of both (coverage is per hour: :func:`hour_features` resolves it)."""

        def cat(a: Any, b: Any) -> Any:
            if isinstance(a, pd.DataFrame) or isinstance(b, pd.DataFrame):
                frames = [
                    x
                    if isinstance(x, pd.DataFrame)
                    else pd.DataFrame(list(x), columns=list(_TRADE_FIELDS))
                    for x in (a, b)
                ]
                return pd.concat(frames, ignore_index=True)
            return [*a, *b]

        return SymbolInputs(
            cat(self.trades, other.trades),
            [*self.bba, *other.bba],
            [*self.depth_snapshots, *other.depth_snapshots],
            [*self.depth_deltas, *other.depth_deltas],
            [*self.klines, *other.klines],
        )


@dataclass
class FeatureResult:
    frame: pd.DataFrame
    book: SyncStats | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def compute_features(
    symbol: str,
    inputs: SymbolInputs,
    rng: GridRange,
    spec: FeatureSpec = DEFAULT_SPEC,
    coverage: CoverageMap | None = None,
) -> FeatureResult:
    """The training-set rows of ``rng`` (all columns, ``complete`` included). ``coverage``:
    covered spans per source (default: all of ``[known_from, known_until)``)."""
    cover = _indexes(coverage, rng)
    depth, tracker = book_primitives(
        inputs.depth_snapshots, inputs.depth_deltas, rng, spec, cover[DEPTH_SOURCE]
    )
    trade_floats, trade_ints = trade_primitives(inputs.trades, rng, spec, cover[TRADE_SOURCE])
    prims = _full_prims(
        rng,
        spec,
        trade_floats,
        bba_primitives(inputs.bba, rng, spec, cover[BBA_SOURCE]),
        depth,
        kline_primitives(inputs.klines, rng, spec, cover[KLINE_SOURCE]),
    )
    cols = derive_table(prims, trade_ints, rng, spec)
    frame = pd.DataFrame(
        {"symbol": np.full(len(cols["ts"]), symbol, dtype=object), "ts": cols["ts"]}
    )
    for c in spec.columns()[2:]:
        frame[c] = cols[c]
    frame["symbol"] = frame["symbol"].astype("string")
    return FeatureResult(frame, tracker.stats, {"crossed_samples": tracker.crossed_samples})


def hours_coverage(hours: Sequence[tuple[int, SymbolInputs | None]]) -> dict[str, list[Span]]:
    """Covered spans per source over some hours: ``(hour_ms, inputs or None)``; an hour
    without inputs is covered nowhere."""
    return {
        source: [span for h, inp in hours if inp is not None for span in inp.covered(source, h)]
        for source in SOURCES
    }


def hour_features(
    symbol: str,
    hour_ms: int,
    current: SymbolInputs,
    previous: SymbolInputs | None = None,
    next_hour: SymbolInputs | None = None,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> FeatureResult:
    """One symbol-hour of the training set: rows ``ts = h0 + k*step``, k = 1..n, with
    warm-up from ``previous`` and labels from ``next_hour`` (None: that hour is unknown and
    rows needing it are incomplete). No input at all for the hour: no rows."""
    if current.is_empty():
        return FeatureResult(pd.DataFrame({c: [] for c in spec.columns()}))
    rng = hour_range(hour_ms, previous is not None, next_hour is not None)
    merged = current
    if previous is not None:
        merged = previous + merged
    if next_hour is not None:
        merged = merged + next_hour
    coverage = hours_coverage(
        [(hour_ms - HOUR_MS, previous), (hour_ms, current), (hour_ms + HOUR_MS, next_hour)]
    )
    return compute_features(symbol, merged, rng, spec, coverage)
