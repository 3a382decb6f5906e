"""Offline and online forms on the same records: same rows, nulls in the same places, values
within 1e-9 relative / 1e-12 absolute (SPEC §4) - and, by construction, bit-identical."""

from __future__ import annotations

import numpy as np
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
from ingest_pipeline.timeutil import HOUR_MS
from ingest_pipeline_tests.features.capture import capture_records

H0 = 1_717_200_000_000  # 2024-06-01 00:00 UTC
SYM = "SYNUSDT"


def assert_parity(offline: pd.DataFrame, online: pd.DataFrame) -> bool:
    """Tolerance check per column; returns whether every value is bit-identical."""
    assert list(offline.columns) == list(online.columns)
    assert offline["ts"].tolist() == online["ts"].tolist()
    assert (offline["symbol"] == online["symbol"]).all()
    identical = True
    for col in offline.columns[2:]:
        a, b = offline[col].to_numpy(), online[col].to_numpy()
        if col == "complete":
            assert (a == b).all(), col
            continue
        na, nb = np.isnan(a), np.isnan(b)
        assert (na == nb).all(), f"{col}: nulls differ at {np.flatnonzero(na != nb)[:5]}"
        np.testing.assert_allclose(a[~na], b[~na], rtol=1e-9, atol=1e-12, err_msg=col)
        identical &= bool(np.array_equal(a[~na], b[~na]))
    return identical


def run_online(records, start: int, end: int, lateness: int = 3000) -> OnlineFeatureEngine:
    engine = OnlineFeatureEngine(records[0][1]["symbol"], start, allowed_lateness_ms=lateness)
    for data_type, rec in records:
        engine.on_record(data_type, rec)
    engine.finish(end)
    return engine


# --------------------------------------------------------------------------------------------
# Synthetic three hours


def _px(ticks: int) -> str:
    return f"{ticks // 100}.{ticks % 100:02d}000000"


def synthetic(seed: int = 7):
    """Three hours (previous, current, next) of one symbol, and their arrival order."""
    rng = np.random.default_rng(seed)
    start, end = H0 - HOUR_MS, H0 + 2 * HOUR_MS
    arrivals: list[tuple[int, int, str, dict]] = []
    seq = 0

    def arrive(at: int, data_type: str, rec: dict) -> None:
        nonlocal seq
        arrivals.append((at, seq, data_type, rec))
        seq += 1

    # trades: ~2000 per hour, with bursts (ties on time) and some silence
    n = 6000
    times = np.sort(rng.integers(start, end, n))
    times[100:110] = times[100]  # a tie of ten trades
    times = times[(times < H0 + 600_000) | (times > H0 + 900_000)]  # 5 min without trades
    price = 30_000.0
    ids = np.arange(1_000, 1_000 + len(times))
    for t, tid in zip(times.tolist(), ids.tolist(), strict=True):
        price = round(price * float(np.exp(rng.normal(0, 2e-4))), 2)
        rec = {
            "symbol": SYM, "event_ts": t, "ingest_ts": t, "trade_id": tid, "price": price,
            "qty": round(float(rng.exponential(0.05)) + 1e-5, 5),
            "is_buyer_maker": bool(rng.random() < 0.5), "source": "rest",
        }  # fmt: skip
        arrive(t + int(rng.integers(0, 800)), "trade", rec)
    # BBA every ~2 s (event_ts is the receive time)
    u = 0
    for t in range(start + 137, end, 2000):
        u += 1
        mid = 30_000 + 50 * np.sin(t / 3e6)
        rec = {
            "symbol": SYM, "event_ts": t, "ingest_ts": t, "bid_px": round(mid - 0.05, 2),
            "bid_sz": float(rng.uniform(0.1, 3)), "ask_px": round(mid + 0.05, 2),
            "ask_sz": float(rng.uniform(0.1, 3)), "source": "sbe", "update_id": u,
        }  # fmt: skip
        arrive(t, "bba", rec)
    # depth: snapshot, diffs every 500 ms, one lost diff and a later re-sync snapshot
    book_bids = {300_000 - i: float(i + 1) for i in range(1, 40)}
    book_asks = {300_000 + i: float(i + 1) for i in range(1, 40)}
    uid = 5_000

    def snap(t: int) -> dict:
        return {
            "symbol": SYM, "timestamp": t, "ingest_ts": t, "last_update_id": uid,
            "bids": [[_px(p), repr(s)] for p, s in book_bids.items()],
            "asks": [[_px(p), repr(s)] for p, s in book_asks.items()],
            "source": "rest",
        }  # fmt: skip

    arrive(start + 2_000 + 300, "depth_snapshot", snap(start + 2_000))
    lost_at, resnap_at = H0 + 1_200_050, H0 + 1_260_050
    for t in range(start + 1_050, end, 500):
        updates_b, updates_a = [], []
        for _ in range(int(rng.integers(1, 6))):
            side, levels, base, sign = (
                (updates_b, book_bids, 300_000, -1)
                if rng.random() < 0.5
                else (updates_a, book_asks, 300_000, 1)
            )
            p = base + sign * int(rng.integers(1, 45))
            size = 0.0 if rng.random() < 0.3 else round(float(rng.uniform(0.1, 5)), 4)
            if size == 0.0:
                levels.pop(p, None)
            else:
                levels[p] = size
            side.append([_px(p), repr(size)])
        first, uid = uid + 1, uid + int(rng.integers(1, 4))
        rec = {
            "symbol": SYM, "event_ts": t, "ingest_ts": t, "bids": updates_b, "asks": updates_a,
            "source": "sbe", "first_update_id": first, "final_update_id": uid,
        }  # fmt: skip
        if t == lost_at:
            continue  # lost on the wire
        arrive(t + 40, "depth_delta", rec)
        if t == resnap_at:
            arrive(t + 400, "depth_snapshot", snap(t))
    # klines every minute
    for o in range(start, end, 60_000):
        rec = {
            "open_time": o, "close_time": o + 59_999, "open_price": 30_000.0,
            "high_price": 30_010.0 + (o % 7), "low_price": 29_990.0,
            "close_price": 30_001.0 + (o % 3),
            "volume": float(o % 5), "quote_volume": 0.0, "trade_count": 1,
            "taker_buy_base_volume": float(o % 3), "taker_buy_quote_volume": 0.0,
            "symbol": SYM, "interval": "1m", "ingest_ts": o,
        }  # fmt: skip
        arrive(o + 60_000 + 200, "klines_1m", rec)
    arrivals.sort(key=lambda a: (a[0], a[1]))
    return [(dt, rec) for _, _, dt, rec in arrivals]


