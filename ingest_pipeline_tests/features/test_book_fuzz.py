"""Property tests of the book rebuild: whatever the delivery does (late snapshots, lost diffs,
re-delivered diffs), a synced book is exactly the exchange's book at its last update id, and
never crossed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ingest_pipeline.features.book import SYNCED, BookTracker, price_ticks

BID_PRICES = [f"{p}.00" for p in range(1, 41)]  # bids live below the asks: never crossed
ASK_PRICES = [f"{p}.00" for p in range(41, 81)]


@st.composite
def exchange_history(draw: Any) -> tuple[list[dict], dict[int, tuple[dict, dict]]]:
    """The exchange's diffs and its full book after each diff's final update id."""
    bids = {p: "1.0" for p in BID_PRICES[-5:]}
    asks = {p: "1.0" for p in ASK_PRICES[:5]}
    u = draw(st.integers(1, 10**6))
    books = {u: (dict(bids), dict(asks))}
    diffs = []
    for i in range(draw(st.integers(1, 40))):
        changes = draw(
            st.lists(
                st.tuples(
                    st.booleans(),
                    st.integers(0, 39),
                    st.sampled_from(["0", "0.5", "2.25", "3"]),
                ),
                min_size=1,
                max_size=6,
            )
        )
        b, a = [], []
        for is_bid, idx, size in changes:
            side, levels, out = (bids, BID_PRICES, b) if is_bid else (asks, ASK_PRICES, a)
            price = levels[idx]
            out.append([price, size])
            if size == "0":
                side.pop(price, None)
            else:
                side[price] = size
        first, u = u + 1, u + draw(st.integers(1, 4))
        diffs.append({"event_ts": 1_000 + i * 100, "first_update_id": first,
                      "final_update_id": u, "bids": b, "asks": a})  # fmt: skip
        books[u] = (dict(bids), dict(asks))
    return diffs, books


def as_ticks(side: dict[str, str]) -> dict[int, float]:
    return {price_ticks(p): float(q) for p, q in side.items()}


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(history=exchange_history(), data=st.data())
def test_synced_book_is_the_exchange_book_and_never_crossed(history: Any, data: Any) -> None:
    diffs, books = history
    # Delivery: each diff is lost, delivered once or twice; snapshots of the book at random
    # update ids arrive at random positions (possibly before the diffs that bridge them).
    events: list[tuple[str, dict]] = []
    for diff in diffs:
        copies = data.draw(st.sampled_from([0, 1, 1, 1, 2]))
        events += [("diff", diff)] * copies
    ids = sorted(books)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.sampled_from(ids))
        bids, asks = books[at]
        snap = {
            "last_update_id": at,
            "bids": [[p, bids[p]] for p in sorted(bids, key=float, reverse=True)],
            "asks": [[p, asks[p]] for p in sorted(asks, key=float)],
        }
        events.insert(data.draw(st.integers(0, len(events))), ("snapshot", snap))

    tracker = BookTracker(step_ms=100, first_ts=1_000)
    for kind, payload in events:
        if kind == "diff":
            tracker.on_diff(payload)
        else:
            tracker.on_snapshot(payload)
        if tracker.state == SYNCED:
            bids, asks = books[tracker.last_u]
            assert tracker.book.bids == as_ticks(bids)
            assert tracker.book.asks == as_ticks(asks)
            assert not tracker.book.crossed()
    event("synced at the end" if tracker.state == SYNCED else "not synced at the end")
