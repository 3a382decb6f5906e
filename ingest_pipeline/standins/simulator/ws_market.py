"""The WebSocket server's market streams (``ws.BinanceWs`` mixes this in): trades, aggTrades,
bookTicker and depth diffs of the synthetic market, emitted as their time comes, in Binance's
wire format."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ingest_pipeline.standins.simulator.basics import DepthDiff, format_units
from ingest_pipeline.standins.simulator.market import SymbolModel

log = logging.getLogger(__name__)


@dataclass
class SymbolState:
    """Live emission state of one symbol (only while someone subscribes to it)."""

    model: SymbolModel
    name: str  # lower-case stream prefix
    sym_json: str  # the symbol as a JSON string
    trade_hour: int = -1
    trade_idx: int = 0
    trade_next_ms: int = 0
    depth_batch: int = -1  # last batch whose diff was computed
    prev_u: int = -1  # u of the last emitted @depth@100ms diff
    agg: dict[str, Any] | None = None  # @depth (1000 ms) accumulation
    top: tuple[int, int, int, int] | None = None  # last bookTicker (bid, bidq, ask, askq)
    # Formatted depth levels: '["<price>","' by price ticks, '<qty>"]' by qty steps.
    px_fmt: dict[int, str] = field(default_factory=dict)
    qty_fmt: dict[int, str] = field(default_factory=dict)


class LiveMarket:
    """The live loop of ``BinanceWs``: due trades and depth batches to their subscribers."""

    async def _live_loop(self) -> None:
        tick = self.config.ws_tick_ms / 1000.0
        while True:
            started = time.monotonic()
            try:
                await self._live_step(self.clock())
            except Exception:  # keep streaming whatever one symbol does
                log.exception("websocket live step failed")
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - started)))

    async def _live_step(self, now: int) -> None:
        heap = self._trade_heap
        while heap and heap[0][0] <= now:
            _, symbol = heapq.heappop(heap)
            st = self._states.get(symbol)
            if st is None or st.trade_hour < 0:
                continue
            self._emit_trades(st, now)
            heapq.heappush(heap, (st.trade_next_ms, symbol))
        done = 0
        for st in list(self._states.values()):
            if st.depth_batch < 0:
                continue
            target = st.model.batch_of(now)
            while st.depth_batch < target and st.depth_batch >= 0:
                self._emit_depth(st, st.depth_batch + 1)
                done += 1
                if done % 50 == 0:  # let connections breathe between heavy batches
                    await asyncio.sleep(0)
                    now = self.clock()

    def _emit_trades(self, st: SymbolState, now: int) -> None:
        model = st.model
        spec = model.spec
        pd, qd = spec.price_decimals, spec.qty_decimals
        stream = f"{st.name}@trade"
        while True:
            hd = model.hour(st.trade_hour)
            hi = hd.visible_trades(now)
            if hi > st.trade_idx:
                lo = st.trade_idx
                ids = range(hd.first_trade_id + lo, hd.first_trade_id + hi)
                for tid, p, q, t, m in zip(
                    ids,
                    hd.price[lo:hi].tolist(),
                    hd.qty[lo:hi].tolist(),
                    hd.time[lo:hi].tolist(),
                    hd.buyer_maker[lo:hi].tolist(),
                    strict=True,
                ):
                    payload = (
                        f'{{"e":"trade","E":{self.clock()},"s":{st.sym_json},"t":{tid},'
                        f'"p":"{format_units(p, pd)}","q":"{format_units(q, qd)}","T":{t},'
                        f'"m":{"true" if m else "false"},"M":true}}'
                    )
                    self.publish(stream, payload, tid)
                st.trade_idx = hi
            if hi < hd.n_trades:
                st.trade_next_ms = int(hd.time[hi])
                return
            nxt = model.hour_start(st.trade_hour + 1)
            if nxt > now:
                st.trade_next_ms = nxt
                return
            st.trade_hour += 1
            st.trade_idx = 0

    def _emit_depth(self, st: SymbolState, batch: int) -> None:
        model = st.model
        spec = model.spec
        pd, qd = spec.price_decimals, spec.qty_decimals
        st.depth_batch = batch
        p = st.name
        want_100 = f"{p}@depth@100ms" in self.subs
        want_1000 = f"{p}@depth" in self.subs
        if want_100 or want_1000:
            diff = model.book_diff(batch)
            if want_100:
                skip = False
                f = self.faults
                if f.skip_depth_next > 0:
                    f.skip_depth_next -= 1
                    skip = True
                elif self._draws["skip"](f.skip_depth_rate):
                    skip = True
                if skip:
                    self.stats["skipped_depth"] += 1
                else:
                    payload = _depth_payload(
                        self.clock(),
                        st.sym_json,
                        diff.first_update_id,
                        diff.final_update_id,
                        _levels(st, diff.bid_px, diff.bid_qty, pd, qd),
                        _levels(st, diff.ask_px, diff.ask_qty, pd, qd),
                    )
                    self.publish(
                        f"{p}@depth@100ms", payload, [diff.first_update_id, diff.final_update_id]
                    )
            if want_1000:
                self._accumulate(st, diff, pd, qd)
        if f"{p}@bookTicker" in self.subs:
            bid, ask = model.touch(batch)
            bq, aq = model.level_qty(np.array([bid, ask], dtype=np.int64), batch).tolist()
            top = (bid, bq, ask, aq)
            if top != st.top:
                st.top = top
                u = model.update_id(batch)
                payload = (
                    f'{{"u":{u},"s":{st.sym_json},"b":"{format_units(bid, pd)}",'
                    f'"B":"{format_units(bq, qd)}","a":"{format_units(ask, pd)}",'
                    f'"A":"{format_units(aq, qd)}"}}'
                )
                self.publish(f"{p}@bookTicker", payload, u)

    def _accumulate(self, st: SymbolState, diff: DepthDiff, pd: int, qd: int) -> None:
        agg = st.agg
        if agg is None:
            agg = st.agg = {"U": diff.first_update_id, "b": {}, "a": {}}
        agg["u"] = diff.final_update_id
        agg["b"].update(zip(diff.bid_px.tolist(), diff.bid_qty.tolist(), strict=True))
        agg["a"].update(zip(diff.ask_px.tolist(), diff.ask_qty.tolist(), strict=True))
        if diff.batch % 10 == 0:
            bids = sorted(agg["b"].items(), reverse=True)
            asks = sorted(agg["a"].items())
            payload = _depth_payload(
                self.clock(),
                st.sym_json,
                agg["U"],
                agg["u"],
                ",".join(f'["{format_units(x, pd)}","{format_units(y, qd)}"]' for x, y in bids),
                ",".join(f'["{format_units(x, pd)}","{format_units(y, qd)}"]' for x, y in asks),
            )
            self.publish(f"{st.name}@depth", payload, [agg["U"], agg["u"]])
            st.agg = None

    # ---- admin ----------------------------------------------------------------------------


_FMT_CACHE_MAX = 100_000  # formatted prices/sizes kept per symbol


def _levels(st: SymbolState, px: np.ndarray, qty: np.ndarray, pd: int, qd: int) -> str:
    """Depth levels as JSON array items; formatted strings are cached per symbol (a diff
    repeats the same prices and sizes batch after batch)."""
    pc, qc = st.px_fmt, st.qty_fmt
    if len(pc) > _FMT_CACHE_MAX:
        pc.clear()
    if len(qc) > _FMT_CACHE_MAX:
        qc.clear()
    out = []
    for p, q in zip(px.tolist(), qty.tolist(), strict=True):
        a = pc.get(p)
        if a is None:
            a = pc[p] = f'["{format_units(p, pd)}","'
        b = qc.get(q)
        if b is None:
            b = qc[q] = f'{format_units(q, qd)}"]'
        out.append(a + b)
    return ",".join(out)


def _depth_payload(e: int, sym_json: str, first: int, last: int, bids: str, asks: str) -> str:
    return (
        f'{{"e":"depthUpdate","E":{e},"s":{sym_json},"U":{first},"u":{last},'
        f'"b":[{bids}],"a":[{asks}]}}'
    )
