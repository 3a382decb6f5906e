"""The order book of one symbol at each 100 ms depth batch, and the diffs between batches.

The touch comes from the symbol's price path (``market.py``); the window of each side holds
``MAX_BOOK_LEVELS`` contiguous tick levels from it. A level's size is redrawn at its own
epochs: every level has a hashed period (2-60 s) and phase, so the levels that change between
batch b-1 and b are exactly those whose epoch number ticks over, and a diff stream can find
them without rebuilding the book. Depth update ids ``U(b)`` are a closed form of the batch.
Pure apart from a cache of the current chunk of scheduled ticks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from ingest_pipeline.standins.simulator.basics import (
    BATCHES_PER_HOUR,
    MASK64,
    MAX_BOOK_LEVELS,
    Book,
    DepthDiff,
    SymbolSpec,
    mix64,
    mix_np,
)

_TICK_CHUNK = 100  # depth batches whose level ticks are scheduled at once (see book_diff)

# Best bid and spread (ticks) at each depth batch of an hour (both ends): SymbolModel.path.
PricePath = Callable[[int], tuple[np.ndarray, np.ndarray]]


class DepthBook:
    """Books, level sizes, update ids and diffs of one symbol."""

    def __init__(self, spec: SymbolSpec, key: int, path: PricePath) -> None:
        self._key = key
        self._path = path
        self._updates_per_batch = 4 + spec.trades_per_hour // 10_000
        step = 10.0**-spec.qty_decimals
        self._mean_steps = 4 * spec.trade_notional / (spec.base_price * step)
        self._chunk: _TickChunk | None = None
        self._lock = threading.Lock()

    def update_id(self, batch: int) -> int:
        """U(b): cumulative depth update counter, strictly increasing by >= 1 per batch."""
        c = self._updates_per_batch
        return c * batch + mix64(self._key ^ 0xB0 ^ mix64(batch & MASK64)) % c

    def touch(self, batch: int) -> tuple[int, int]:
        """(best bid, best ask) in ticks at a depth batch."""
        h, j = divmod(batch, BATCHES_PER_HOUR)
        bid, spread = self._path(h)
        return int(bid[j]), int(bid[j] + spread[j])

    def level_qty(self, prices: np.ndarray, batch: int) -> np.ndarray:
        """Resting size (steps) of each price level at a batch."""
        return self.sizes_at(*self.level_hash(prices), batch)

    def level_hash(self, prices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hash, period, phase) of each price level, as uint64 arrays."""
        p = prices.astype(np.uint64) ^ np.uint64(self._key)
        hp = mix_np(p)
        period = np.uint64(20) + hp % np.uint64(580)
        phase = (hp >> np.uint64(20)) % period
        return hp, period, phase

    def sizes_at(
        self, hp: np.ndarray, period: np.ndarray, phase: np.ndarray, batch: int
    ) -> np.ndarray:
        """Sizes at ``batch`` of the levels with hash, period and phase ``hp, period, phase``."""
        return self.sizes(hp, (np.uint64(batch) + phase) // period)

    def sizes(self, hp: np.ndarray, epoch: np.ndarray) -> np.ndarray:
        """Size of levels with hash ``hp`` in their ``epoch`` (the draw behind ``level_qty``)."""
        u = (mix_np(hp ^ mix_np(epoch)) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        return np.maximum(np.floor(-np.log1p(-u) * self._mean_steps), 1).astype(np.int64)

    def book(self, batch: int, limit: int = MAX_BOOK_LEVELS) -> Book:
        """Book at a depth batch: ``limit`` contiguous tick levels a side from the touch."""
        bid, ask = self.touch(batch)
        depth = min(limit, MAX_BOOK_LEVELS)
        bid_px = bid - np.arange(min(depth, bid), dtype=np.int64)
        ask_px = ask + np.arange(depth, dtype=np.int64)
        return Book(
            batch=batch,
            last_update_id=self.update_id(batch),
            bid_px=bid_px,
            bid_qty=self.level_qty(bid_px, batch),
            ask_px=ask_px,
            ask_qty=self.level_qty(ask_px, batch),
        )

    def book_diff(self, batch: int) -> DepthDiff:
        """What changed between book(batch-1) and book(batch) (full 5000-level windows).

        Levels leaving the window, or crossing to the other side, get size 0; applying the diff
        to book(batch-1) gives book(batch) exactly. ``first_update_id`` is U(batch-1)+1.

        Equal to :meth:`book_diff_full` (both books compared level by level) at a fraction of
        its cost: a level staying in its side's window changes only when its epoch ticks over
        to a different draw, and those ticks are scheduled once per chunk of batches, over
        every price the chunk's windows reach (:class:`_TickChunk`). Sizes of all those levels
        are kept current as batches are asked for in order, so a level entering a window is a
        lookup.
        """
        with self._lock:
            ch = self._chunk
            if ch is None or not ch.b0 <= batch < ch.b0 + _TICK_CHUNK:
                ch = self._chunk = _TickChunk(self, batch // _TICK_CHUNK * _TICK_CHUNK)
            return ch.diff(batch)

    def book_diff_full(self, batch: int) -> DepthDiff:
        """The reference for :meth:`book_diff`: both books compared level by level."""
        (pb, pa), (cb, ca) = self.touch(batch - 1), self.touch(batch)
        sides = []
        for prev_top, cur_top, sign in ((pb, cb, -1), (pa, ca, 1)):
            # A side's window is [top, top + sign*(depth-1)], clipped to positive prices.
            prev_far, cur_far = (
                prev_top + sign * (MAX_BOOK_LEVELS - 1),
                cur_top + sign * (MAX_BOOK_LEVELS - 1),
            )
            lo = max(1, min(prev_top, cur_top, prev_far, cur_far))
            hi = max(prev_top, cur_top, prev_far, cur_far)
            px = np.arange(lo, hi + 1, dtype=np.int64)
            in_prev = (px >= min(prev_top, prev_far)) & (px <= max(prev_top, prev_far))
            in_cur = (px >= min(cur_top, cur_far)) & (px <= max(cur_top, cur_far))
            before = np.where(in_prev, self.level_qty(px, batch - 1), 0)
            after = np.where(in_cur, self.level_qty(px, batch), 0)
            changed = before != after
            order = slice(None, None, -1) if sign < 0 else slice(None)  # bids best first
            sides.append((px[changed][order], after[changed][order]))
        return DepthDiff(
            batch=batch,
            first_update_id=self.update_id(batch - 1) + 1,
            final_update_id=self.update_id(batch),
            bid_px=sides[0][0],
            bid_qty=sides[0][1],
            ask_px=sides[1][0],
            ask_qty=sides[1][1],
        )


class _TickChunk:
    """Level-size ticks of one symbol over ``_TICK_CHUNK`` depth batches from ``b0``.

    Covers every price that a bid or ask window of batches ``b0-1 .. b0+_TICK_CHUNK-1``
    reaches; ``qty`` holds the size of each of those levels at batch ``at``.
    """

    def __init__(self, depth: DepthBook, b0: int) -> None:
        self.depth = depth
        self.b0 = b0
        b1 = b0 + _TICK_CHUNK  # exclusive
        bids: list[int] = []
        asks: list[int] = []
        for h in range((b0 - 1) // BATCHES_PER_HOUR, (b1 - 1) // BATCHES_PER_HOUR + 1):
            bid, spread = depth._path(h)
            j0 = max(b0 - 1 - h * BATCHES_PER_HOUR, 0)
            j1 = min(b1 - 1 - h * BATCHES_PER_HOUR, BATCHES_PER_HOUR - 1) + 1  # as touch()
            bids += bid[j0:j1].tolist()
            asks += (bid[j0:j1] + spread[j0:j1]).tolist()
        self.bids, self.asks = bids, asks  # touch of batches b0-1 .. b1-1
        self.base = base = max(1, min(bids) - MAX_BOOK_LEVELS + 1)
        prices = np.arange(base, max(asks) + MAX_BOOK_LEVELS)
        self.hp, self.period, self.phase = hp, period, phase = depth.level_hash(prices)
        # A level's epoch ticks over at batch b when (b + phase) % period == 0.
        ub0 = np.uint64(b0)
        first = (period - (ub0 + phase) % period) % period  # offset of its first tick >= b0
        due = first < np.uint64(_TICK_CHUNK)
        count = np.zeros(prices.size, dtype=np.int64)
        count[due] = ((np.uint64(_TICK_CHUNK - 1) - first[due]) // period[due] + 1).astype(np.int64)
        idx = np.repeat(np.arange(prices.size), count)
        k = (np.arange(idx.size) - (np.cumsum(count) - count)[idx]).astype(np.uint64)
        off = first[idx] + k * period[idx]  # batch - b0
        epoch = (ub0 + off + phase[idx]) // period[idx]
        new = depth.sizes(hp[idx], epoch)
        keep = new != depth.sizes(hp[idx], epoch - np.uint64(1))  # a redraw may land equal
        off, px, new = off[keep].astype(np.int64), prices[idx[keep]], new[keep]
        order = np.argsort(off, kind="stable")  # by batch, then by price ascending
        off, px_l, new_l = off[order], px[order].tolist(), new[order].tolist()
        bounds = np.searchsorted(off, np.arange(_TICK_CHUNK + 1)).tolist()
        self.ticks = [
            (px_l[bounds[i] : bounds[i + 1]], new_l[bounds[i] : bounds[i + 1]])
            for i in range(_TICK_CHUNK)
        ]
        self.at = b0 - 1
        self.qty: list[int] = self._sizes_at(b0 - 1)

    def _sizes_at(self, batch: int) -> list[int]:
        return self.depth.sizes_at(self.hp, self.period, self.phase, batch).tolist()

    def diff(self, batch: int) -> DepthDiff:
        i = batch - self.b0
        if self.at != batch - 1:  # not asked in order: rebuild the sizes at batch-1
            self.qty = self._sizes_at(batch - 1)
        qty, base = self.qty, self.base
        tick_px, tick_qty = self.ticks[i]
        for p, q in zip(tick_px, tick_qty, strict=True):
            qty[p - base] = q
        self.at = batch
        pb, pa, cb, ca = self.bids[i], self.asks[i], self.bids[i + 1], self.asks[i + 1]
        sides = []
        for prev, cur in (
            ((max(1, pb - MAX_BOOK_LEVELS + 1), pb), (max(1, cb - MAX_BOOK_LEVELS + 1), cb)),
            ((pa, pa + MAX_BOOK_LEVELS - 1), (ca, ca + MAX_BOOK_LEVELS - 1)),
        ):
            # Ascending price order: below the overlap, the overlap's ticks, above it. A range
            # of the previous window only is removed (0), one of the current only enters.
            lo, hi = max(prev[0], cur[0]), min(prev[1], cur[1])
            if lo > hi:  # no overlap
                ranges = sorted((prev, cur))
                below, above, mid = ranges[0], ranges[1], None
            else:
                below = (min(prev[0], cur[0]), lo - 1)
                above = (hi + 1, max(prev[1], cur[1]))
                mid = (lo, hi)
            px: list[int] = []
            qs: list[int] = []
            for r in (below, mid, above):
                if r is None or r[0] > r[1]:
                    continue
                if r is mid:
                    for p, q in zip(tick_px, tick_qty, strict=True):
                        if lo <= p <= hi:
                            px.append(p)
                            qs.append(q)
                    continue
                px.extend(range(r[0], r[1] + 1))
                if cur[0] <= r[0] <= cur[1]:  # entering
                    qs.extend(qty[r[0] - base : r[1] + 1 - base])
                else:  # leaving
                    qs.extend([0] * (r[1] + 1 - r[0]))
            sides.append((np.array(px, dtype=np.int64), np.array(qs, dtype=np.int64)))
        depth = self.depth
        return DepthDiff(
            batch=batch,
            first_update_id=depth.update_id(batch - 1) + 1,
            final_update_id=depth.update_id(batch),
            bid_px=sides[0][0][::-1],  # bids best first
            bid_qty=sides[0][1][::-1],
            ask_px=sides[1][0],
            ask_qty=sides[1][1],
        )
