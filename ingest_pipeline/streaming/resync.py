"""The streamer's depth chain (``streamer.Streamer`` mixes this in): a diff whose ``U`` is not
the previous ``u + 1`` is a gap; the symbol's book is resynced from a REST snapshot published on
the depth stream as a ``DepthSnapshot`` record."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from ingest_pipeline.binance.history import fetch_depth_snapshot
from ingest_pipeline.binance.rest import depth_weight
from ingest_pipeline.binance.stream import now_ms
from ingest_pipeline.records import (
    DEPTH_DELTA,
    DEPTH_SNAPSHOT,
    PRODUCER_EPOCH,
)
from ingest_pipeline.storage.kinesis import ProducerClosedError
from ingest_pipeline.streaming.config import (
    RESYNC_ATTEMPTS,
    StreamerStopping,
)

if TYPE_CHECKING:
    from ingest_pipeline.streaming.parts import StreamerParts

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DepthSync:
    """One symbol's depth resync: the ``U`` of the first diff after the latest gap, a counter
    of gaps (a gap during a fetch asks for another), and when the book went invalid."""

    need_from: int = 0
    generation: int = 0
    since: float = 0.0
    task: asyncio.Future[None] | None = None


class DepthResync:
    """Depth chain checks and resyncs; the state lives on the ``Streamer``."""

    # Written here, set up by ``Streamer.__init__`` (declared for the type checker).
    _last_gap: float | None

    # --- depth resync --------------------------------------------------------------------------

    def _need_resync(self: StreamerParts, symbol: str, first_update_id: int) -> None:
        if self.cfg.resync_depth_limit <= 0 or self._loop is None or self._stop is None:
            return
        ds = self._depth[symbol]
        ds.need_from = first_update_id
        ds.generation += 1
        if ds.task is None:
            ds.since = time.monotonic()
            if not self._stop.is_set():
                ds.task = self._spawn(self._resync(symbol))

    async def _resync(self: StreamerParts, symbol: str) -> None:
        """Fetch ``symbol``'s book and publish it on the depth stream as a DepthSnapshot, once
        it is new enough to bridge to the diffs put since the gap (``L + 1 >= U``)."""
        ds = self._depth[symbol]
        limit = self.cfg.resync_depth_limit
        attempts = 0
        try:
            while True:
                generation, need = ds.generation, ds.need_from
                await self.pacer.acquire(1 + depth_weight(limit))
                fetched = await asyncio.to_thread(
                    fetch_depth_snapshot, self._rest_client(), symbol, limit
                )
                for bad in fetched.rejects:
                    reason = f"depth snapshot: {bad['reason']}"
                    self._dead_letter(reason, bad["raw"], now_ms(), None)
                snap = fetched.records[0] if fetched.records else None
                if snap is None or snap["last_update_id"] + 1 < need:
                    attempts += 1
                    if attempts >= RESYNC_ATTEMPTS:
                        self.counts["resync_failures"] += 1
                        log.error("%s: no usable depth snapshot after %d tries (need L >= %d)",
                                  symbol, attempts, need - 1)  # fmt: skip
                        return
                    await asyncio.sleep(0.2 * attempts)
                    continue
                if self.lease is not None and not self.lease.valid():
                    self._lapsed()
                    return
                if self.epoch is not None:
                    snap[PRODUCER_EPOCH] = self.epoch
                try:
                    # run() sets the producer before any resync starts.
                    self._producer.put(  # type: ignore[union-attr]
                        self.settings.stream_of(DEPTH_SNAPSHOT), symbol, orjson.dumps(snap)
                    )
                except ProducerClosedError as exc:
                    self._refused(exc)
                    return
                self.counts["depth_snapshots"] += 1
                # Counted with the depth stream's records: ``records_out`` is per stream.
                self.records_out[DEPTH_DELTA] += 1
                self._m_out[DEPTH_DELTA].inc()
                seconds = round(time.monotonic() - ds.since, 3)
                self.resyncs.append({"symbol": symbol, "last_update_id": snap["last_update_id"],
                                     "after_u": need - 1, "seconds": seconds,
                                     "tries": attempts + 1})  # fmt: skip
                log.info("%s: depth snapshot L=%d published %.2f s after the book broke",
                         symbol, snap["last_update_id"], seconds)  # fmt: skip
                if ds.generation == generation:
                    return
                ds.since = time.monotonic()  # another gap while fetching: once more
        except StreamerStopping:
            return
        except Exception as exc:
            self.counts["resync_failures"] += 1
            log.error("%s: depth resync failed: %r", symbol, exc)
        finally:
            ds.task = None

    def _check_chain(self: StreamerParts, record: dict[str, Any], symbol: str) -> None:
        first, final = record["first_update_id"], record["final_update_id"]
        prev = self._last_u.get(symbol)
        if prev is not None and first != prev + 1:
            if final <= prev:
                # An older diff of another batching (never seen on one chain): delivered, but
                # it neither extends nor breaks the chain.
                self.counts["depth_stale"] += 1
                return
            record["gap"] = True
            self.gaps[symbol] += 1
            self.metrics.gaps.labels(symbol).inc()
            self._last_gap = time.monotonic()
            log.warning(
                "depth gap on %s: U=%d after u=%d (%d update ids missing)",
                symbol, first, prev, first - prev - 1,
            )  # fmt: skip
            self._need_resync(symbol, first)
        elif symbol not in self._depth_started:
            # The first diff of this process: books downstream need a snapshot to start from.
            self._need_resync(symbol, first)
        self._depth_started.add(symbol)
        self._last_u[symbol] = final
