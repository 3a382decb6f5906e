"""The streamer's reports (``streamer.Streamer`` mixes this in): the progress line, ``/health`` and
``/metrics``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ingest_pipeline.storage.circuit import CircuitState
from ingest_pipeline.streaming.config import DATA_TYPES

if TYPE_CHECKING:
    from ingest_pipeline.streaming.parts import StreamerParts


class Reporting:
    """Progress, health and metrics of the ``Streamer`` this is mixed into."""

    # --- reporting ---------------------------------------------------------------------------

    def progress_line(self: StreamerParts) -> str:
        s = self._producer_stats()
        ins = " ".join(f"{t}={self.messages_in[t]}" for t in DATA_TYPES)
        dups = sum(self.duplicates.values())
        line = (
            f"in {ins} | out {sum(self.records_out.values())} dup {dups} "
            f"gaps {sum(self.gaps.values())} malformed {self.counts['malformed']} "
            f"reconnects {sum(sh.reconnects for sh in self.shards)}"
        )
        if s is not None:
            line += (
                f" | kinesis acked {s.acknowledged} buffer {s.buffer_records} "
                f"spilled {s.spilled} retried {s.retried} circuit {s.circuit_state}"
            )
        return line

    def health(self: StreamerParts) -> dict[str, Any]:
        """A JSON-able snapshot: ``status`` ok/degraded/down with ``reasons``, and the figures."""
        now = time.monotonic()
        s = self._producer_stats()
        shards = [sh.snapshot() for sh in self.shards]
        connected = sum(1 for sh in self.shards if sh.connected)
        down: list[str] = []
        degraded: list[str] = []
        if self.state != "running":
            down.append(f"streamer {self.state}")
        elif connected == 0:
            down.append("no WebSocket connection open")
        elif connected < len(self.shards):
            n = len(self.shards)
            degraded.append(f"{n - connected} of {n} connections down")
        streams: dict[str, Any] = {}
        for t in DATA_TYPES:
            last = self._last_msg.get(t)
            age = None if last is None else round(now - last, 3)
            streams[t] = {
                "kinesis_stream": self._routes[t],
                "messages_in": self.messages_in[t],
                "records_out": self.records_out[t],
                "duplicates": self.duplicates[t],
                "last_message_age_s": age,
            }
            if self.state == "running" and connected:
                since = now - (last if last is not None else (self.started_at or now))
                if since > self.cfg.stale_after_s:
                    degraded.append(f"no {t} message for {since:.0f} s")
        symbols = {
            sym: {
                t: round(now - self._last_msg_symbol[(t, sym)], 3)
                if (t, sym) in self._last_msg_symbol
                else None
                for t in DATA_TYPES
            }
            for sym in self.symbols
        }
        kinesis: dict[str, Any] = {}
        if s is not None:
            kinesis = {
                "circuit_state": str(s.circuit_state),
                "circuit_opens": s.circuit_opens,
                "buffer_records": s.buffer_records,
                "buffer_bytes": s.buffer_bytes,
                "put": s.put,
                "acknowledged": s.acknowledged,
                "failed_entries": s.failed_entries,
                "retried": s.retried,
                "call_failures": s.call_failures,
                "spilled": s.spilled,
                "replayed": s.replayed,
                "spill_files": s.spill_files,
                "journaled": s.journaled,
                "unspilled_records": s.unspilled_records,
                "disk_error": s.disk_error,
                "disk_errors": s.disk_errors,
                "dropped": s.dropped,
                "dropped_reasons": dict(s.dropped_reasons),
                "fenced": s.fenced,
                "spill_damaged_regions": s.spill_damaged_regions,
                "adopted_files": s.adopted_files,
                "problems": s.problems,
            }
            degraded += s.problems
            if s.circuit_state != CircuitState.CLOSED:
                degraded.append(f"kinesis circuit {s.circuit_state}")
            if s.spill_files:
                degraded.append(f"kinesis spilling ({s.spill_files} spill files)")
        if self.counts["trade_ids_unfilled"]:
            degraded.append(f"{self.counts['trade_ids_unfilled']} trade ids missed and unfilled")
        if self.state == "standby":
            down.append(f"waiting for the lease: {self.takeover.get('waiting_for')}")
        if self.fenced is not None:
            down.append(f"fenced: {self.fenced}")
        filling = sum(1 for st in self._trades.values() if st.fill is not None)
        resyncing = sum(1 for ds in self._depth.values() if ds.task is not None)
        if self._last_gap is not None and now - self._last_gap < self.cfg.recent_gap_s:
            degraded.append(f"depth gap in the last {self.cfg.recent_gap_s:.0f} s")
        status = "down" if down else "degraded" if degraded else "ok"
        return {
            "status": status,
            "reasons": down + degraded,
            "state": self.state,
            "uptime_s": round(now - self.started_at, 3) if self.started_at else 0.0,
            "symbols_count": len(self.symbols),
            "connections": {"shards": len(self.shards), "connected": connected},
            "reconnects": sum(sh.reconnects for sh in self.shards),
            "reconnect_reasons": self._reconnect_reasons(),
            "gaps": sum(self.gaps.values()),
            "gaps_by_symbol": dict(self.gaps),
            "malformed": self.counts["malformed"],
            "server_shutdowns": self.counts["server_shutdown"],
            "control_messages": self.counts["control"],
            "depth_stale": self.counts["depth_stale"],
            "trade_gaps": self.counts["trade_gaps"],
            "trades_backfilled": self.counts["trades_backfilled"],
            "trade_ids_unfilled": self.counts["trade_ids_unfilled"],
            "fills_running": filling,
            "continuity": self._continuity_health(filling, resyncing),
            "streams": streams,
            "symbols": symbols,
            "kinesis": kinesis,
            "shards": shards,
        }

    def _continuity_health(self: StreamerParts, filling: int, resyncing: int) -> dict[str, Any]:
        lease = self.lease
        fills = list(self.fills)
        last_fills = fills[-5:]
        last_resyncs = list(self.resyncs)[-5:]
        at_start = [f for f in fills if f["at_start"]]
        return {
            # The hole this process filled after its predecessor stopped.
            "start_fill": {
                "ids": sum(f["filled"] for f in at_start),
                "seconds": max((f["seconds"] for f in at_start), default=None),
                "by_symbol": {f["symbol"]: f["filled"] for f in at_start[:20]},
            },
            "name": self.cfg.name,
            "epoch": self.epoch,
            "lease": None if lease is None else {
                "held": lease.valid(),
                "remaining_s": round(lease.remaining_s(), 3),
                "renewals": lease.renewals,
                "lost": lease.lost,
            },
            "checkpoint_age_s": None if self._checkpoint_at is None
            else round(time.monotonic() - self._checkpoint_at, 3),
            "takeover": {k: v for k, v in self.takeover.items() if k != "frontiers"},
            "fills": {"running": filling, "done": len(self.fills), "last": last_fills},
            "gap_records": len(self.gap_records),
            "gap_ids": sum(g["ids"] for g in self.gap_records),
            "held_dropped_at_stop": self.counts["held_dropped_at_stop"],
            "depth_resyncs": {"published": self.counts["depth_snapshots"],
                              "running": resyncing, "failed": self.counts["resync_failures"],
                              "last": last_resyncs},
            "rest": {"weight_spent": self.pacer.spent,
                     "weight_wait_s": round(self.pacer.waited_s, 3),
                     "budget_per_minute": self.cfg.rest_weight_per_minute},
        }  # fmt: skip

    def refresh_metrics(self: StreamerParts) -> None:
        """Update the scrape-time gauges (ages, open connections)."""
        now = time.monotonic()
        for t in DATA_TYPES:
            last = self._last_msg.get(t)
            if last is not None:
                self.metrics.last_message_age.labels(t).set(now - last)
        self.metrics.connections.set(sum(len(sh.links) for sh in self.shards))
