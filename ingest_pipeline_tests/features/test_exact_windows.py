"""Window arithmetic is exact and does not depend on where a computation starts.

The online engine runs from the first record on and is never reset; offline silver computes
each hour from the start of the previous one. Over days, running sums in floating point drift
apart: these tests run both forms over a synthetic three-day stream (trades, BBA, book,
klines, a hole in coverage) and over the real ETHUSDT capture's trades repeated for 24 h, and
require every column to be bit-identical, and the quantity sums to equal the exact decimal
sums of the sizes Binance sent.
"""

from __future__ import annotations

import gzip
from fractions import Fraction

import numpy as np
import orjson
import pandas as pd
import pytest

from ingest_pipeline.features import (
    DEFAULT_SPEC,
    GridRange,
    OnlineFeatureEngine,
    SymbolInputs,
    compute_features,
    hour_features,
    rows_to_frame,
)
from ingest_pipeline.features.coverage import SOURCES
from ingest_pipeline.timeutil import HOUR_MS
from ingest_pipeline_tests.paths import CAPTURES

DAY_MS = 24 * HOUR_MS
D0 = 1_717_200_000_000  # 2024-06-01 00:00 UTC
SYM = "SYNUSDT"
QTY_UNIT = 10**8


def units(text: str) -> int:
    """A Binance decimal string as an exact integer count of 1e-8."""
    whole, _, frac = text.partition(".")
    return int(whole) * QTY_UNIT + int((frac + "0" * 8)[:8])


def assert_bit_identical(a: pd.DataFrame, b: pd.DataFrame, columns: list[str]) -> None:
    assert a["ts"].tolist() == b["ts"].tolist()
    for c in columns:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        if c == "complete":
            assert np.array_equal(x.astype(bool), y.astype(bool)), c
            continue
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        bad = np.flatnonzero(~same)
        assert len(bad) == 0, f"{c}: {len(bad)} rows differ, first at ts={a['ts'].iloc[bad[0]]}"


def run_online(feed, start: int, end: int, holes=()) -> pd.DataFrame:
    engine = OnlineFeatureEngine(feed[0][1]["symbol"], start, emit_feature_rows=False)
    for lo, hi in holes:
        engine.mark_uncovered(lo, hi)
    for data_type, rec in feed:
        engine.on_record(data_type, rec)
    engine.finish(end)
    assert not engine.late
    return rows_to_frame(engine.drain()[1])


# --------------------------------------------------------------------------------------------
# Synthetic: three days, every record type, one hole


def _qty_texts(rng: np.random.Generator, n: int) -> list[str]:
    """Sizes as Binance formats them, from 8 decimals down to whole lots (meme coins)."""
    decimals = rng.choice([8, 8, 5, 3, 2, 0], n).tolist()
    values = (rng.exponential(3.0, n) + 1e-8).tolist()
    lots = rng.integers(1, 3_000_000_000, n).tolist()  # window sums beyond 9e7 units
    return [
        f"{v:.{d}f}" if d else str(lot) for d, v, lot in zip(decimals, values, lots, strict=True)
    ]


