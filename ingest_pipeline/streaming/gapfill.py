"""The streamer's trade ids (``streamer.Streamer`` mixes this in): Binance numbers a symbol's
trades consecutively, so a hole in the ids (a restart, a dropped connection) is known at once.
A hole is filled from REST ``historicalTrades`` while the symbol's live trades wait, or becomes
a durable gap record; the REST calls share the streamer's weight pacer."""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, cast

from ingest_pipeline.binance.normalize import trade_from_rest
from ingest_pipeline.binance.rest import (
    MAX_PAGE,
    WEIGHT_EXCHANGE_INFO,
    WEIGHT_HISTORICAL_TRADES,
    BinanceRestClient,
    BinanceUnavailable,
)
from ingest_pipeline.binance.stream import Link
from ingest_pipeline.records import (
    TRADE,
    MalformedPayload,
    Record,
)
from ingest_pipeline.streaming.config import (
    StreamerStopping,
    UnknownSymbolError,
)
from ingest_pipeline.streaming.continuity import (
    Range,
    covered,
    missing_ranges,
)

if TYPE_CHECKING:
    from ingest_pipeline.streaming.parts import StreamerParts

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TradeIds:
    """One symbol's trade ids: ``last`` is the frontier (every id up to it was put, is on
    Kinesis from a predecessor, or is in a gap record); ``present`` the ids above it already on
    Kinesis; ``held`` the live trades waiting for a fill, sorted by id."""

    last: int | None = None
    last_ts: int | None = None  # trade time of ``last``, when known
    present: list[Range] = dataclasses.field(default_factory=list)
    held: list[tuple[int, Record, Any, int, Link | None]] = dataclasses.field(default_factory=list)
    fill: asyncio.Future[None] | None = None
    # Gap records waiting for the time of the first trade after them.
    open_gaps: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class GapFill:
    """Filling the holes in a symbol's trade ids; the state lives on the ``Streamer``."""

    # Written here, set up by ``Streamer.__init__`` (declared for the type checker).
    _rest: BinanceRestClient | None

    # --- trade ids: Binance numbers a symbol's trades consecutively -------------------------

    def _can_fill(self: StreamerParts) -> bool:
        stop = self._stop
        return self.cfg.backfill_max_trades > 0 and stop is not None and not stop.is_set()

    def _on_trade(
        self: StreamerParts, tid: int, record: Record, raw: Any, ingest_ts: int, link: Link | None
    ) -> None:
        """A live trade: out now when it continues its symbol's ids, else held for a fill."""
        symbol = record["symbol"]
        st = self._trades[symbol]
        if st.fill is not None:
            bisect.insort(st.held, (tid, record, raw, ingest_ts, link), key=lambda h: h[0])
            return
        if st.last is not None and tid > st.last + 1:
            missing = missing_ranges(st.last + 1, tid - 1, st.present)
            if missing:
                self.counts["trade_gaps"] += 1
                self.counts["trade_gap_ids"] += sum(b - a + 1 for a, b in missing)
                if self._can_fill():
                    log.warning("%s: trade ids %d..%d missing before %d: filling over REST",
                                symbol, missing[0][0], missing[-1][1], tid)  # fmt: skip
                    st.held.append((tid, record, raw, ingest_ts, link))
                    self._start_fill(symbol, open_ended=False)
                    return
                if self._stop is not None and self._stop.is_set():
                    # Stopping: a put beyond the hole would move the frontier past it; the next
                    # process fills the hole and this trade from REST.
                    self.counts["held_dropped_at_stop"] += 1
                    return
                for a, b in missing:
                    self._unfilled(symbol, a, b, "backfill off (backfill_max_trades = 0)")
        self._put_trade(symbol, st, record, raw, ingest_ts, link)

    def _put_trade(
        self: StreamerParts, symbol: str, st: TradeIds, record: Record, raw: Any, ingest_ts: int,
        link: Link | None,
    ) -> bool:  # fmt: skip
        tid = record["trade_id"]
        put = self._emit(TRADE, self._routes[TRADE], record, symbol, raw, ingest_ts, link)
        if st.last is None or tid > st.last:
            self._advance(st, tid)
            st.last_ts = record["event_ts"]
            if st.open_gaps:
                self._close_gaps(st, tid, record["event_ts"])
        return put

    @staticmethod
    def _advance(st: TradeIds, tid: int) -> None:
        st.last = tid
        while st.present and st.present[0][1] <= tid:
            st.present.pop(0)

    @staticmethod
    def _next_missing(st: TradeIds) -> int:
        assert st.last is not None
        n = st.last + 1
        for a, b in st.present:
            if a <= n <= b:
                n = b + 1
        return n

    def _start_fill(self: StreamerParts, symbol: str, open_ended: bool) -> None:
        st = self._trades[symbol]
        st.fill = self._spawn(self._fill(symbol, open_ended))

    def _spawn(self: StreamerParts, coro: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _release_held(self: StreamerParts, symbol: str, st: TradeIds) -> None:
        """Emit the held trades that continue the frontier (they may have come on another link
        while the fill waited)."""
        held = st.held
        i = 0
        while i < len(held) and (st.last is None or held[i][0] <= self._next_missing(st)):
            _, record, raw, ingest_ts, link = held[i]
            self._put_trade(symbol, st, record, raw, ingest_ts, link)
            i += 1
        del held[:i]  # once: tens of thousands may be held

    async def _fill(self: StreamerParts, symbol: str, open_ended: bool) -> None:
        """Fill ``symbol``'s hole above its frontier from REST while its live trades are held.

        Bounded (mid-stream, or once a live trade is held): up to the first held id. Open-ended
        (at start, before any live trade came): up to REST's newest trade, or until live trades
        arrive. Either way at most ``backfill_max_trades`` ids; older ones become a gap record.
        """
        st = self._trades[symbol]
        began = time.monotonic()
        at_start = open_ended
        first_id = self._next_missing(st) if st.last is not None else None
        filled = pages = 0
        outcome = "filled"
        try:
            if not open_ended and self.cfg.fill_delay_s > 0:
                await asyncio.sleep(self.cfg.fill_delay_s)
            if open_ended:
                # The first live trade bounds the hole, so that a hole longer than the maximum
                # is filled for its newest part; a quiet symbol goes on without one.
                deadline = time.monotonic() + self.cfg.resume_wait_s
                while not st.held and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            budget = self.cfg.backfill_max_trades
            while True:
                self._release_held(symbol, st)
                if st.held:
                    # Live trades came: they bound the hole, and once the fill reaches them the
                    # stream has caught up (no open-ended page more).
                    open_ended = False
                    hi: int | None = st.held[0][0] - 1
                elif open_ended:
                    hi = None
                else:
                    break
                nxt = self._next_missing(st)
                if hi is not None:
                    if len(st.held) > self.cfg.max_held_trades:
                        self._unfilled(symbol, nxt, hi, f"more than {self.cfg.max_held_trades} "
                                       "live trades held during the fill")  # fmt: skip
                        self._advance(st, hi)
                        outcome = "cut"
                        continue
                    if hi - nxt + 1 > budget:
                        cut = hi - budget
                        self._unfilled(symbol, nxt, cut, f"hole longer than {budget} ids "
                                       "(backfill_max_trades)")  # fmt: skip
                        self._advance(st, cut)
                        outcome = "cut"
                        continue
                elif budget <= 0:
                    break  # the next live trade shows what is left, as a hole of its own
                limit = min(MAX_PAGE, budget)
                page = await self._rest_get(
                    "/api/v3/historicalTrades",
                    {"symbol": symbol, "fromId": nxt, "limit": limit},
                    WEIGHT_HISTORICAL_TRADES,
                )
                pages += 1
                budget -= len(page.items)
                emitted = self._emit_fill(symbol, st, page.items, page.received_ms, nxt, hi)
                filled += emitted
                if not page.items or st.last is None or st.last < nxt:
                    if hi is None:
                        break  # nothing newer on REST yet
                    self._unfilled(symbol, nxt, hi, "REST returned none of these ids")
                    self._advance(st, hi)
                    outcome = "cut"
                elif hi is None and len(page.items) < limit:
                    break  # REST's newest trade reached; live ones continue from it
        except asyncio.CancelledError:
            # Stopping: what was held is not put (a put beyond the hole would move the
            # frontier past it); the checkpoint still points below the hole, and the next
            # process fills it and sends the held trades again.
            outcome = "cancelled"
            dropped, st.held = len(st.held), []
            self.counts["held_dropped_at_stop"] += dropped
            raise
        except StreamerStopping:
            outcome = "stopped"
            dropped, st.held = len(st.held), []
            self.counts["held_dropped_at_stop"] += dropped
        except Exception as exc:
            self.counts["backfill_failures"] += 1
            outcome = f"failed: {exc!r}"
            log.error("fill of %s trades from %s failed: %r", symbol, first_id, exc)
            if st.held and st.last is not None:
                hi = st.held[0][0] - 1
                nxt = self._next_missing(st)
                if nxt <= hi:
                    self._unfilled(symbol, nxt, hi, f"REST failed: {exc!r}")
                    self._advance(st, hi)
        finally:
            st.fill = None
            seconds = round(time.monotonic() - began, 3)
            self.counts["trades_backfilled"] += filled
            self.fills.append({"symbol": symbol, "from_id": first_id, "to_id": st.last,
                               "filled": filled, "pages": pages, "seconds": seconds,
                               "at_start": at_start, "outcome": outcome})  # fmt: skip
            if filled or outcome != "filled":
                log.info("%s: fill from id %s: %d trades in %d pages, %.2f s (%s)", symbol,
                         first_id, filled, pages, seconds, outcome)  # fmt: skip
            held, st.held = st.held, []
            for tid, record, raw, ingest_ts, link in held:
                self._on_trade(tid, record, raw, ingest_ts, link)

    def _emit_fill(
        self: StreamerParts, symbol: str, st: TradeIds, items: list[Any], received_ms: int,
        nxt: int, hi: int | None,
    ) -> int:  # fmt: skip
        records: list[tuple[int, Record, Any]] = []
        for item in items:
            try:
                # A TypedDict is a plain dict at runtime, which mypy does not let pass as one.
                rec = cast(Record, trade_from_rest(item, symbol, received_ms))
            except MalformedPayload as exc:
                self._dead_letter(f"backfill: {exc.reason}", item, received_ms, None)
                continue
            records.append((rec["trade_id"], rec, item))
        records.sort(key=lambda r: r[0])
        n = 0
        for tid, rec, item in records:
            if tid < nxt or covered(tid, st.present):
                continue
            if hi is not None and tid > hi:
                break
            # Held trades below this one (come on another link meanwhile) go first.
            while st.held and st.held[0][0] < tid:
                _, hrec, hraw, hts, hlink = st.held.pop(0)
                self._put_trade(symbol, st, hrec, hraw, hts, hlink)
            n += self._put_trade(symbol, st, rec, item, received_ms, None)
        return n

    def _unfilled(self: StreamerParts, symbol: str, first: int, last: int, reason: str) -> None:
        """Ids that will not reach Kinesis: counted, logged, and written down as a gap record
        once the first trade after them gives its end in time."""
        n = last - first + 1
        self.counts["trade_ids_unfilled"] += n
        log.error("%s: trade ids %d..%d (%d) not on Kinesis: %s", symbol, first, last, n, reason)
        st = self._trades[symbol]
        gap = {"symbol": symbol, "first_id": first, "last_id": last, "ids": n, "reason": reason,
               "from_ts": st.last_ts, "to_ts": None}  # fmt: skip
        self.gap_records.append(gap)
        st.open_gaps.append(gap)

    def _close_gaps(self: StreamerParts, st: TradeIds, tid: int, ts: int | None) -> None:
        for gap in [g for g in st.open_gaps if tid > g["last_id"]]:
            st.open_gaps.remove(gap)
            gap["to_ts"] = ts
            if self._gap_store is not None and self._loop is not None:
                task = asyncio.ensure_future(self._write_gap(gap))
                self._gap_writes.add(task)
                task.add_done_callback(self._gap_writes.discard)

    async def _write_gap(self: StreamerParts, gap: dict[str, Any]) -> None:
        store = self._gap_store
        assert store is not None
        detail = {"reason": gap["reason"], "epoch": self.epoch, "streamer": self.cfg.name,
                  "from_ts": gap["from_ts"], "to_ts": gap["to_ts"]}  # fmt: skip
        try:
            gap["uri"] = await asyncio.to_thread(
                store.write, gap["symbol"], gap["first_id"], gap["last_id"], **detail
            )
        except Exception as exc:  # the log line and the counters still tell
            self.counts["gap_record_failures"] += 1
            log.error("gap record %s not written: %r", gap, exc)

    # --- REST --------------------------------------------------------------------------------

    def _rest_client(self: StreamerParts) -> BinanceRestClient:
        if self._rest is None:
            self._rest = BinanceRestClient(self.settings.binance_rest_url, sleep=self._rest_sleep)
        return self._rest

    def _rest_sleep(self: StreamerParts, seconds: float) -> None:
        """The REST client's backoff sleep, cut short when the streamer stops: a fill retrying
        an unreachable REST must not hold the process (its hole is the next process's)."""
        if self._rest_stop.wait(seconds):
            raise StreamerStopping("the streamer is stopping")

    async def _rest_get(self: StreamerParts, path: str, params: dict[str, Any], weight: int) -> Any:
        await self.pacer.acquire(weight, urgent=True)
        client = self._rest_client()
        return await asyncio.to_thread(client.get, path, params, weight)

    async def _check_symbols(self: StreamerParts) -> None:
        """One ``exchangeInfo`` call: every configured symbol must be listed by Binance.

        With a short retry budget: when REST cannot be reached the check is skipped (logged,
        counted) and the stream starts anyway; the symbols passed this check before, and a
        stream without REST still beats no stream."""
        await self.pacer.acquire(WEIGHT_EXCHANGE_INFO, urgent=True)
        check = BinanceRestClient(self.settings.binance_rest_url, max_attempts=3,
                                  backoff_cap_s=1.0, sleep=self._rest_sleep)  # fmt: skip
        try:
            info = await asyncio.to_thread(check.exchange_info)
        except BinanceUnavailable as exc:
            self.counts["symbol_check_skipped"] += 1
            log.warning("symbols not checked against exchangeInfo (REST unreachable): %s", exc)
            return
        # The limit Binance announces is the one the fills and resyncs keep to.
        self._rest_client().weight_limit = check.weight_limit
        listed = {s.get("symbol"): s.get("status") for s in info.get("symbols", [])}
        unknown = [s for s in self.symbols if s not in listed]
        if unknown:
            raise UnknownSymbolError(
                f"Binance does not list {', '.join(unknown)} (GET /api/v3/exchangeInfo): "
                "fix the configured symbols; nothing was streamed"
            )
        idle = {s: listed[s] for s in self.symbols if listed[s] != "TRADING"}
        if idle:
            log.warning("symbols listed but not trading (no trades will come): %s", idle)
