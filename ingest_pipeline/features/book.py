"""Local order book rebuilt from a REST snapshot and ``depth@100ms`` diffs (SPEC §4).

Binance's documented procedure, per symbol:

1. buffer the diffs; take a snapshot with ``lastUpdateId = L``;
2. drop buffered and later diffs with ``u <= L``;
3. the first applied diff must satisfy ``U <= L + 1 <= u`` (the *bridge*); a first diff with
   ``U > L + 1`` means the snapshot is older than the buffer: it is discarded and the next
   snapshot is awaited;
4. then every diff must have ``U == previous u + 1``; a size of 0 removes the level;
5. on a gap (``U != previous u + 1``, or the streamer's ``gap`` marker) the book is invalid
   until re-synced from a new snapshot: the gap diff is buffered again and steps 1-3 repeat.

Prices are kept as integers on a 1e-8 grid (Binance sends 8 decimals), never as float keys;
sizes are floats (values, never keys). Each side is a dict ``price -> size`` plus an ascending
list of prices kept sorted with ``bisect``: top-K reads are slices, updates O(log n + shift).

:class:`BookTracker` adds the time dimension used by the features: the book "at ts" has every
diff with exchange time ``E < ts`` applied. It samples the top-K sums at each grid step the
first time a processed diff has ``E >= ts`` (so the sample excludes it), or when the step is
closed with no such diff. Offline and online drive the same class, so the book columns agree
by construction.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PRICE_DECIMALS = 8
PRICE_SCALE = 10**PRICE_DECIMALS


def price_ticks(text: str) -> int:
    """Exact integer price in units of 1e-8 from a Binance decimal string."""
    whole, dot, frac = text.partition(".")
    if len(frac) > PRICE_DECIMALS:
        extra = frac[PRICE_DECIMALS:]
        if extra.strip("0"):
            raise ValueError(f"price {text!r} has more than {PRICE_DECIMALS} decimals")
        frac = frac[:PRICE_DECIMALS]
    return int(whole or "0") * PRICE_SCALE + int(frac.ljust(PRICE_DECIMALS, "0") or "0")


class OrderBook:
    """One symbol's levels; prices as exact ints (1e-8 units)."""

    __slots__ = ("bids", "asks", "_bid_px", "_ask_px")

    def __init__(self) -> None:
        self.bids: dict[int, float] = {}
        self.asks: dict[int, float] = {}
        self._bid_px: list[int] = []  # ascending: best bid last
        self._ask_px: list[int] = []  # ascending: best ask first

    @classmethod
    def from_levels(cls, bids: Iterable[Sequence[str]], asks: Iterable[Sequence[str]]) -> OrderBook:
        book = cls()
        book.apply(bids, asks)
        return book

    @staticmethod
    def _update(
        levels: dict[int, float], prices: list[int], updates: Iterable[Sequence[str]]
    ) -> None:
        for px_text, sz_text in updates:
            px = price_ticks(px_text)
            sz = float(sz_text)
            if sz == 0.0:
                if levels.pop(px, None) is not None:
                    del prices[bisect.bisect_left(prices, px)]
            else:
                if px not in levels:
                    bisect.insort(prices, px)
                levels[px] = sz

    def apply(self, bids: Iterable[Sequence[str]], asks: Iterable[Sequence[str]]) -> None:
        self._update(self.bids, self._bid_px, bids)
        self._update(self.asks, self._ask_px, asks)

    def best_bid(self) -> int | None:
        return self._bid_px[-1] if self._bid_px else None

    def best_ask(self) -> int | None:
        return self._ask_px[0] if self._ask_px else None

    def crossed(self) -> bool:
        return bool(self._bid_px and self._ask_px and self._bid_px[-1] >= self._ask_px[0])

    def top(self, k: int) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """Best ``k`` levels per side, best first."""
        bids = [(p, self.bids[p]) for p in reversed(self._bid_px[-k:])] if k else []
        asks = [(p, self.asks[p]) for p in self._ask_px[:k]]
        return bids, asks

    def top_sums(self, depths: Sequence[int]) -> tuple[float, ...]:
        """``(bid_sum_k, ask_sum_k)`` for each k in ``depths`` (ascending), summed best level
        first; a side with fewer than k levels sums what it has."""
        bid_px, ask_px = self._bid_px, self._ask_px
        nb, na = len(bid_px), len(ask_px)
        out: list[float] = []
        bsum = asum = 0.0
        i = 0
        for k in depths:
            while i < k:
                if i < nb:
                    bsum += self.bids[bid_px[nb - 1 - i]]
                if i < na:
                    asum += self.asks[ask_px[i]]
                i += 1
            out += (bsum, asum)
        return tuple(out)

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)


# Sync states.
UNSYNCED = "unsynced"  # no usable snapshot: buffering diffs
BRIDGING = "bridging"  # snapshot loaded, waiting for the diff with U <= L+1 <= u
SYNCED = "synced"


@dataclass
class SyncStats:
    snapshots_used: int = 0
    snapshots_ignored: int = 0  # arrived while already synced
    snapshots_stale: int = 0  # older than the buffered diffs: cannot be bridged
    diffs_applied: int = 0
    diffs_dropped: int = 0  # u <= L while bridging
    gaps: int = 0
    buffer_overflow: int = 0
    duplicates: int = 0
    # (L, U, u) of every bridge, in order.
    bridges: list[tuple[int, int, int]] = field(default_factory=list)
    # Exchange time E of the diff that revealed each gap.
    gap_times: list[int] = field(default_factory=list)


