"""The streamer's hand-over between processes (``streamer.Streamer`` mixes this in): at start it
takes the lease of ``cfg.name`` (waiting as a standby while another process holds it) and learns
where the previous holder stopped (its checkpoint, corrected by the trade stream's tail); while
it streams, a thread renews the lease with the checkpoint as its payload, and the producer may
only send while the lease is held (``_gate``). The lease and checkpoint are ``lease.py`` and
``continuity.py``."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ingest_pipeline.aws import aws_client
from ingest_pipeline.binance.stream import now_ms
from ingest_pipeline.records import TRADE
from ingest_pipeline.storage.kinesis_reader import KinesisReader
from ingest_pipeline.streaming.config import STATE_S3_CONFIG
from ingest_pipeline.streaming.continuity import GapStore, resume_points, tail_trades
from ingest_pipeline.streaming.lease import LeaseLost, LeaseUnavailable, S3Lease, holder_identity

if TYPE_CHECKING:
    from ingest_pipeline.streaming.parts import StreamerParts

log = logging.getLogger(__name__)


class Takeover:
    """The lease, the checkpoint and the resume points of the ``Streamer`` this is mixed into."""

    # Written here, set up by ``Streamer.__init__`` (declared for the type checker).
    lease: S3Lease | None
    fenced: str | None
    _gap_store: GapStore | None
    _checkpoint_at: float | None

    def _gate(self: StreamerParts) -> bool:
        """The producer's fencing gate: the lease is held. Before it is acquired (a spill file
        adopted at start waits for it) the answer is "not now" (raising), never "no", which
        would fence the producer for good."""
        lease = self.lease
        if lease is None or lease.epoch is None:
            raise LeaseUnavailable("the lease is not acquired yet", 1.0)
        return lease.valid()

    async def _take_over(self: StreamerParts, stop: asyncio.Event) -> None:
        """Acquire the lease (waiting while another process holds it), then learn where the
        previous holder stopped: its checkpoint, corrected by the trade stream's tail."""
        settings = self.settings
        s3 = aws_client("s3", settings, STATE_S3_CONFIG)
        prefix = self.cfg.state_prefix
        self._gap_store = GapStore(aws_client("s3", settings), settings.bucket, prefix)
        self.lease = lease = S3Lease(
            s3, settings.bucket, self.cfg.state_prefix, self.cfg.name, self.symbols,
            ttl_s=self.cfg.lease_ttl_s, skew_s=self.cfg.lease_skew_s,
            holder=holder_identity(self.cfg.name),
        )  # fmt: skip
        began = time.monotonic()
        while True:
            try:
                previous = await asyncio.to_thread(lease.try_acquire)
                break
            except LeaseUnavailable as exc:
                self.state = "standby"
                self.takeover["waiting_for"] = str(exc)
                log.warning("waiting for the lease: %s (retry in %.1f s)", exc, exc.retry_in_s)
                try:
                    await asyncio.wait_for(stop.wait(), min(exc.retry_in_s, self.cfg.lease_renew_s))
                    return
                except TimeoutError:
                    continue
        self.state = "starting"
        self.epoch = lease.epoch
        checkpoint = (previous or {}).get("payload")
        now = now_ms()
        if checkpoint and checkpoint.get("written_at_ms"):
            from_ms = checkpoint["written_at_ms"] - int(self.cfg.tail_lead_s * 1000)
        else:
            from_ms = now - int(self.cfg.tail_lookback_s * 1000)
        t0 = time.monotonic()
        reader = KinesisReader(aws_client("kinesis", settings))
        tail = await asyncio.to_thread(reader.read_tail, self._routes[TRADE], from_ms, now + 1)
        self.resume = resume_points(checkpoint, tail_trades(tail.records, self.symbols),
                                    self.symbols)  # fmt: skip
        for sym, r in self.resume.items():
            self._trades[sym].last = r.frontier
            self._trades[sym].last_ts = r.frontier_ts
            self._trades[sym].present = list(r.present)
            if r.depth_u is not None:
                self._last_u[sym] = r.depth_u
        if self._acks is not None:
            self._acks.seed({s: (r.frontier, r.frontier_ts) for s, r in self.resume.items()
                             if r.frontier is not None})  # fmt: skip
        self.takeover = {
            "epoch": self.epoch,
            "waited_s": round(t0 - began, 3),
            "previous_holder": (previous or {}).get("holder"),
            "previous_released": (previous or {}).get("released"),
            "checkpoint_age_s": round((now - checkpoint["written_at_ms"]) / 1000, 3)
            if checkpoint and checkpoint.get("written_at_ms") else None,
            "tail_from_ms": from_ms,
            "tail_records": len(tail.records),
            "tail_read_s": round(time.monotonic() - t0, 3),
            "frontiers": {s: r.frontier for s, r in self.resume.items()},
            "sources": {s: r.source for s, r in self.resume.items()},
        }  # fmt: skip
        log.info("took over as epoch %d: %s", self.epoch, self.takeover)

    def _checkpoint(self: StreamerParts) -> dict[str, Any]:
        """The payload stored with every lease renewal (``continuity.py``)."""
        acked = self._acks.snapshot() if self._acks is not None else {}
        previous = (self.lease.payload or {}) if self.lease is not None else {}
        entries = dict(previous.get("symbols", {}))  # symbols no longer streamed keep theirs
        # Called from the lease thread: dict() copies in one step under the GIL.
        last_u = dict(self._last_u)
        for sym in self.symbols:
            entry = dict(entries.get(sym, {}))
            if sym in acked:
                entry["trade_id"], entry["trade_ts"] = acked[sym]
            if sym in last_u:
                entry["depth_u"] = last_u[sym]
            if entry:
                entries[sym] = entry
        return {"written_at_ms": now_ms(), "epoch": self.epoch, "symbols": entries}

    def _keep_lease(self: StreamerParts, stop: threading.Event) -> None:
        """Renew the lease (with the checkpoint) every ``lease_renew_s``, on a thread of its
        own: a busy event loop must not let the lease lapse."""
        lease = self.lease
        assert lease is not None
        while not stop.wait(self.cfg.lease_renew_s):
            try:
                lease.renew(self._checkpoint())
                self._checkpoint_at = time.monotonic()
            except LeaseLost as exc:
                self.fenced = str(exc)
                log.error("lease lost: %s; stopping (nothing more is sent)", exc)
                self.stop()
                return
            except Exception as exc:  # S3 trouble: retried; the lease lapses if it lasts
                self.counts["lease_renew_errors"] += 1
                log.warning("lease renewal failed (%.1f s of lease left): %r",
                            lease.remaining_s(), exc)  # fmt: skip
