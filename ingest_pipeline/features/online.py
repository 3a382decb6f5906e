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

The engine never resets and needs not: its window sums are exact integers or direct sums (see
``formulas``), so a row's values do not depend on how long the engine has run, and equal the
offline form's computed from any earlier start. Time the engine did not listen to (a
disconnect not filled) is declared with :meth:`mark_uncovered`, as bronze objects declare
theirs, so both forms treat it as missing. Rows are derived in batches when read (``drain``):
closing a step only records its primitives.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ingest_pipeline.features.book import BookTracker
from ingest_pipeline.features.coverage import (
    BBA_SOURCE,
    DEPTH_SOURCE,
    KLINE_SOURCE,
    NEVER,
    SOURCES,
    TRADE_SOURCE,
    CoverageIndex,
)
from ingest_pipeline.features.formulas import (
    INT_PRIMS,
    NAN,
    block_reach,
    derive_block,
    prim_names,
    qty_limbs_one,
)
from ingest_pipeline.features.spec import DEFAULT_SPEC, FeatureSpec
from ingest_pipeline.records import AGG_TRADES, BBA, DEPTH_DELTA, DEPTH_SNAPSHOT, TRADE, TRADES
from ingest_pipeline.spans import subtract

DEFAULT_LATENESS_MS = 3000
_NAN4 = (NAN, NAN, NAN, NAN)
_NAN6 = (NAN,) * 6
_ZERO_INTS = (0,) * len(INT_PRIMS)
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
        # What the engine has listened to: everything from its start, until told otherwise.
        self._covered: dict[str, tuple[tuple[int, int], ...]] = {
            s: ((start_ms, NEVER),) for s in SOURCES
        }
        self._cover = {s: CoverageIndex(v) for s, v in self._covered.items()}
        # trades of open buckets: row index j -> [(event_ts, trade_id, price, qty, ibm)]
        self._buckets: dict[int, list[tuple[int, int, float, float, bool]]] = {}
        self._open_ids: set[int] = set()
        self._p = NAN  # last trade price, and its time (None: no trade yet)
        self._p_t: int | None = None
        # BBA in force (and its receive time), and those not yet before the next step's end
        self._bba_key: tuple[int, int] | None = None
        self._bba = _NAN4
        self._bba_pending: list[tuple[int, int, tuple[float, float, float, float]]] = []
        self.book = BookTracker(step, start_ms, spec.depth_levels)
        # E of the last diff before the last closed step, and the diffs' E not closed yet
        self._book_t: int | None = None
        self._diff_times: list[int] = []
        self._kline_close = -1
        self._kline = _NAN6
        self._kline_pending: dict[int, Mapping[str, Any]] = {}
        # primitives of the last steps: self._hist[0] / self._hist_ints[0] are j = _base
        self._names = prim_names(spec)
        self._lag, self._lead = block_reach(spec)
        self._keep = self._lag + self._lead + 2
        self._nan_row = (NAN,) * len(self._names)
        self._hist: deque[tuple[float, ...]] = deque()
        self._hist_ints: deque[tuple[int, ...]] = deque()
        self._base = 0
        # j = 0 is the start itself: no bucket before it is known
        self._hist.append((0.0, 0.0, NAN, 0.0, 0.0) + self._nan_row[5:])
        self._hist_ints.append(_ZERO_INTS)
        self._finalized_j = 0  # last j whose final row was emitted
        self._closed: list[int] = []  # steps closed, rows not derived yet
        self._feature_rows: list[dict[str, Any]] = []
        self._final_rows: list[dict[str, Any]] = []

    # --- coverage ---------------------------------------------------------------------------

    def mark_uncovered(self, start_ms: int, end_ms: int, sources: Iterable[str] = SOURCES) -> None:
        """``[start_ms, end_ms)`` was not listened to (a disconnect not filled): rows whose
        buckets or windows touch it are not complete, and no state is carried across it. Must
        be told before the steps it touches close; closed rows do not change."""
        for s in sources:
            self._covered[s] = subtract(self._covered[s], start_ms, end_ms)
            self._cover[s] = CoverageIndex(self._covered[s])

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
        else:
            self._diff_times.append(E)
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
        while self.closed_ts + self.step <= watermark_ms:
            self._close_step()
            self._closed.append(self._j)
            if len(self._closed) >= _BATCH:
                self._flush()

    def _flush(self) -> None:
        """Derive the rows of the steps closed since the last flush. Closing a step is cheap;
        deriving is done for many steps at once (a replay closes one step per record)."""
        if not self._closed:
            return
        if self.emit_feature_rows:
            self._rows(self._closed, self.closed_ts, labels=False, out=self._feature_rows)
        self._closed = []
        self._emit(final_until=self._j - self._lead, known_until=self.closed_ts)

    @property
    def feature_rows(self) -> list[dict[str, Any]]:
        """Feature rows emitted so far (labels null, ``complete`` false)."""
        self._flush()
        return self._feature_rows

    @property
    def final_rows(self) -> list[dict[str, Any]]:
        """Final rows emitted so far (labels and ``complete`` filled)."""
        self._flush()
        return self._final_rows

    def finish(self, end_ms: int) -> None:
        """End of data at ``end_ms``: close the remaining steps and emit every pending final
        row, with labels null where their horizon passes ``end_ms``."""
        self.advance_to(end_ms)
        self._flush()
        self._emit(final_until=self._j, known_until=self.closed_ts)

    def drain(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``(feature_rows, final_rows)`` emitted since the last call."""
        self._flush()
        out = (self._feature_rows, self._final_rows)
        self._feature_rows, self._final_rows = [], []
        return out

    def _close_step(self) -> None:
        j = self._j + 1
        ts = self.closed_ts + self.step
        # trades of [ts - step, ts), in (event_ts, trade_id) order; sizes as exact limbs
        count = notional = 0.0
        buy_w = buy_f = sell_w = sell_f = 0
        bucket = self._buckets.pop(j, None)
        if bucket:
            bucket.sort()
            for _, tid, px, q, ibm in bucket:
                count += 1.0
                notional += px * q
                w, f = qty_limbs_one(q)
                if ibm:
                    sell_w += w
                    sell_f += f
                else:
                    buy_w += w
                    buy_f += f
                self._open_ids.discard(tid)
            self._p = bucket[-1][2]
            self._p_t = bucket[-1][0]
        gap = self._cover[TRADE_SOURCE].gap_end_at(ts)
        p = self._p if self._p_t is not None and self._p_t >= gap else NAN
        seen = 0.0 if self._p_t is None else 1.0
        cov = 1.0 if gap <= ts - self.step else 0.0
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
        bba = self._bba
        if self._bba_key is None or self._bba_key[0] < self._cover[BBA_SOURCE].gap_end_at(ts):
            bba = _NAN4
        # book with every diff of E < ts applied, while no uncovered diff time lies since
        self.book.close(ts)
        sample = self.book.samples.pop(ts)
        before = [E for E in self._diff_times if E < ts]
        if before:
            newest = max(before)
            if self._book_t is None or newest > self._book_t:
                self._book_t = newest
            self._diff_times = [E for E in self._diff_times if E >= ts]
        depth_gap = self._cover[DEPTH_SOURCE].gap_end_at(ts)
        if sample is None or self._book_t is None or self._book_t < depth_gap:
            sample = (NAN,) * (2 * len(self.spec.depth_levels))
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
        kline = self._kline
        if self._kline_close < self._cover[KLINE_SOURCE].gap_end_at(ts):
            kline = _NAN6
        self._hist.append((count, notional, p, seen, cov, *bba, *sample, *kline))
        self._hist_ints.append((buy_w, buy_f, sell_w, sell_f))
        self._j = j
        self.closed_ts = ts

    def _emit(self, final_until: int, known_until: int) -> None:
        if final_until > self._finalized_j:
            js = list(range(self._finalized_j + 1, final_until + 1))
            for i in range(0, len(js), _BATCH):
                self._rows(js[i : i + _BATCH], known_until, labels=True, out=self._final_rows)
            self._finalized_j = final_until
        # keep what unfinished rows and future windows still need
        oldest_needed = min(self._finalized_j + 1, self._j) - self._lag
        while len(self._hist) > self._keep and self._base < oldest_needed:
            self._hist.popleft()
            self._hist_ints.popleft()
            self._base += 1

    def _block(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Primitives of steps ``first..last``; steps before the start or not closed yet are
        padding (NaN floats, zero ints), exactly as the offline form pads its grid."""
        floats, ints = [], []
        for j in range(first, last + 1):
            if 0 <= j - self._base and j <= self._j:
                floats.append(self._hist[j - self._base])
                ints.append(self._hist_ints[j - self._base])
            else:
                floats.append(self._nan_row)
                ints.append(_ZERO_INTS)
        return (
            np.array(floats, dtype=np.float64).reshape(len(floats), len(self._names)),
            np.array(ints, dtype=np.int64).reshape(len(ints), len(INT_PRIMS)),
        )

    def _rows(
        self, js: list[int], known_until: int, labels: bool, out: list[dict[str, Any]]
    ) -> None:
        spec = self.spec
        fa, ia = self._block(js[0] - self._lag, js[-1] + self._lead)
        floats = {n: fa[:, i] for i, n in enumerate(self._names)}
        ints = {n: ia[:, i] for i, n in enumerate(INT_PRIMS)}
        ts = np.array([self.known_from + j * self.step for j in js], dtype=np.int64)
        values = derive_block(spec, ts, floats, ints, self._lag, self.known_from, known_until)
        if not labels:
            # A feature row is emitted before its horizons have passed: labels not yet known.
            for c in spec.label_columns():
                values[c] = np.full(len(js), NAN)
            values["complete"] = np.zeros(len(js), np.bool_)
        names = spec.columns()
        columns = [[self.symbol] * len(js), ts.tolist(), *(values[c].tolist() for c in names[2:])]
        out.extend(dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True))


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