class BookTracker:
    """The sync procedure plus grid sampling of top-K sums for one symbol.

    Feed records in arrival order with :meth:`on_diff` / :meth:`on_snapshot`; call
    :meth:`close` with a grid ts to make sure it is sampled. ``samples`` maps grid ts to a
    tuple of ``(bid_sum_k, ask_sum_k)`` per depth, or None while the book is not synced.
    """

    def __init__(
        self,
        step_ms: int,
        first_ts: int,
        depths: Sequence[int] = (5, 10),
        max_buffer: int = 50_000,
    ) -> None:
        self.step_ms = step_ms
        self.next_ts = first_ts  # first grid ts not sampled yet
        self.depths = tuple(sorted(depths))
        self.state = UNSYNCED
        self.book: OrderBook | None = None
        self.last_u: int | None = None
        self.snapshot_id: int | None = None
        self.buffer: deque[Mapping[str, Any]] = deque(maxlen=max_buffer)
        self.samples: dict[int, tuple[float, ...] | None] = {}
        self.crossed_samples = 0
        self.stats = SyncStats()

    # --- sampling ----------------------------------------------------------------------

    def _sample_until(self, ts_incl: int) -> None:
        """Sample every grid ts <= ts_incl not sampled yet with the current state."""
        if self.next_ts > ts_incl:
            return
        value: tuple[float, ...] | None = None
        if self.state == SYNCED and self.book is not None:
            value = self.book.top_sums(self.depths)
            if self.book.crossed():
                self.crossed_samples += 1
        while self.next_ts <= ts_incl:
            self.samples[self.next_ts] = value
            self.next_ts += self.step_ms

    def close(self, ts: int) -> None:
        """Step ``ts`` is closed: no diff with ``E < ts`` will come; sample it if not done."""
        self._sample_until(ts)

    # --- sync ----------------------------------------------------------------------------

    def on_snapshot(self, snapshot: Mapping[str, Any]) -> None:
        if self.state == SYNCED:
            self.stats.snapshots_ignored += 1
            return
        self.book = OrderBook.from_levels(snapshot["bids"], snapshot["asks"])
        self.snapshot_id = snapshot["last_update_id"]
        self.state = BRIDGING
        pending = list(self.buffer)
        self.buffer.clear()
        for diff in pending:
            self._process(diff)

    def on_diff(self, diff: Mapping[str, Any]) -> None:
        if self.state == UNSYNCED:
            self._buffer(diff)
        else:
            self._process(diff)

    def _buffer(self, diff: Mapping[str, Any]) -> None:
        if len(self.buffer) == self.buffer.maxlen:
            self.stats.buffer_overflow += 1
        self.buffer.append(diff)

    def _process(self, diff: Mapping[str, Any]) -> None:
        first = diff["first_update_id"]
        final = diff["final_update_id"]
        if self.state == UNSYNCED:
            self._buffer(diff)
            return
        E = diff["event_ts"]
        if self.state == SYNCED:
            assert self.last_u is not None  # SYNCED: a snapshot set it
            if final <= self.last_u:  # a re-delivered diff (at-least-once): already applied
                self.stats.duplicates += 1
                return
            if diff.get("gap") or first != self.last_u + 1:
                self._sample_until(E)
                self.stats.gaps += 1
                self.stats.gap_times.append(E)
                self.state = UNSYNCED
                self.book = None
                self._buffer(diff)
                return
            self._sample_until(E)
            self.book.apply(diff["bids"], diff["asks"])  # type: ignore[union-attr]
            self.last_u = final
            self.stats.diffs_applied += 1
            return
        # BRIDGING
        L = self.snapshot_id
        assert L is not None
        if final <= L:
            self._sample_until(E)
            self.stats.diffs_dropped += 1
            return
        if first <= L + 1:
            self._sample_until(E)
            self.book.apply(diff["bids"], diff["asks"])  # type: ignore[union-attr]
            self.last_u = final
            self.state = SYNCED
            self.stats.snapshots_used += 1
            self.stats.diffs_applied += 1
            self.stats.bridges.append((L, first, final))
            return
        # U > L + 1: the snapshot predates the diffs we hold; wait for a newer one.
        self.stats.snapshots_stale += 1
        self.state = UNSYNCED
        self.book = None
        self._buffer(diff)


def merged_book_events(
    snapshots: Iterable[Mapping[str, Any]], diffs: Iterable[Mapping[str, Any]]
) -> list[tuple[str, Mapping[str, Any]]]:
    """Offline order of book records: diffs by final update id, each snapshot right after
    the diffs it already contains (``u <= L``). Fed to a :class:`BookTracker`, this order
    gives the same book as any arrival order in which each snapshot arrives before its
    bridge is needed."""
    keyed: list[tuple[int, int, str, Mapping[str, Any]]] = []
    for d in diffs:
        keyed.append((d["final_update_id"], 0, "diff", d))
    for s in snapshots:
        keyed.append((s["last_update_id"], 1, "snapshot", s))
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [(kind, rec) for _, _, kind, rec in keyed]
