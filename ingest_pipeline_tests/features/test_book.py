"""Order book rebuild (SPEC §4) on the real captures, plus unit cases."""

from __future__ import annotations

import pytest

from ingest_pipeline.features.book import (
    PRICE_SCALE,
    SYNCED,
    UNSYNCED,
    BookTracker,
    OrderBook,
    price_ticks,
)
from ingest_pipeline_tests.features.capture import capture_records, cryptofeed_records

STEP = 1000
# (dropped diffs, bridge (L, U, u)) observed in the capture; ETH bridges with U == L + 1.
EXPECTED = {
    "BTCUSDT": (2, (50093239218, 50093239208, 50093239224)),
    "ETHUSDT": (2, (35346513512, 35346513513, 35346513514)),
}


def _first_grid(records) -> int:
    first = min(r["event_ts"] for dt, r in records if dt == "depth_delta")
    return first - first % STEP


def _replay(records, tracker: BookTracker, check_crossed: bool = True) -> None:
    for dt, rec in records:
        if dt == "depth_delta":
            tracker.on_diff(rec)
            if check_crossed and tracker.state == SYNCED:
                assert not tracker.book.crossed(), rec["final_update_id"]
        elif dt == "depth_snapshot":
            tracker.on_snapshot(rec)


def _levels(book: OrderBook) -> tuple[dict[int, float], dict[int, float]]:
    return dict(book.bids), dict(book.asks)


def _as_text(px: int) -> str:
    return f"{px // PRICE_SCALE}.{px % PRICE_SCALE:08d}"


def test_price_ticks_exact() -> None:
    assert price_ticks("61837.63000000") == 6_183_763_000_000
    assert price_ticks("0.00000637") == 637
    assert price_ticks("6.251") == 625_100_000
    assert price_ticks("100") == 100 * PRICE_SCALE
    with pytest.raises(ValueError):
        price_ticks("1.000000001")


def test_top_sums_and_removal() -> None:
    book = OrderBook.from_levels([("10.0", "1"), ("9.0", "2")], [("11.0", "3")])
    book.apply([("10.0", "0"), ("9.5", "4")], [("12.0", "1"), ("13.0", "0")])
    assert book.best_bid() == price_ticks("9.5") and len(book) == 4
    assert book.top_sums((1, 5)) == (4.0, 3.0, 6.0, 4.0)
    assert not book.crossed()


@pytest.mark.slow
@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT"])
def test_capture_rebuild(symbol: str) -> None:
    records = capture_records(symbol)
    tracker = BookTracker(STEP, _first_grid(records))
    _replay(records, tracker)
    dropped, bridge = EXPECTED[symbol]
    stats = tracker.stats
    assert tracker.state == SYNCED
    assert stats.diffs_dropped == dropped
    assert stats.bridges == [bridge]
    L, U, u = bridge
    assert U <= L + 1 <= u
    n_diffs = sum(dt == "depth_delta" for dt, _ in records)
    assert stats.diffs_applied == n_diffs - dropped
    assert stats.gaps == 0 and tracker.crossed_samples == 0
    # BTCUSDT's bridging diff arrives before the snapshot line (it must be buffered, not
    # lost); ETHUSDT's arrives just after it, with U == L + 1 exactly.
    order = [(dt, r.get("final_update_id")) for dt, r in records if dt != "trade" and dt != "bba"]
    snap_at = next(i for i, (dt, _) in enumerate(order) if dt == "depth_snapshot")
    assert (("depth_delta", u) in order[:snap_at]) == (symbol == "BTCUSDT")
    assert (U == L + 1) == (symbol == "ETHUSDT")