def synthetic_days(days: int = 3, seed: int = 11):
    """``(feed, hole)``: records in arrival order and one span nothing was received in."""
    rng = np.random.default_rng(seed)
    start, end = D0, D0 + days * DAY_MS
    hole = (D0 + DAY_MS + 5 * HOUR_MS + 123_456, D0 + DAY_MS + 5 * HOUR_MS + 543_210)
    items: list[tuple[int, int, str, dict]] = []

    def add(at: int, data_type: str, rec: dict) -> None:
        when = rec.get("event_ts", rec.get("timestamp", rec.get("close_time")))
        if not (hole[0] <= at < hole[1] or hole[0] <= when < hole[1]):
            items.append((at, len(items), data_type, rec))

    # trades: ~0.5/s with bursts of ties; prices on a 0.01 grid
    n = int(0.5 * days * DAY_MS / 1000)
    times = np.sort(rng.integers(start, end, n))
    ties = rng.integers(0, n - 20, n // 500)
    for t in ties:
        times[t : t + 8] = times[t]
    price = np.round(30_000 * np.exp(np.cumsum(rng.normal(0, 3e-4, n))), 2)
    sells = (rng.random(n) < 0.5).tolist()
    delays = rng.integers(0, 400, n).tolist()
    prices = price.tolist()
    for i, (t, q) in enumerate(zip(times.tolist(), _qty_texts(rng, n), strict=True)):
        rec = {
            "symbol": SYM, "event_ts": t, "ingest_ts": t, "trade_id": 10_000 + i,
            "price": prices[i], "qty": float(q), "is_buyer_maker": sells[i], "source": "sbe",
            "q_text": q,
        }  # fmt: skip
        add(t + delays[i], "trade", rec)
    # BBA every 5 s (event_ts is the receive time)
    bba_times = list(range(start + 77, end, 5000))
    sizes = np.round(rng.uniform(0.1, 3, (len(bba_times), 2)), 4).tolist()
    for u, t in enumerate(bba_times):
        mid = 30_000 + 40 * np.sin(t / 5e6)
        rec = {
            "symbol": SYM, "event_ts": t, "ingest_ts": t, "bid_px": round(mid - 0.05, 2),
            "bid_sz": sizes[u][0], "ask_px": round(mid + 0.05, 2), "ask_sz": sizes[u][1],
            "source": "sbe", "update_id": u,
        }  # fmt: skip
        add(t, "bba", rec)
    # depth: diffs every 4 s on a true book, a snapshot every hour, one lost diff a day
    bids = {300_000 - i: float(i + 1) for i in range(1, 30)}
    asks = {300_000 + i: float(i + 1) for i in range(1, 30)}
    uid = 7_000

    def px(ticks: int) -> str:
        return f"{ticks // 100}.{ticks % 100:02d}"

    diff_times = list(range(start + 1_050, end, 4000))
    draws = iter(rng.random((len(diff_times) * 3, 4)).tolist())
    for t in diff_times:
        if (t - start) % HOUR_MS < 4000:
            snap = {
                "symbol": SYM, "timestamp": t, "ingest_ts": t, "last_update_id": uid,
                "bids": [[px(p), repr(s)] for p, s in bids.items()],
                "asks": [[px(p), repr(s)] for p, s in asks.items()], "source": "rest",
            }  # fmt: skip
            add(t + 300, "depth_snapshot", snap)
        ub, ua = [], []
        for _ in range(1 + (t // 4000) % 3):
            a, b, c, d = next(draws)
            side, levels, sign = (ub, bids, -1) if a < 0.5 else (ua, asks, 1)
            p = 300_000 + sign * (1 + int(b * 34))
            size = 0.0 if c < 0.3 else round(0.1 + d * 4.9, 4)
            if size == 0.0:
                levels.pop(p, None)
            else:
                levels[p] = size
            side.append([px(p), repr(size)])
        first, uid = uid + 1, uid + 1 + (t // 4000) % 3
        rec = {
            "symbol": SYM, "event_ts": t, "ingest_ts": t, "bids": ub, "asks": ua,
            "source": "sbe", "first_update_id": first, "final_update_id": uid,
        }  # fmt: skip
        if (t - start) % DAY_MS == 15 * HOUR_MS + 1_050:
            continue  # lost on the wire: the book waits for the next snapshot
        add(t + 40, "depth_delta", rec)
    # klines every minute
    for o in range(start, end, 60_000):
        rec = {
            "open_time": o, "close_time": o + 59_999, "open_price": 30_000.0,
            "high_price": 30_010.0 + (o % 7), "low_price": 29_990.0,
            "close_price": 30_001.0 + (o % 3), "volume": float(o % 5), "quote_volume": 0.0,
            "trade_count": 1, "taker_buy_base_volume": float(o % 3),
            "taker_buy_quote_volume": 0.0, "symbol": SYM, "interval": "1m", "ingest_ts": o,
        }  # fmt: skip
        add(o + 60_000 + 200, "klines_1m", rec)
    items.sort(key=lambda a: (a[0], a[1]))
    return [(dt, rec) for _, _, dt, rec in items], hole


def _inputs(feed, lo: int, hi: int) -> SymbolInputs:
    field = {"depth_snapshot": "timestamp", "klines_1m": "close_time"}
    picked: dict[str, list] = {t: [] for t in ("trade", "bba", "depth_snapshot", "depth_delta")}
    picked["klines_1m"] = []
    for dt, rec in feed:
        if lo <= rec[field.get(dt, "event_ts")] < hi:
            picked[dt].append(rec)
    return SymbolInputs(
        picked["trade"], picked["bba"], picked["depth_snapshot"], picked["depth_delta"],
        picked["klines_1m"],
    )  # fmt: skip


def _hour_coverage(hour: int, hole: tuple[int, int]) -> dict[str, list[tuple[int, int]]]:
    spans = [(hour, min(max(hole[0], hour), hour + HOUR_MS)), (max(hole[1], hour), hour + HOUR_MS)]
    return {s: [(a, b) for a, b in spans if a < b] for s in SOURCES}


@pytest.fixture(scope="module")
def three_days():
    feed, hole = synthetic_days()
    online = run_online(feed, D0, D0 + 3 * DAY_MS, holes=[hole])
    return feed, hole, online


@pytest.mark.slow
def test_three_days_online_equals_offline_over_the_whole_range(three_days) -> None:
    feed, hole, online = three_days
    rng = GridRange(D0, D0 + 3 * DAY_MS, D0, D0 + 3 * DAY_MS)
    coverage = {s: [(D0, hole[0]), (hole[1], D0 + 3 * DAY_MS)] for s in SOURCES}
    offline = compute_features(SYM, _inputs(feed, D0, D0 + 3 * DAY_MS), rng, coverage=coverage)
    assert len(offline.frame) == len(online) == 3 * 86_400
    assert_bit_identical(offline.frame, online, DEFAULT_SPEC.columns()[2:])
    frame = offline.frame
    # the fixture exercises what it should: books resync, the hole blanks its rows
    # a lost diff a day and the hole: four gaps, each bridged again by a later snapshot
    assert offline.book.gaps == 4 and offline.book.snapshots_used == 5
    in_hole = (frame["ts"] > hole[0]) & (frame["ts"] <= hole[1])
    assert not frame.loc[in_hole, "complete"].any()
    for c in ("trade_count", "volume", "mid", "depth_imbalance_5", "ret_10s", "kline_ret"):
        assert frame.loc[in_hole, c].isna().all(), c  # nothing carried across the hole
    after = frame[frame["ts"] > hole[1] + 400_000]
    assert after["complete"].sum() > 80_000


@pytest.mark.slow
def test_three_days_online_equals_silver_hours_started_anywhere(three_days) -> None:
    """Silver's hours start at the previous hour; the engine started three days earlier."""
    feed, hole, online = three_days
    for hour in [D0 + HOUR_MS * h for h in (1, 17, 29, 53, 71)]:
        prev, cur = hour - HOUR_MS, hour
        nxt = hour + HOUR_MS if hour + HOUR_MS < D0 + 3 * DAY_MS else None

        def hour_inputs(h: int) -> SymbolInputs:
            inp = _inputs(feed, h, h + HOUR_MS)
            inp.coverage = _hour_coverage(h, hole)
            return inp

        frame = hour_features(
            SYM, hour, hour_inputs(cur), hour_inputs(prev), hour_inputs(nxt) if nxt else None
        ).frame
        rows = online[(online["ts"] > hour) & (online["ts"] <= hour + HOUR_MS)]
        rows = rows.reset_index(drop=True)
        columns = DEFAULT_SPEC.columns()[2:]
        if nxt is None:
            columns = [c for c in columns if not c.startswith("fwd_") and c != "complete"]
        assert_bit_identical(frame, rows, columns)


@pytest.mark.slow
def test_three_days_quantity_sums_are_the_exact_decimal_sums(three_days) -> None:
    feed, hole, online = three_days
    trades = [rec for dt, rec in feed if dt == "trade"]
    t = np.array([r["event_ts"] for r in trades], np.int64)
    u = np.array([units(r["q_text"]) for r in trades], dtype=object)
    sign = np.where([r["is_buyer_maker"] for r in trades], -1, 1)
    frame = online.set_index("ts")
    checked = 0
    for ts in frame.index[::997]:
        row = frame.loc[ts]
        for w in (10_000, 300_000):
            value = row[f"signed_volume_{w // 1000}s"]
            if np.isnan(value):
                continue
            inside = (t >= ts - w) & (t < ts)
            exact = Fraction(int(np.sum(u[inside] * sign[inside])), QTY_UNIT)
            if abs(exact) < 9 * 10**7:
                assert value == float(exact), (ts, w)  # the nearest float, bit for bit
            else:
                assert value == pytest.approx(float(exact), rel=2.3e-16, abs=0), (ts, w)
            checked += 1
    assert checked > 300


# --------------------------------------------------------------------------------------------
# The real capture's trades, repeated for 24 h


def capture_trades(symbol: str) -> list[dict]:
    out = []
    for day in ("20240808", "20240809"):
        with gzip.open(CAPTURES / f"{symbol.lower()}_{day}.gz", "rb") as fh:
            for line in fh:
                if b"@trade" not in line[:80]:
                    continue
                d = orjson.loads(line.partition(b" ")[2])["data"]
                out.append(d)
    return out


@pytest.fixture(scope="module")
def eth_day():
    """ETHUSDT's 11 minutes of trades laid end to end over a day: ids and times shifted."""
    raw = capture_trades("ETHUSDT")
    t0 = raw[0]["T"]
    period = 660_000
    id_span = raw[-1]["t"] - raw[0]["t"] + 1
    copies = DAY_MS // period + 1
    T = np.array([d["T"] for d in raw], np.int64) - t0
    tid = np.array([d["t"] for d in raw], np.int64) - raw[0]["t"]
    k = np.repeat(np.arange(copies), len(raw))
    cols = {
        "event_ts": D0 + np.tile(T, copies) + k * period,
        "trade_id": np.tile(tid, copies) + k * id_span,
        "price": np.tile(np.array([float(d["p"]) for d in raw]), copies),
        "qty": np.tile(np.array([float(d["q"]) for d in raw]), copies),
        "is_buyer_maker": np.tile(np.array([d["m"] for d in raw]), copies),
        "units": np.tile(np.array([units(d["q"]) for d in raw], np.int64), copies),
    }
    keep = cols["event_ts"] < D0 + DAY_MS
    return {c: v[keep] for c, v in cols.items()}


@pytest.mark.slow
def test_capture_repeated_for_a_day_online_equals_offline_and_the_exact_sums(eth_day) -> None:
    c = eth_day
    n = len(c["event_ts"])
    assert n > 1_800_000
    engine = OnlineFeatureEngine("ETHUSDT", D0, emit_feature_rows=False)
    et, ti, px, q, m = (c[f].tolist() for f in ("event_ts", "trade_id", "price", "qty",
                                                "is_buyer_maker"))  # fmt: skip
    for i in range(n):
        engine.on_trade({"event_ts": et[i], "trade_id": ti[i], "price": px[i], "qty": q[i],
                         "is_buyer_maker": m[i]})  # fmt: skip
    engine.finish(D0 + DAY_MS)
    online = rows_to_frame(engine.drain()[1])
    columns = DEFAULT_SPEC.trade_columns() + DEFAULT_SPEC.trade_label_columns()

    whole_day = compute_features(
        "ETHUSDT", SymbolInputs(trades=c), GridRange(D0, D0 + DAY_MS, D0, D0 + DAY_MS)
    ).frame
    assert_bit_identical(whole_day, online, columns)
    # the last hour as silver computes it: from the previous hour's start
    last = D0 + 23 * HOUR_MS
    window = GridRange(last, last + HOUR_MS, last - HOUR_MS, last + HOUR_MS)
    silver = compute_features("ETHUSDT", SymbolInputs(trades=c), window).frame
    assert_bit_identical(silver, online[online["ts"] > last].reset_index(drop=True), columns)

    # every window sum is the float nearest to the exact decimal sum
    ts = online["ts"].to_numpy()
    j = (c["event_ts"] - D0) // 1000 + 1
    signed = np.where(c["is_buyer_maker"], -c["units"], c["units"])
    bucket = np.bincount(j, weights=signed.astype(np.float64), minlength=len(ts) + 1)
    running = np.concatenate(([0], np.cumsum(bucket.astype(np.int64))))
    for w in (10, 60, 300):
        idx = np.arange(1, len(ts) + 1)
        exact = running[idx + 1] - running[np.maximum(idx + 1 - w, 0)]
        got = online[f"signed_volume_{w}s"].to_numpy()
        ok = ~np.isnan(got)
        assert ok.sum() > len(ts) - 400
        want = exact[ok].astype(np.float64) / QTY_UNIT  # |units| < 2**53: one rounding
        assert np.array_equal(got[ok], want), w
    sample = online.iloc[50_000]
    inside = (c["event_ts"] >= sample["ts"] - 10_000) & (c["event_ts"] < sample["ts"])
    exact = Fraction(int(signed[inside].sum()), QTY_UNIT)
    assert sample["signed_volume_10s"] == float(exact)
