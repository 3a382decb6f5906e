"""Online (incremental) features: the same rows as the offline form, from the live stream.

Feed one symbol's records in arrival order (``on_trade``, ``on_bba``, ``on_depth_delta``,
``on_depth_snapshot``, ``on_kline``, or ``on_record(data_type, record)``). The engine keeps
only what the windows and horizons need (a few hundred steps of primitives) and emits:

- a *feature row* for each grid step once it is closed (labels null, ``complete`` false), and
- the *final row* (labels and ``complete`` filled) once the longest horizon has passed.

When a step is closed (event time, not arrival). The watermark is the largest event time seen
(trade time ``T``, diff ``E``, BBA receive time) minus ``allowed_lateness_ms``; every grid step
``ts <= watermark`` is closed, and :meth:`advance_to` closes steps explicitly (an idle stream
driven by a clock; ``finish`` at the end of the data). Default lateness 3 s: the real capture's
recorder clock (BBA event time) runs ~1.27 s behind exchange time, plus network jitter.

Late records (event time before the last closed step) cannot change rows already emitted:
trades, BBAs and klines that late are counted in ``late`` and dropped; late depth diffs are
still applied to the book (the update-id chain needs them) and counted. With no late records
the rows are identical to the offline form's for ``GridRange(start, end, known_from=start,
known_until=end)``; a depth snapshot that arrives after the step it would have synced is the
one documented source of difference (online rows stay null until it arrives).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ingest_pipeline.features.book import BookTracker
from ingest_pipeline.features.formulas import (
    LAG_FILL,
    NAN,
    derive_rows,
    prim_names,
    r_squared,
)
from ingest_pipeline.features.spec import DEFAULT_SPEC, FeatureSpec
from ingest_pipeline.records import AGG_TRADES, BBA, DEPTH_DELTA, DEPTH_SNAPSHOT, TRADE, TRADES

DEFAULT_LATENESS_MS = 3000
_NAN4 = (NAN, NAN, NAN, NAN)
_NAN6 = (NAN,) * 6
_BATCH = 512  # steps closed per derivation batch


class OnlineFeatureEngine:
    """Incremental features for one symbol from ``start_ms`` (grid-aligned) on."""

    def __init__(
        self,
        symbol: str,
        start_ms: int,
        spec: FeatureSpec = DEFAULT_SPEC,
        allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
        emit_feature_rows: bool = True,
    ) -> None:
        step = spec.step_ms
        if start_ms % step:
            raise ValueError(f"start_ms={start_ms} is not on the {step} ms grid")
        self.symbol = symbol
        self.spec = spec
        self.step = step
        self.lateness = allowed_lateness_ms
        self.emit_feature_rows = emit_feature_rows
        self.known_from = start_ms
        self.closed_ts = start_ms  # ts of the last closed step (j = self._j)
        self._j = 0
        self.max_event_ts = start_ms
        self.late: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        # trades of open buckets: row index j -> [(event_ts, trade_id, price, qty, ibm)]
        self._buckets: dict[int, list[tuple[int, int, float, float, bool]]] = {}
        self._open_ids: set[int] = set()
        self._p = NAN
        self._cs_buy = 0.0
        self._cs_sell = 0.0
        self._cs_r2 = 0.0
        # BBA in force, and those not yet before the next step's end
        self._bba_key: tuple[int, int] | None = None
        self._bba = _NAN4
        self._bba_pending: list[tuple[int, int, tuple[float, float, float, float]]] = []
        self.book = BookTracker(step, start_ms, spec.depth_levels)
        self._kline_close = -1
        self._kline = _NAN6
        self._kline_pending: dict[int, Mapping[str, Any]] = {}
        # primitives of the last steps (tuples in prim_names order); self._hist[0] is j=_base
        self._names = prim_names(spec)
        self._idx = {n: i for i, n in enumerate(self._names)}
        self._lags = {w: spec.steps(w) for w in spec.windows_ms}
        self._leads = {n: spec.steps(n) for n in spec.horizons_ms}
        self._max_lead = max(self._leads.values())
        self._max_lag = max(self._lags.values())
        self._keep = max(self._lags.values()) + self._max_lead + 2
        self._hist: deque[tuple[float, ...]] = deque()
        self._base = 0
        self._hist.append(self._prims_now(0.0, 0.0, 0.0, 0.0, 0.0, None))
        self._finalized_j = 0  # last j whose final row was emitted
        self._lag_fill = tuple(LAG_FILL.get(n, NAN) for n in self._names)
        self._nan_row = (NAN,) * len(self._names)
        self.feature_rows: list[dict[str, Any]] = []
        self.final_rows: list[dict[str, Any]] = []

    # --- input -----------------------------------------------------------------------------

    def on_record(self, data_type: str, record: Mapping[str, Any]) -> None:
        if data_type in (TRADE, TRADES, AGG_TRADES, "agg_trade"):
            self.on_trade(record)
        elif data_type == BBA:
            self.on_bba(record)
        elif data_type == DEPTH_DELTA:
            self.on_depth_delta(record)
        elif data_type == DEPTH_SNAPSHOT:
            self.on_depth_snapshot(record)
        elif data_type == "kline" or data_type.startswith("klines_"):
            self.on_kline(record)
        else:
            raise ValueError(f"unknown data type {data_type!r}")

    def on_trade(self, t: Mapping[str, Any]) -> None:
        ets = t["event_ts"]
        if ets < self.closed_ts:
            self.late["trade"] += 1
            return
        tid = t["trade_id"]
        if tid in self._open_ids:
            self.duplicates["trade"] += 1
            return
        self._open_ids.add(tid)
        j = (ets - self.known_from) // self.step + 1
        item = (ets, tid, t["price"], t["qty"], t["is_buyer_maker"])
        bucket = self._buckets.get(j)
        if bucket is None:
            self._buckets[j] = [item]
        else:
            bucket.append(item)
        self._saw(ets)

    def on_bba(self, b: Mapping[str, Any]) -> None:
        ets = b["event_ts"]
        if ets < self.closed_ts:
            self.late["bba"] += 1
            return
        self._bba_pending.append(
            (ets, b["update_id"], (b["bid_px"], b["bid_sz"], b["ask_px"], b["ask_sz"]))
        )
        self._saw(ets)

    def on_depth_delta(self, d: Mapping[str, Any]) -> None:
        E = d["event_ts"]
        if E < self.known_from:
            return
        if E < self.closed_ts:
            self.late["depth_delta"] += 1
        self.book.on_diff(d)
        self._saw(E)

    def on_depth_snapshot(self, s: Mapping[str, Any]) -> None:
        self.book.on_snapshot(s)

    def on_kline(self, k: Mapping[str, Any]) -> None:
        if k.get("interval", self.spec.kline_interval) != self.spec.kline_interval:
            return
        close = k["close_time"]
        if close < self.known_from:
            return
        if close < self.closed_ts:
            self.late["kline"] += 1
            return
        self._kline_pending[k["open_time"]] = k  # later updates of a kline replace earlier

    def _saw(self, event_ts: int) -> None:
        if event_ts > self.max_event_ts:
            self.max_event_ts = event_ts
            if event_ts - self.lateness >= self.closed_ts + self.step:
                self.advance_to(event_ts - self.lateness)

    # --- closing steps ----------------------------------------------------------------------

    def advance_to(self, watermark_ms: int) -> None:
        """Close every grid step with ``ts <= watermark_ms``."""
        closed: list[int] = []
        while self.closed_ts + self.step <= watermark_ms:
            self._close_step()
            closed.append(self._j)
            if len(closed) >= _BATCH:
                self._flush(closed)
                closed = []
        if closed:
            self._flush(closed)

    def _flush(self, closed: list[int]) -> None:
        """Emit the rows of the steps just closed (batched: one derivation per batch)."""
        if self.emit_feature_rows:
            self._rows(closed, known_until=self.closed_ts, labels=False, out=self.feature_rows)
        self._emit(final_until=self._j - self._max_lead, known_until=self.closed_ts)

    def finish(self, end_ms: int) -> None:
        """End of data at ``end_ms``: close the remaining steps and emit every pending final
        row, with labels null where their horizon passes ``end_ms``."""
        self.advance_to(end_ms)
        self._emit(final_until=self._j, known_until=self.closed_ts)

    def drain(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``(feature_rows, final_rows)`` emitted since the last call."""
        out = (self.feature_rows, self.final_rows)
        self.feature_rows, self.final_rows = [], []
        return out

    def _prims_now(
        self, count: float, volume: float, notional: float, buy: float, sell: float,
        sample: tuple[float, ...] | None,
    ) -> tuple[float, ...]:  # fmt: skip
        depth = sample if sample is not None else (NAN,) * (2 * len(self.spec.depth_levels))
        return (
            count, volume, notional, buy, sell, self._p, self._cs_buy, self._cs_sell, self._cs_r2,
            *self._bba, *depth, *self._kline,
        )  # fmt: skip

    def _close_step(self) -> None:
        j = self._j + 1
        ts = self.closed_ts + self.step
        # trades of [ts - step, ts), in (event_ts, trade_id) order, summed left to right
        count = volume = notional = buy = sell = 0.0
        bucket = self._buckets.pop(j, None)
        p_prev = self._p
        if bucket:
            bucket.sort()
            for _, tid, px, q, ibm in bucket:
                count += 1.0
                volume += q
                notional += px * q
                if ibm:
                    sell += q
                else:
                    buy += q
                self._open_ids.discard(tid)
            self._p = bucket[-1][2]
        self._cs_buy += buy
        self._cs_sell += sell
        r2 = r_squared(np.array([self._p]), np.array([p_prev]))[0]
        self._cs_r2 += float(r2)
        # BBA in force: the largest (event_ts, update_id) with event_ts < ts
        if self._bba_pending:
            keep = []
            for item in self._bba_pending:
                if item[0] < ts:
                    key = (item[0], item[1])
                    if self._bba_key is None or key > self._bba_key:
                        self._bba_key = key
                        self._bba = item[2]
                else:
                    keep.append(item)
            self._bba_pending = keep
        # book with every diff of E < ts applied
        self.book.close(ts)
        sample = self.book.samples.pop(ts)
        # kline: the last with close_time < ts
        if self._kline_pending:
            for open_time in [o for o, k in self._kline_pending.items() if k["close_time"] < ts]:
                k = self._kline_pending.pop(open_time)
                if k["close_time"] > self._kline_close:
                    self._kline_close = k["close_time"]
                    self._kline = (
                        k["open_price"], k["high_price"], k["low_price"], k["close_price"],
                        k["volume"], k["taker_buy_base_volume"],
                    )  # fmt: skip
        self._hist.append(self._prims_now(count, volume, notional, buy, sell, sample))
        self._j = j
        self.closed_ts = ts

    def _at(self, j: int, fill: tuple[float, ...]) -> tuple[float, ...]:
        if j < 0 or j > self._j:
            return fill
        return self._hist[j - self._base]

    def _emit(self, final_until: int, known_until: int) -> None:
        if final_until > self._finalized_j:
            js = list(range(self._finalized_j + 1, final_until + 1))
            self._rows(js, known_until=known_until, labels=True, out=self.final_rows)
            self._finalized_j = final_until
        # keep what unfinished rows and future windows still need
        oldest_needed = min(self._finalized_j + 1, self._j) - self._max_lag
        while len(self._hist) > self._keep and self._base < oldest_needed:
            self._hist.popleft()
            self._base += 1

    def _rows(
        self, js: list[int], known_until: int, labels: bool, out: list[dict[str, Any]]
    ) -> None:
        spec = self.spec
        idx = self._idx

        def cols(rows: list[tuple[float, ...]], names: tuple[str, ...]) -> dict[str, np.ndarray]:
            a = np.array(rows, dtype=np.float64).reshape(len(rows), len(self._names))
            return {n: a[:, idx[n]] for n in names}

        cur = cols([self._at(j, self._nan_row) for j in js], self._names)
        lag = {
            w: cols(
                [self._at(j - n, self._lag_fill) for j in js], ("p", "cs_buy", "cs_sell", "cs_r2")
            )
            for w, n in self._lags.items()
        }
        fwd = {
            h: cols(
                [self._at(j + n, self._nan_row) if labels else self._nan_row for j in js],
                ("p", "bid_px", "ask_px"),
            )
            for h, n in self._leads.items()
        }
        ts = np.array([self.known_from + j * self.step for j in js], dtype=np.int64)
        values = derive_rows(spec, ts, cur, lag, fwd, self.known_from, known_until)
        names = spec.columns()[2:]
        lists = {c: values[c].tolist() for c in names}
        ts_list = ts.tolist()
        for i in range(len(js)):
            row: dict[str, Any] = {"symbol": self.symbol, "ts": ts_list[i]}
            for c in names:
                row[c] = lists[c][i]
            out.append(row)


def rows_to_frame(rows: list[dict[str, Any]], spec: FeatureSpec = DEFAULT_SPEC) -> pd.DataFrame:
    """Online rows -> the offline frame layout (NaN = null)."""
    cols = spec.columns()
    if not rows:
        return pd.DataFrame({c: [] for c in cols})
    frame = pd.DataFrame.from_records(rows, columns=cols)
    frame["symbol"] = frame["symbol"].astype("string")
    frame["ts"] = frame["ts"].astype(np.int64)
    frame["complete"] = frame["complete"].astype(bool)
    for c in cols[2:-1]:
        frame[c] = frame[c].astype(np.float64)
    return frame
