"""The synthetic market model on its own: counters, hours, prices, klines, books."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from ingest_pipeline.standins.simulator.basics import (
    BATCHES_PER_HOUR,
    HOUR_MS,
    default_universe,
    format_units,
)
from ingest_pipeline.standins.simulator.market import Market, SymbolModel

# 2024-01-01T00:00Z: an ordinary past hour, far from genesis.
H_2024 = (1_704_067_200_000 - 1_499_990_400_000) // HOUR_MS


@pytest.fixture(scope="module")
def market() -> Market:
    return Market(default_universe())


def _digest(model: SymbolModel, h: int) -> str:
    hd = model.hour(h)
    arrays = (hd.time, hd.price, hd.qty, hd.buyer_maker, hd.agg_first, hd.agg_last, hd.agg_qty)
    return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()


@pytest.mark.slow
def test_hour_is_identical_in_another_process(market: Market) -> None:
    code = (
        "from ingest_pipeline.standins.simulator import Market, default_universe\n"
        "from ingest_pipeline_tests.standins.simulator.test_market import _digest\n"
        f"print(_digest(Market(default_universe())['BTCUSDT'], {H_2024}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == _digest(market["BTCUSDT"], H_2024)


def test_hourly_counts_positive_and_in_range(market: Market) -> None:
    btc = market["BTCUSDT"]
    starts = np.array([btc.trade_id_start(h) for h in range(H_2024, H_2024 + 24 * 60)])
    counts = np.diff(starts)
    assert counts.min() >= 30_000 and counts.max() <= 100_000
    assert counts.mean() == pytest.approx(60_000, rel=0.05)
    aggs = np.diff([btc.agg_id_start(h) for h in range(H_2024, H_2024 + 24 * 60)])
    assert (aggs >= 1).all() and (aggs <= counts).all()


def test_hour_structure(market: Market) -> None:
    btc = market["BTCUSDT"]
    hd = btc.hour(H_2024)
    assert hd.first_trade_id == btc.trade_id_start(H_2024)
    assert hd.n_trades == btc.trade_id_start(H_2024 + 1) - btc.trade_id_start(H_2024)
    assert hd.n_aggs == btc.agg_id_start(H_2024 + 1) - btc.agg_id_start(H_2024)
    t0 = btc.hour_start(H_2024)
    assert hd.time[0] >= t0 and hd.time[-1] < t0 + HOUR_MS
    assert (np.diff(hd.time) >= 0).all()
    assert (hd.qty > 0).all() and (hd.price > 0).all()
    # aggTrades tile the trades: consecutive, non-empty, one price/time/side each.
    assert hd.agg_first[0] == 0 and hd.agg_last[-1] == hd.n_trades - 1
    assert (hd.agg_first[1:] == hd.agg_last[:-1] + 1).all()
    owner = np.repeat(np.arange(hd.n_aggs), hd.agg_last - hd.agg_first + 1)
    for arr in (hd.price, hd.time, hd.buyer_maker):
        assert (arr == arr[hd.agg_first][owner]).all()
    assert (np.add.reduceat(hd.qty, hd.agg_first) == hd.agg_qty).all()


def test_price_path_glues_hours(market: Market) -> None:
    btc = market["BTCUSDT"]
    for h in range(H_2024, H_2024 + 5):
        assert btc.path(h)[0][-1] == btc.path(h + 1)[0][0] == btc.anchor(h + 1)
    assert btc.path(H_2024)[0].size == BATCHES_PER_HOUR + 1


def test_some_milliseconds_hold_over_1000_trades(market: Market) -> None:
    btc = market["BTCUSDT"]
    busiest = [
        np.unique(btc.hour(h).time, return_counts=True)[1].max() for h in range(H_2024, H_2024 + 24)
    ]
    assert max(busiest) > 1000


def test_klines_aggregate_trades(market: Market) -> None:
    bnb = market["BNBUSDT"]
    now = bnb.hour_start(H_2024 + 10)
    t0 = bnb.hour_start(H_2024)
    hd = bnb.hour(H_2024)
    [k1h] = bnb.klines("1h", t0, t0, 10, now)
    assert (k1h.open, k1h.close) == (hd.price[0], hd.price[-1])
    assert (k1h.high, k1h.low) == (hd.price.max(), hd.price.min())
    assert k1h.count == hd.n_trades and k1h.volume == hd.qty.sum()
    assert k1h.quote_volume == int((hd.price * hd.qty).sum())
    buy = ~hd.buyer_maker
    assert k1h.taker_buy_volume == hd.qty[buy].sum()
    minutes = bnb.klines("1m", t0, t0 + HOUR_MS - 1, 1000, now)
    assert len(minutes) == 60 and sum(k.count for k in minutes) == k1h.count
    assert sum(k.quote_volume for k in minutes) == k1h.quote_volume
    [k2h] = bnb.klines("2h", t0, t0, 1, now)
    nxt = bnb.klines("1h", t0 + HOUR_MS, t0 + HOUR_MS, 1, now)[0]
    assert k2h.volume == k1h.volume + nxt.volume and k2h.close == nxt.close


def test_empty_seconds_repeat_previous_close(market: Market) -> None:
    xrp = market["XRPUSDT"]
    t0 = xrp.hour_start(H_2024)
    secs = xrp.klines("1s", t0, t0 + 999_999, 1000, t0 + 10 * HOUR_MS)
    empty = [i for i, k in enumerate(secs) if k.count == 0 and i > 0]
    assert empty, "a 6000 trades/hour symbol has quiet seconds"
    for i in empty:
        k = secs[i]
        assert k.open == k.high == k.low == k.close == secs[i - 1].close and k.volume == 0


def test_book_and_update_ids(market: Market) -> None:
    btc = market["BTCUSDT"]
    b0 = (btc.hour_start(H_2024) - btc.genesis_ms) // 100
    ids = [btc.update_id(b) for b in range(b0, b0 + 5000)]
    assert all(b > a for a, b in zip(ids, ids[1:], strict=False))
    for b in (b0, b0 + 1, b0 + 777):
        book = btc.book(b, 5000)
        assert book.bid_px.size == book.ask_px.size == 5000
        assert book.bid_px[0] < book.ask_px[0]
        assert (np.diff(book.bid_px) < 0).all() and (np.diff(book.ask_px) > 0).all()
        assert (book.bid_qty > 0).all() and (book.ask_qty > 0).all()
    # Between two consecutive batches only some level sizes change: a cheap diff stream.
    p = np.arange(btc.touch(b0)[1], btc.touch(b0)[1] + 5000)
    changed = (btc.level_qty(p, b0) != btc.level_qty(p, b0 + 1)).sum()
    assert 0 < changed < 500


def test_trades_touch_the_book(market: Market) -> None:
    btc = market["BTCUSDT"]
    hd = btc.hour(H_2024)
    batch = (hd.time - btc.genesis_ms) // 100
    bid, spread = btc.path(H_2024)
    j = batch - H_2024 * BATCHES_PER_HOUR
    first = hd.agg_first
    buy = ~hd.buyer_maker[first]
    at_touch = np.where(
        buy, hd.price[first] >= bid[j[first]] + spread[j[first]], hd.price[first] <= bid[j[first]]
    )
    assert at_touch.all()


def test_format_units() -> None:
    assert format_units(163479, 7) == "0.01634790"
    assert format_units(5, 0) == "5.00000000"
    assert format_units(123456789, 10) == "0.01234568"


def test_ids_and_times_before_and_after_genesis(market: Market) -> None:
    btc = market["BTCUSDT"]
    assert btc.trade_id_start(0) == 0 and btc.agg_id_start(0) == 0
    assert btc.recent_trades(10, btc.genesis_ms - 1).ids.size == 0
    first = btc.trades_from_id(0, 3, btc.genesis_ms + HOUR_MS)
    assert first.ids.tolist() == [0, 1, 2] and first.time[0] >= btc.genesis_ms


def test_depth_diffs_rebuild_the_book(market: Market) -> None:
    eth = market["ETHUSDT"]
    b0 = (eth.hour_start(H_2024) + HOUR_MS - 300 - eth.genesis_ms) // 100  # crosses an hour
    start = eth.book(b0)
    bids = dict(zip(start.bid_px.tolist(), start.bid_qty.tolist(), strict=True))
    asks = dict(zip(start.ask_px.tolist(), start.ask_qty.tolist(), strict=True))
    last = start.last_update_id
    for b in range(b0 + 1, b0 + 8):
        diff = eth.book_diff(b)
        assert diff.first_update_id == last + 1 and diff.final_update_id > last
        last = diff.final_update_id
        for book, px, qty in ((bids, diff.bid_px, diff.bid_qty), (asks, diff.ask_px, diff.ask_qty)):
            for p, q in zip(px.tolist(), qty.tolist(), strict=True):
                if q == 0:
                    book.pop(p, None)
                else:
                    book[p] = q
        want = eth.book(b)
        assert sorted(bids.items(), reverse=True) == list(
            zip(want.bid_px.tolist(), want.bid_qty.tolist(), strict=True)
        )
        assert sorted(asks.items()) == list(
            zip(want.ask_px.tolist(), want.ask_qty.tolist(), strict=True)
        )


def _sha(*arrays: np.ndarray) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


def _outputs(market: Market) -> dict[str, str]:
    """Digests of generated output: ordinary, quiet and burst hours, selections across an hour
    boundary, klines, a book and diffs across an hour and a tick-chunk boundary."""
    btc, eth, bnb, xrp = (market[s] for s in ("BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT"))
    out = {f"{m.spec.symbol} {h}": _digest(m, h) for m, h in
           ((btc, H_2024), (btc, H_2024 + 2), (eth, H_2024), (xrp, H_2024))}  # fmt: skip
    now = btc.hour_start(H_2024 + 1) + 1_800_000
    t = btc.trades_from_id(btc.trade_id_start(H_2024 + 1) - 700, 1000, now)
    out["trades_from_id"] = _sha(t.ids, t.time, t.price, t.qty, t.buyer_maker)
    t = btc.recent_trades(700, now)
    out["recent_trades"] = _sha(t.ids, t.time, t.price, t.qty, t.buyer_maker)
    for name, a in (
        ("aggs_from_id", btc.aggs_from_id(btc.agg_id_start(H_2024 + 1) - 400, 1000, now)),
        ("aggs_by_time", btc.aggs_by_time(now - HOUR_MS, now - 1_700_000, 1000, now)),
        ("recent_aggs", btc.recent_aggs(900, btc.hour_start(H_2024 + 1) + 500)),
    ):
        out[name] = _sha(a.ids, a.price, a.qty, a.first_id, a.last_id, a.time, a.buyer_maker)
    t0 = bnb.hour_start(H_2024)
    for interval, limit in (("1m", 60), ("2h", 2)):
        ks = bnb.klines(interval, t0, None, limit, t0 + 3 * HOUR_MS + 1)
        out[f"klines {interval}"] = _sha(np.array([list(vars(k).values()) for k in ks]))
    b0 = eth.batch_of(eth.hour_start(H_2024 + 1)) - 2  # 2 before the hour, 2 before a chunk
    book = eth.book(b0)
    out["book"] = _sha(np.array([book.last_update_id]), book.bid_px, book.bid_qty, book.ask_px,
                       book.ask_qty)  # fmt: skip
    diffs = [eth.book_diff(b) for b in range(b0, b0 + 4)]
    out["book_diff"] = _sha(*(np.array([d.first_update_id, d.final_update_id]) for d in diffs),
                            *(a for d in diffs for a in (d.bid_px, d.bid_qty, d.ask_px,
                                                         d.ask_qty)))  # fmt: skip
    return {name: digest[:16] for name, digest in out.items()}


# What the simulator generates is part of its contract: recorded benchmarks, the figures of the
# docs and tests elsewhere (bursts, pages through one millisecond) depend on these exact ids,
# prices, quantities and times. A change here is a change of the simulated market; a numpy
# release that changes its Generator algorithms would show up here too.
PINNED_OUTPUTS = {
    "BTCUSDT 56688": "31c8ae8a791ca988",
    "BTCUSDT 56690": "e23f4fd2437120fc",
    "ETHUSDT 56688": "a28af9fdb34b32f9",
    "XRPUSDT 56688": "7b1b8ef62feaa336",
    "aggs_by_time": "914a3c09584e6579",
    "aggs_from_id": "dec47955fb3ae6c0",
    "book": "934ec13b20e896da",
    "book_diff": "dbc6566e1ed5e5d2",
    "klines 1m": "4276e2fa2ac931d5",
    "klines 2h": "49b395b0332b1955",
    "recent_aggs": "40d7602ad1716701",
    "recent_trades": "55abcdda2c35b0f7",
    "trades_from_id": "925ea5d4f91163f3",
}


def test_generated_output_is_pinned(market: Market) -> None:
    assert max(np.unique(market["BTCUSDT"].hour(H_2024 + 2).time, return_counts=True)[1]) > 1000
    assert _outputs(market) == PINNED_OUTPUTS


def test_book_diff_equals_the_level_by_level_diff(market: Market) -> None:
    eth = market["ETHUSDT"]
    b0 = eth.batch_of(eth.hour_start(H_2024 + 1)) - 3  # crosses an hour and a tick chunk
    # in order, then out of order (the chunk rebuilds its sizes), then back in an older chunk
    for b in [*range(b0, b0 + 6), b0 + 9, b0 + 7, b0 - 50]:
        fast, full = eth.book_diff(b), eth._book_diff_full(b)
        assert (fast.first_update_id, fast.final_update_id) == (
            full.first_update_id,
            full.final_update_id,
        )
        for name in ("bid_px", "bid_qty", "ask_px", "ask_qty"):
            np.testing.assert_array_equal(getattr(fast, name), getattr(full, name), err_msg=name)