def _hour_inputs(records, hour: int) -> SymbolInputs:
    def in_hour(dt: str, rec: dict) -> bool:
        field = {"depth_snapshot": "timestamp", "klines_1m": "open_time"}.get(dt, "event_ts")
        return hour <= rec[field] < hour + HOUR_MS

    pick = {
        "trade": [],
        "bba": [],
        "depth_snapshot": [],
        "depth_delta": [],
        "klines_1m": [],
    }
    for dt, rec in records:
        if in_hour(dt, rec):
            pick[dt].append(rec)
    return SymbolInputs(
        pick["trade"], pick["bba"], pick["depth_snapshot"], pick["depth_delta"], pick["klines_1m"]
    )


@pytest.fixture(scope="module")
def synthetic_records():
    return synthetic()


@pytest.mark.slow
def test_synthetic_hour_parity(synthetic_records) -> None:
    records = synthetic_records
    result = hour_features(
        SYM,
        H0,
        _hour_inputs(records, H0),
        _hour_inputs(records, H0 - HOUR_MS),
        _hour_inputs(records, H0 + HOUR_MS),
    )
    offline = result.frame
    assert len(offline) == 3600
    assert result.book.gaps == 1 and result.book.snapshots_used == 2
    engine = run_online(records, H0 - HOUR_MS, H0 + 2 * HOUR_MS)
    assert not engine.late
    assert engine.book.stats.gaps == 1 and engine.book.stats.snapshots_used == 2
    _, final = engine.drain()
    online = rows_to_frame(final)
    online = online[(online.ts > H0) & (online.ts <= H0 + HOUR_MS)].reset_index(drop=True)
    assert assert_parity(offline, online), "not bit-identical"
    # the fixture exercises what it should
    assert offline["depth_imbalance_5"].isna().sum() > 50  # gap until the re-sync
    assert offline["vwap"].isna().sum() > 300  # five silent minutes
    assert offline["complete"].sum() > 3000
    assert (offline["trade_count"].sum()) > 1500


def test_synthetic_late_records_are_counted(synthetic_records) -> None:
    """With too little allowed lateness trades arrive after their step closed: counted."""
    first_hour = [r for r in synthetic_records if r[1].get("event_ts", H0) < H0 - HOUR_MS / 2]
    engine = run_online(first_hour, H0 - HOUR_MS, H0 - HOUR_MS // 2, lateness=0)
    assert engine.late["trade"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT"])
def test_capture_parity(symbol: str) -> None:
    """The real session (crossing 00:00 UTC) through both forms, over both hours' grid."""
    records = capture_records(symbol)
    h00 = 1_723_161_600_000  # 2024-08-09 00:00 UTC
    rng = GridRange(h00 - HOUR_MS, h00 + 600_000, h00 - HOUR_MS, h00 + 600_000)
    by_type: dict[str, list] = {}
    for dt, rec in records:
        by_type.setdefault(dt, []).append(rec)
    inputs = SymbolInputs(
        by_type["trade"], by_type["bba"], by_type["depth_snapshot"], by_type["depth_delta"]
    )
    result = compute_features(symbol, inputs, rng)
    offline = result.frame
    engine = run_online(records, rng.known_from, rng.known_until)
    assert not engine.late
    online = rows_to_frame(engine.drain()[1])
    assert assert_parity(offline, online), "not bit-identical"
    assert result.stats["crossed_samples"] == 0
    live = offline[offline.ts > 1_723_161_256_000]  # after the bridge
    assert live["depth_imbalance_10"].notna().all()
    assert live["mid"].notna().all() and live["ret_60s"].notna().any()
    assert len(offline) == 4200 and list(offline.columns) == DEFAULT_SPEC.columns()