@pytest.mark.slow
@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT"])
def test_capture_gap_and_resync(symbol: str) -> None:
    """Drop one diff mid-session: the gap is detected, rows go null, and a later snapshot
    (built from a clean replay) re-syncs the book to exactly the clean book."""
    records = [r for r in capture_records(symbol) if r[0] in ("depth_delta", "depth_snapshot")]
    diff_pos = [i for i, (dt, _) in enumerate(records) if dt == "depth_delta"]
    lost = diff_pos[3000]
    resync = diff_pos[3050]  # the snapshot is taken after this diff
    clean = BookTracker(STEP, _first_grid(records))
    _replay(records[: resync + 1], clean)
    bids, asks = _levels(clean.book)
    snap_diff = records[resync][1]
    snapshot = {
        "symbol": symbol,
        "timestamp": snap_diff["event_ts"],
        "ingest_ts": snap_diff["event_ts"],
        "last_update_id": snap_diff["final_update_id"],
        "bids": [[_as_text(p), repr(s)] for p, s in bids.items()],
        "asks": [[_as_text(p), repr(s)] for p, s in asks.items()],
        "source": "rest",
    }
    _replay(records[resync + 1 :], clean)

    gapped = BookTracker(STEP, _first_grid(records))
    # the stream loses one diff; the snapshot arrives a few diffs after it was taken
    replay = records[:lost] + records[lost + 1 : resync + 4]
    replay += [("depth_snapshot", snapshot)] + records[resync + 4 :]
    for i, (dt, rec) in enumerate(replay):
        if dt == "depth_delta":
            gapped.on_diff(rec)
        else:
            gapped.on_snapshot(rec)
        if i == lost:  # the first diff after the lost one reveals the gap
            assert gapped.state == UNSYNCED
    stats = gapped.stats
    gap_E = records[lost + 1][1]["event_ts"]
    assert stats.gaps == 1 and stats.gap_times == [gap_E]
    assert stats.snapshots_used == 2
    bridge_diff = records[resync + 1][1]
    assert stats.bridges[-1] == (
        snap_diff["final_update_id"],
        bridge_diff["first_update_id"],
        bridge_diff["final_update_id"],
    )
    # dropped: the capture's first sync, then every diff buffered after the gap up to the
    # one the new snapshot already contains (diffs 3001..3050)
    assert stats.diffs_dropped == EXPECTED[symbol][0] + 50
    assert gapped.state == SYNCED
    assert _levels(gapped.book) == _levels(clean.book)
    # samples between the gap and the re-sync bridge are null, valid before and after
    gapped.close(records[-1][1]["event_ts"])
    for ts, value in gapped.samples.items():
        if gap_E < ts <= bridge_diff["event_ts"]:
            assert value is None, ts
        elif ts > bridge_diff["event_ts"] + STEP:
            assert value is not None
    assert any(v is None for ts, v in gapped.samples.items() if ts > gap_E)


def test_streamer_gap_marker_forces_resync() -> None:
    snap = {"last_update_id": 10, "bids": [["1.0", "1"]], "asks": [["2.0", "1"]]}
    t = BookTracker(STEP, 0)
    t.on_snapshot(snap)
    d = {"event_ts": 100, "first_update_id": 11, "final_update_id": 11, "bids": [], "asks": []}
    t.on_diff(d)
    assert t.state == SYNCED
    t.on_diff({**d, "event_ts": 200})  # re-delivered: ignored, not a gap
    assert t.state == SYNCED and t.stats.duplicates == 1
    t.on_diff({**d, "event_ts": 300, "first_update_id": 12, "final_update_id": 12, "gap": True})
    assert t.state == UNSYNCED and t.stats.gaps == 1


def test_stale_snapshot_is_discarded() -> None:
    t = BookTracker(STEP, 0)
    t.on_diff(
        {"event_ts": 100, "first_update_id": 50, "final_update_id": 55, "bids": [], "asks": []}
    )
    t.on_snapshot({"last_update_id": 10, "bids": [], "asks": []})  # older than the buffer
    assert t.state == UNSYNCED and t.stats.snapshots_stale == 1
    t.on_snapshot({"last_update_id": 52, "bids": [["1.0", "1"]], "asks": []})
    assert t.state == SYNCED and t.stats.bridges == [(52, 50, 55)]


def test_cryptofeed_four_symbols() -> None:
    """Four symbols interleaved on one connection, snapshots from the REST log."""
    records = cryptofeed_records()
    first = min(r["event_ts"] for dt, r in records if dt == "depth_delta")
    trackers: dict[str, BookTracker] = {}
    for dt, rec in records:
        if dt in ("depth_delta", "depth_snapshot"):
            t = trackers.setdefault(rec["symbol"], BookTracker(STEP, first - first % STEP))
            _replay([(dt, rec)], t)
    expected = {
        "NKNUSDT": (1, (499869752, 499869753, 499869754), 149),
        "BLZETH": (1, (281916627, 281916628, 281916628), 9),
        "LRCBTC": (2, (259345543, 259345544, 259345545), 13),
        "RUNEEUR": (1, (15602511, 15602512, 15602513), 1),
    }
    assert set(trackers) == set(expected)
    for symbol, (dropped, bridge, applied) in expected.items():
        t = trackers[symbol]
        assert t.state == SYNCED, symbol
        assert t.stats.diffs_dropped == dropped
        assert t.stats.bridges == [bridge]
        assert t.stats.diffs_applied == applied
        assert t.book.best_bid() < t.book.best_ask()
