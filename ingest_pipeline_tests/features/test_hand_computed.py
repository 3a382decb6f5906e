"""Every feature on a tiny fixture whose values are computed by hand below (SPEC §4).

Times are relative to h0 = 2024-01-01 01:00 UTC. Trades (t, id, price, qty, side):

    A  -400 s  10  100  0.25  sell       (previous hour: warm-up)
    B  -100 s  11  100  0.5   buy
    C    -5 s  12  100  1.0   buy        C and D tie on time: D (higher id) is the last price
    D    -5 s  13  101  2.0   sell
    E    +1 s  14  102  0.5   buy        exactly at row ts=+1 s: NOT in that row
    F  +1.5 s  16  104  1.5   sell       given before G; order by (time, id): E, G, F
    G  +1.5 s  15  103  1.0   buy
    X  h1+5 s  17  110  1.0   buy        (next hour: labels only)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ingest_pipeline.features import (
    DEFAULT_SPEC,
    OnlineFeatureEngine,
    SymbolInputs,
    hour_features,
    rows_to_frame,
)
from ingest_pipeline.timeutil import HOUR_MS

H0 = 1_704_070_800_000  # 2024-01-01 01:00 UTC
H1 = H0 + HOUR_MS
SYM = "BTCUSDT"
approx = pytest.approx


def trade(t: int, tid: int, px: float, qty: float, sell: bool) -> dict:
    return {
        "symbol": SYM, "event_ts": H0 + t, "ingest_ts": H0 + t, "trade_id": tid, "price": px,
        "qty": qty, "is_buyer_maker": sell, "source": "rest",
    }  # fmt: skip


def bba(t: int, u: int, bid: float, bsz: float, ask: float, asz: float) -> dict:
    return {
        "symbol": SYM, "event_ts": H0 + t, "ingest_ts": H0 + t, "bid_px": bid, "bid_sz": bsz,
        "ask_px": ask, "ask_sz": asz, "source": "sbe", "update_id": u,
    }  # fmt: skip


def diff(t: int, first: int, final: int, bids=(), asks=()) -> dict:
    return {
        "symbol": SYM, "event_ts": H0 + t, "ingest_ts": H0 + t, "bids": [list(b) for b in bids],
        "asks": [list(a) for a in asks], "source": "sbe", "first_update_id": first,
        "final_update_id": final,
    }  # fmt: skip


def snapshot(t: int, last: int, bids, asks) -> dict:
    return {
        "symbol": SYM, "timestamp": H0 + t, "ingest_ts": H0 + t, "last_update_id": last,
        "bids": [list(b) for b in bids], "asks": [list(a) for a in asks], "source": "rest",
    }  # fmt: skip


def kline(open_rel: int, o: float, h: float, lo: float, c: float, v: float, tb: float) -> dict:
    return {
        "open_time": H0 + open_rel, "close_time": H0 + open_rel + 59_999, "open_price": o,
        "high_price": h, "low_price": lo, "close_price": c, "volume": v, "quote_volume": v * c,
        "trade_count": 1, "taker_buy_base_volume": tb, "taker_buy_quote_volume": tb * c,
        "symbol": SYM, "interval": "1m", "ingest_ts": H0,
    }  # fmt: skip


SNAP1 = snapshot(
    1100, 1000,
    [("100.00", "1"), ("99.00", "1"), ("98.00", "1"), ("97.00", "1"), ("96.00", "1"),
     ("95.00", "5")],
    [("101.00", "2"), ("102.00", "2"), ("103.00", "2"), ("104.00", "2"), ("105.00", "2"),
     ("106.00", "2")],
)  # fmt: skip
SNAP2 = snapshot(7000, 1020, [("100.00", "1")], [("101.00", "1")])


def inputs() -> tuple[SymbolInputs, SymbolInputs, SymbolInputs]:
    previous = SymbolInputs(
        trades=[
            trade(-400_000, 10, 100.0, 0.25, True),
            trade(-100_000, 11, 100.0, 0.5, False),
            trade(-5_000, 12, 100.0, 1.0, False),
            trade(-5_000, 13, 101.0, 2.0, True),
        ],
        bba=[bba(-2000, 100, 100.0, 1.0, 100.5, 3.0)],
        klines=[kline(-60_000, 100.0, 102.0, 99.0, 101.0, 10.0, 4.0)],
    )
    current = SymbolInputs(
        trades=[
            trade(1_000, 14, 102.0, 0.5, False),
            trade(1_500, 16, 104.0, 1.5, True),
            trade(1_500, 15, 103.0, 1.0, False),
        ],
        # Q3 and Q3b share a receive time: the higher update id (Q3b) wins, whatever the order.
        bba=[
            bba(500, 101, 101.0, 2.0, 101.5, 6.0),
            bba(1000, 103, 102.0, 3.0, 102.5, 1.0),
            bba(1000, 102, 102.0, 1.0, 103.0, 1.0),
        ],
        depth_snapshots=[SNAP1, SNAP2],
        depth_deltas=[
            diff(100, 990, 995, bids=[("100.00", "7")]),  # u <= L: dropped
            diff(1200, 996, 1003, bids=[("100.00", "0")], asks=[("101.00", "4")]),  # bridge
            diff(2000, 1004, 1004, bids=[("99.50", "10")]),  # E == ts: not in row +2 s
            diff(5500, 1010, 1012, bids=[("90.00", "1")]),  # gap (expected U = 1005)
            diff(7100, 1013, 1020, asks=[("150.00", "1")]),  # u <= L2: dropped
            diff(7500, 1021, 1021, asks=[("101.00", "3")]),  # bridges SNAP2
        ],
        klines=[
            kline(0, 101.0, 105.0, 100.0, 104.0, 8.0, 6.0),
            kline(60_000, 104.0, 104.0, 104.0, 104.0, 0.0, 0.0),  # no trades: ratio null
        ],
    )
    nxt = SymbolInputs(
        trades=[trade(HOUR_MS + 5_000, 17, 110.0, 1.0, False)],
        bba=[bba(HOUR_MS + 30_000, 200, 108.0, 1.0, 110.0, 1.0)],
    )
    return previous, current, nxt


@pytest.fixture(scope="module")
def full() -> pd.DataFrame:
    previous, current, nxt = inputs()
    return hour_features(SYM, H0, current, previous, nxt).frame.set_index("ts")


@pytest.fixture(scope="module")
def alone() -> pd.DataFrame:
    """The same hour without its neighbours: no warm-up, no labels from the next hour."""
    _, current, _ = inputs()
    return hour_features(SYM, H0, current).frame.set_index("ts")


def at(frame: pd.DataFrame, rel_ms: int) -> pd.Series:
    return frame.loc[H0 + rel_ms]


def null(x: float) -> bool:
    return bool(np.isnan(x))


def test_grid_and_columns(full: pd.DataFrame) -> None:
    assert len(full) == 3600
    assert full.index[0] == H0 + 1000 and full.index[-1] == H1
    assert ["ts", *full.columns] == ["ts", "symbol", *DEFAULT_SPEC.columns()[2:]]
    values = full.drop(columns=["symbol", "complete"])
    assert all(dt == np.float64 for dt in values.dtypes)
    assert full["complete"].dtype == bool


def test_first_row_sees_only_the_past(full: pd.DataFrame) -> None:
    r = at(full, 1000)
    # bucket [h0, h0+1s) is empty: trade E at exactly h0+1s belongs to the next row
    assert (r.trade_count, r.volume, r.buy_volume, r.sell_volume) == (0.0, 0.0, 0.0, 0.0)
    assert null(r.vwap)
    # windows over C, D (and B for 300 s): warm-up from the previous hour
    assert r.signed_volume_10s == approx(-1.0) and r.trade_imbalance_10s == approx(-1 / 3)
    assert r.signed_volume_60s == approx(-1.0) and r.trade_imbalance_60s == approx(-1 / 3)
    assert r.signed_volume_300s == approx(-0.5) and r.trade_imbalance_300s == approx(-1 / 7)
    # p_ts = 101 (D wins the tie by id); p 10/60/300 s earlier = 100
    for w in ("10s", "60s", "300s"):
        assert r[f"ret_{w}"] == approx(math.log(1.01), rel=1e-12)
        assert r[f"rv_{w}"] == approx(math.log(1.01), rel=1e-12)  # one move, at h0-4s
    # BBA Q2 (Q3 at exactly +1 s is not seen)
    assert r.spread == approx(0.5) and r.mid == approx(101.25)
    assert r.spread_bps == approx(0.5 / 101.25 * 1e4, rel=1e-12)
    assert r.microprice == approx((101.0 * 6 + 101.5 * 2) / 8)
    assert r.obi_1 == approx(-0.5)
    # book: the bridge arrives at +1.2 s, so no synced book yet
    assert null(r.depth_imbalance_5) and null(r.depth_imbalance_10)
    # kline of the previous hour's last minute (close_time h0-1 < ts)
    assert r.kline_ret == approx(math.log(101 / 100), rel=1e-12)
    assert r.kline_range == approx(0.03) and r.kline_taker_buy_ratio == approx(0.4)
    # labels: p at +11 s and +61 s is 104
    assert r.fwd_ret_10s == approx(math.log(104 / 101), rel=1e-12)
    assert r.fwd_ret_60s == approx(math.log(104 / 101), rel=1e-12)
    assert r.fwd_mid_move_10s_bps == approx((102.25 - 101.25) / 101.25 * 1e4, rel=1e-12)
    assert not r.complete  # the book is missing


def test_second_row(full: pd.DataFrame) -> None:
    r = at(full, 2000)
    assert r.trade_count == 3.0 and r.volume == approx(3.0)
    assert r.vwap == approx((102 * 0.5 + 103 * 1.0 + 104 * 1.5) / 3.0, rel=1e-12)
    assert r.buy_volume == approx(1.5) and r.sell_volume == approx(1.5)
    assert r.signed_volume_10s == approx(-1.0) and r.trade_imbalance_10s == approx(-1 / 6)
    assert r.signed_volume_300s == approx(-0.5) and r.trade_imbalance_300s == approx(-1 / 13)
    # p_ts = 104: F (id 16) is after G (id 15) at the same time, whatever the input order
    assert r.ret_10s == approx(math.log(1.04), rel=1e-12)
    rv = math.sqrt(math.log(1.01) ** 2 + math.log(104 / 101) ** 2)
    assert r.rv_10s == approx(rv, rel=1e-12) and r.rv_300s == approx(rv, rel=1e-12)
    # BBA at +1 s: Q3b (update id 103) beats Q3 (102) at the same receive time
    assert r.mid == approx(102.25) and r.microprice == approx(409.5 / 4) and r.obi_1 == 0.5
    # book after the bridge (level 100.00 removed, ask 101.00 -> 4): bids 9 / 9, asks 12 / 14
    assert r.depth_imbalance_5 == approx(-3 / 21) and r.depth_imbalance_10 == approx(-5 / 23)
    assert r.fwd_ret_10s == 0.0 and r.fwd_mid_move_10s_bps == 0.0
    assert r.complete


def test_book_rows(full: pd.DataFrame) -> None:
    # +3 s: the diff at exactly +2 s is in (bid 99.50 x 10): bids 14 / 19, asks 12 / 14
    r = at(full, 3000)
    assert r.depth_imbalance_5 == approx(2 / 26) and r.depth_imbalance_10 == approx(5 / 33)
    assert at(full, 5000).depth_imbalance_5 == approx(2 / 26)
    # gap at +5.5 s: invalid (flagged incomplete) until SNAP2 is bridged at +7.5 s
    for rel in (6000, 7000):
        assert null(at(full, rel).depth_imbalance_5) and not at(full, rel).complete
    r = at(full, 8000)
    assert r.depth_imbalance_5 == -0.5 and r.depth_imbalance_10 == -0.5
    assert r.complete  # vwap is null (empty bucket) but that is a value, not missing input
    assert null(r.vwap) and r.trade_count == 0.0


def test_windows_roll_off(full: pd.DataFrame) -> None:
    r = at(full, 11_000)  # 10 s window [+1 s, +11 s): E, G, F: buy 1.5 = sell 1.5
    assert r.signed_volume_10s == 0.0 and r.trade_imbalance_10s == 0.0
    r = at(full, 12_000)  # window [+2 s, +12 s) is empty: 0, not null
    assert r.signed_volume_10s == 0.0 and r.trade_imbalance_10s == 0.0
    assert r.ret_10s == 0.0 and r.rv_10s == 0.0


def test_klines(full: pd.DataFrame) -> None:
    assert at(full, 59_000).kline_ret == approx(math.log(1.01), rel=1e-12)
    r = at(full, 60_000)  # K2 closed at h0+59.999 s
    assert r.kline_ret == approx(math.log(104 / 101), rel=1e-12)
    assert r.kline_range == approx(5 / 101) and r.kline_taker_buy_ratio == 0.75
    r = at(full, 120_000)  # K3: no volume
    assert r.kline_ret == 0.0 and r.kline_range == 0.0 and null(r.kline_taker_buy_ratio)
    assert r.complete


def test_labels_from_next_hour(full: pd.DataFrame) -> None:
    # X trades at h1+5 s: not seen by p(h1+5 s) (strict <), seen by p(h1+6 s)
    r = at(full, HOUR_MS - 5000)
    assert r.fwd_ret_10s == 0.0
    assert at(full, HOUR_MS - 4000).fwd_ret_10s == approx(math.log(110 / 104), rel=1e-12)
    r = at(full, HOUR_MS)
    assert r.fwd_ret_60s == approx(math.log(110 / 104), rel=1e-12)
    assert r.fwd_mid_move_10s_bps == 0.0  # Q5 at h1+30 s
    assert r.fwd_mid_move_60s_bps == approx((109 - 102.25) / 102.25 * 1e4, rel=1e-12)
    assert r.complete


def test_without_neighbours(alone: pd.DataFrame) -> None:
    r = at(alone, 1000)
    # no trade before ts: every trade column is null, never 0
    for c in DEFAULT_SPEC.trade_columns():
        assert null(r[c]), c
    assert r.mid == approx(101.25)  # Q2 is in the hour
    assert null(r.kline_ret)
    assert not r.complete
    r = at(alone, 2000)
    assert r.trade_count == 3.0 and r.volume == 3.0
    # the window reaches back before the known data: its sum is unknown, not a partial sum
    assert null(r.signed_volume_10s) and null(r.trade_imbalance_10s)
    assert null(r.ret_10s) and null(r.rv_10s)  # p 10 s earlier does not exist
    r = at(alone, 11_000)  # the first window inside the hour: [+1 s, +11 s)
    assert r.signed_volume_10s == 0.0 and r.trade_imbalance_10s == 0.0
    r = at(alone, 12_000)  # p(+2 s) = p(+12 s) = 104, and r(+2 s) is undefined (p(+1 s) null)
    assert r.ret_10s == 0.0 and r.rv_10s == 0.0
    r = at(alone, HOUR_MS - 10_000)
    assert r.fwd_ret_10s == 0.0 and null(r.fwd_ret_60s)  # horizon past the known data
    assert not r.complete
    assert null(at(alone, HOUR_MS).fwd_ret_10s)
    # complete only where the 300 s warm-up and the 60 s horizon fit inside the hour, and
    # p(ts - 300 s) exists (the first price is p(+2 s))
    ts = alone.index.to_numpy()
    inside = (ts - 300_000 >= H0 + 2000) & (ts + 60_000 <= H1)
    assert not alone["complete"].to_numpy()[~inside].any()
    assert alone["complete"].to_numpy()[inside].all()


def test_no_rows_without_input() -> None:
    previous, _, nxt = inputs()
    frame = hour_features(SYM, H0, SymbolInputs(), previous, nxt).frame
    assert frame.empty and list(frame.columns) == DEFAULT_SPEC.columns()


def test_online_matches_fixture(full: pd.DataFrame) -> None:
    """The online engine, fed the three hours in event order, gives the same hour rows."""
    previous, current, nxt = inputs()
    records = []
    for part in (previous, current, nxt):
        records += [("trade", r, r["event_ts"]) for r in part.trades]
        records += [("bba", r, r["event_ts"]) for r in part.bba]
        records += [("depth_delta", r, r["event_ts"]) for r in part.depth_deltas]
        records += [("depth_snapshot", r, r["timestamp"]) for r in part.depth_snapshots]
        records += [("klines_1m", r, r["close_time"]) for r in part.klines]
    records.sort(key=lambda t: t[2])
    engine = OnlineFeatureEngine(SYM, H0 - HOUR_MS)
    for data_type, rec, _ in records:
        engine.on_record(data_type, rec)
    engine.finish(H0 + 2 * HOUR_MS)
    features, final = engine.drain()
    online = rows_to_frame(final).set_index("ts").loc[H0 + 1000 : H1]
    pd.testing.assert_frame_equal(online, full, check_exact=True)
    # feature rows were emitted at close, before the labels were known
    early = rows_to_frame(features).set_index("ts").loc[H0 + 2000]
    assert early.depth_imbalance_5 == full.loc[H0 + 2000].depth_imbalance_5
    assert null(early.fwd_ret_10s) and not early.complete
    assert not engine.late
