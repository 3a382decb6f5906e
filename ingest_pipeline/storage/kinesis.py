"""Kinesis producer that loses nothing it reports as accepted (SPEC §3 real time, §5 health):
batching, retries of the failed entries only, a circuit breaker, a memory buffer backed by spill
files on disk, adoption of dead producers' spill directories, and a fencing gate.

Where a record lives between ``put`` and its acknowledgement
- Kinesis healthy (the steady state): in memory only, for the linger plus one call (tens of
  ms). No disk I/O at all on this path.
- Journaled: every ``spill_interval_s`` (0.2 s) the spill thread writes and fsyncs a copy of
  the records held only in memory that are older than ``spill_after_s`` (1 s), or of all of
  them while the circuit is not closed, a call hangs, the producer spills, is fenced or stops.
  The records keep their place in the send queues; the journal file is deleted at its last
  acknowledgement.
- Spilled: while the memory buffer is full (``max_buffer_records`` / ``max_buffer_bytes``) or
  older spill files wait for replay (leftovers, adopted directories), new records go to disk
  only: they wait in memory for at most one spill interval, are written and fsync'd by the
  spill thread, and are read back and sent, oldest file first, when Kinesis takes records again.
  ``put`` itself never touches the disk and never raises ``OSError``.

Guarantees
- At least once. A record accepted by ``put`` is acknowledged by Kinesis, queued in memory, in
  an fsync'd spill or journal file, or counted in ``stats().dropped`` with its reason. Duplicates
  come from a call that timed out or was reset after Kinesis stored it, from spill and journal
  files replayed whole after a crash, fence or adoption although partly acknowledged, and from a
  failed write that could not be cut back (its whole records are also written again).
- Crash window (kill -9, power loss): a record is on disk at most ``spill_after_s +
  spill_interval_s`` = 1.2 s after ``put`` plus the time of that write and fsync, unless Kinesis
  acknowledged it first. A crash loses at most the unacknowledged records put in the last 1.2 s
  (6,000 records at 5,000 records/s); once an outage is detected (the circuit is not closed, or
  a call has been unanswered for ``spill_after_s``) or while spilling, at most those of the last
  ``spill_interval_s`` = 0.2 s (1,000 at 5,000/s). A clean ``close`` loses none. While the spill
  disk fails, this window does not hold (see below).
- Disk errors (ENOSPC, EDQUOT, EFBIG, EIO, ...) are a state, not an exception: the producer keeps
  the records in memory, reports ``stats().disk_error``, retries the disk every ``disk_retry_s``
  and keeps sending what Kinesis takes. A failed write is cut back to the end of the last whole
  record, so no torn record is left in the middle of a file. Memory is bounded: the send queues
  hold at most ``max_buffer_bytes`` (128 MiB) put in this process, the queue to the disk at most
  ``max_unspilled_records`` / ``max_unspilled_bytes`` (100,000 / 64 MiB), plus one spill file
  being replayed (``spill_file_max_bytes``, 16 MiB). Past that hard cap ``put`` drops the new
  record: counted in ``dropped`` by reason, logged, and ``flush`` / ``close`` return False from
  then on. Records still only in memory when ``close`` gives up on the disk are dropped the same
  way.
- Spill files are framed: each record starts with a magic and a crc32 of its lengths and bytes.
  The reader skips a damaged region to the next valid record, so one bad record never hides the
  ones after it; damaged regions and their bytes are counted and logged.
- Order per partition key, within a stream: records are sent in ``put`` order; one sender
  thread makes one call at a time, and a stream with failed entries sends nothing new until
  they are in. PutRecords itself may store a later entry of a key while rejecting an earlier
  one of the same call (AWS documents this); such a rejected entry lands after the later ones
  of its own batch, never after a later batch. Spilled records are replayed before any record
  put after them. File names sort in creation order and a record goes to a disk-only file only
  once every record held in memory before it is journaled, so a restart replays in put order.
- Fencing: ``gate()`` runs right before every PutRecords call. False fences the producer for
  good: nothing more is sent, everything unacknowledged is fsync'd to the spill directory, the
  directory lock is then released so a successor can adopt it, ``put`` raises
  ``ProducerFencedError`` and ``flush`` / ``close`` return False. A gate that raises means "not
  now": the batch waits ``gate_retry_s`` and asks again.
- One producer per spill directory (an exclusive lock; ``SpillDirLockedError`` names the holder).
  With ``adopt_from`` (the parent of every run's spill directory) the producer takes over, at
  start and every ``adopt_interval_s``, the spill files of sibling directories whose lock is
  free (their owner died or was fenced): moved in by rename and replayed before records put
  after the adoption (records already queued in memory then go first: two producers' records
  have no common order). A directory whose owner holds its lock is left alone. ``adopt_from``
  itself is adopted the same way (without being removed) when it holds a ``.lock``: the single
  spill directory of the layout before per-run directories.

Threads: ``put`` runs on the caller's thread (the streamer's event loop) and only appends to a
deque. A sender thread batches and calls PutRecords; a spill thread journals, spills, fsyncs,
retries the disk and adopts. Hooks run on the sender thread, outside the producer's lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.circuit import CircuitState
from ingest_pipeline.storage.kinesis_config import (
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    MAX_PARTITION_KEY_CHARS,
    MAX_RECORD_BYTES,
    PRODUCER_CLIENT_CONFIG,
    AckHook,
    CircuitHook,
    Gate,
    NoopKinesisClient,
    ProducerClosedError,
    ProducerConfig,
    ProducerFencedError,
    ProducerStats,
    RecordSink,
    RecordTooLargeError,
    producer_client,
)
from ingest_pipeline.storage.kinesis_sender import Sender
from ingest_pipeline.storage.kinesis_spiller import Spiller
from ingest_pipeline.storage.kinesis_state import ProducerState
from ingest_pipeline.storage.spill import SPILL_GLOB, by_name, lock_dir

# The producer's public names, whichever module of the producer defines them: import them from
# here.
__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_RECORDS",
    "MAX_PARTITION_KEY_CHARS",
    "MAX_RECORD_BYTES",
    "PRODUCER_CLIENT_CONFIG",
    "AckHook",
    "CircuitHook",
    "Gate",
    "KinesisProducer",
    "NoopKinesisClient",
    "ProducerClosedError",
    "ProducerConfig",
    "ProducerFencedError",
    "ProducerStats",
    "RecordSink",
    "RecordTooLargeError",
    "producer_client",
]

log = logging.getLogger(__name__)


class KinesisProducer:
    """``put`` records; a sender thread delivers them to Kinesis with PutRecords.

    ``client`` is a boto3 Kinesis client (see ``producer_client``) or anything with its
    ``put_records``. Leftover spill files in ``spill_dir`` (and those adopted from dead siblings
    under ``adopt_from``) are replayed first, before any new record. Hooks:
    ``on_ack(stream, n_records, oldest_enqueue_monotonic)`` after each acknowledged batch (for
    replayed records the enqueue time is when their file was loaded),
    ``on_circuit_change(old, new)``; both run on the sender thread. ``gate()``: see the module
    docstring (fencing).

    This class is the caller's side (``put``, ``flush``, ``close``, ``stats``) and the owner of
    the two threads; ``kinesis_sender.Sender`` and ``kinesis_spiller.Spiller`` are their bodies,
    and all three share one ``kinesis_state.ProducerState`` under its one lock.
    """

    def __init__(
        self,
        client: Any,
        spill_dir: str | os.PathLike[str],
        config: ProducerConfig | None = None,
        *,
        on_ack: AckHook | None = None,
        on_circuit_change: CircuitHook | None = None,
        gate: Gate | None = None,
        adopt_from: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        path = Path(spill_dir)
        self._state = s = ProducerState(config or ProducerConfig(), clock, path, lock_dir(path))
        self._sender = Sender(
            s, client, on_ack=on_ack, on_circuit_change=on_circuit_change, gate=gate
        )
        self._spiller = Spiller(s, Path(adopt_from) if adopt_from is not None else None)
        if adopt_from is not None:
            self._spiller.adopt()
        # Sorted by name, which is creation order: the replay order, now and after a restart.
        s.sealed = sorted(s.spill_dir.glob(SPILL_GLOB), key=by_name)
        # Leftover files hold the oldest records: new ones queue behind them on disk until the
        # replay has caught up, which keeps them in order.
        s.spilling = bool(s.sealed)
        if s.sealed:
            log.info("replaying %d spill files from %s", len(s.sealed), s.spill_dir)

        self._sender_thread = threading.Thread(
            target=self._sender.run, name="kinesis-sender", daemon=True
        )
        self._spill_thread = threading.Thread(
            target=self._spiller.run, name="kinesis-spill", daemon=True
        )
        self._sender_thread.start()
        self._spill_thread.start()

    @classmethod
    def from_settings(
        cls, settings: Settings, spill_dir: str | os.PathLike[str], **kwargs: Any
    ) -> KinesisProducer:
        return cls(producer_client(settings), spill_dir, **kwargs)

    # --- caller side ---------------------------------------------------------------------

    def put(self, stream: str, partition_key: str, data: bytes) -> None:
        """Queue one record; never blocks on the network or the disk. Raises
        ``RecordTooLargeError``, ``ProducerClosedError`` / ``ProducerFencedError``; a record it
        cannot keep (memory hard cap reached) is counted in ``stats().dropped``."""
        s = self._state
        if not 0 < len(partition_key) <= MAX_PARTITION_KEY_CHARS:
            raise ValueError(f"partition key must have 1 to {MAX_PARTITION_KEY_CHARS} characters")
        size = len(data) + len(partition_key.encode())
        with s.cv:
            if s.closed:
                if s.fenced:
                    raise ProducerFencedError("put after the gate fenced this producer")
                raise ProducerClosedError("put after close")
            if size > MAX_RECORD_BYTES:
                s.counts["refused_oversize"] += 1
                raise RecordTooLargeError(
                    f"record of {size} bytes (data + partition key) for {stream!r} exceeds "
                    f"Kinesis's {MAX_RECORD_BYTES}"
                )
            s.counts["put"] += 1
            if (
                s.spilling
                or s.buffer_records >= s.cfg.max_buffer_records
                or s.buffer_bytes + size > s.cfg.max_buffer_bytes
            ):
                self._to_disk_locked(stream, partition_key, data, size)
                return
            st = s.stream_locked(stream)
            st.mem.append((partition_key, data, size, s.clock(), None))
            st.mem_bytes += size
            s.buffer_records += 1
            s.buffer_bytes += size
            # The sender sleeps until the oldest record's linger ends: wake it for a first
            # record or a full batch only.
            n = len(st.mem)
            if n == 1 or n == s.cfg.max_batch_records or st.mem_bytes >= s.cfg.max_batch_bytes:
                s.cv.notify()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Send everything now, spill included; True once all of it is acknowledged (never
        after a record was dropped, nor once fenced)."""
        s = self._state
        with s.cv:
            s.flush_waiters += 1
            s.cv.notify_all()
            try:
                s.cv.wait_for(lambda: s.fenced or s.idle_locked(), timeout_s)
                return s.clean_locked()
            finally:
                s.flush_waiters -= 1

    def close(self, timeout_s: float = 30.0) -> bool:
        """Refuse new records, flush for up to ``timeout_s``, then stop; what is still
        unacknowledged is fsync'd to the spill directory for the next start (or an adopter).
        True if all was sent."""
        s = self._state
        with s.cv:
            if s.final:
                return s.clean_locked()
            s.closed = True
        deadline = time.monotonic() + timeout_s
        flushed = self.flush(timeout_s)
        with s.cv:
            s.stop = True
            s.cv.notify_all()
        self._sender_thread.join(max(deadline - time.monotonic(), 0) + s.cfg.call_bound_s)
        if self._sender_thread.is_alive():
            log.error("kinesis sender did not stop; its in-flight batch goes to the spill dir")
        # The spill thread writes what is left; a failing disk gets a few more tries.
        final_deadline = max(deadline, time.monotonic() + 2 * s.cfg.disk_retry_s)
        with s.cv:
            s.final = True
            s.final_deadline = s.clock() + (final_deadline - time.monotonic())
        s.wake.set()
        self._spill_thread.join(max(final_deadline - time.monotonic(), 0) + 5)
        if self._spill_thread.is_alive():
            log.error("kinesis spill thread did not stop: the spill disk hangs")
        with s.cv:
            return flushed and s.clean_locked()

    def __enter__(self) -> KinesisProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def circuit_state(self) -> CircuitState:
        s = self._state
        with s.lock:
            return s.breaker.state

    def stats(self) -> ProducerStats:
        s = self._state
        with s.lock:
            c = s.counts
            return ProducerStats(
                put=c["put"],
                acknowledged=c["acknowledged"],
                failed_entries=c["failed_entries"],
                retried=c["retried"],
                call_failures=c["call_failures"],
                spilled=c["spilled"],
                replayed=c["replayed"],
                refused_oversize=c["refused_oversize"],
                batches_sent=c["batches_sent"],
                last_batch_records=s.last_batch[0],
                last_batch_bytes=s.last_batch[1],
                max_batch_records_seen=s.max_batch[0],
                max_batch_bytes_seen=s.max_batch[1],
                buffer_records=s.buffer_records,
                buffer_bytes=s.buffer_bytes,
                spill_files=len(s.sealed) + len(s.refs) + (s.writer is not None),
                spill_damaged_regions=c["spill_damaged_regions"],
                circuit_state=s.breaker.state,
                consecutive_failures=s.breaker.consecutive_failures,
                circuit_opens=s.breaker.opens,
                spill_unreadable_bytes=c["spill_unreadable_bytes"],
                journaled=c["journaled"],
                unspilled_records=s.unspilled_records,
                disk_error=s.disk_error,
                disk_errors=c["disk_errors"],
                dropped=c["dropped"],
                dropped_reasons=dict(s.dropped_reasons),
                fenced=s.fenced,
                adopted_dirs=c["adopted_dirs"],
                adopted_files=c["adopted_files"],
                gate_errors=c["gate_errors"],
            )

    def _to_disk_locked(self, stream: str, partition_key: str, data: bytes, size: int) -> None:
        s = self._state
        cfg = s.cfg
        if (
            s.unspilled_records >= cfg.max_unspilled_records
            or s.unspilled_bytes + size > cfg.max_unspilled_bytes
        ):
            s.drop_locked(1, "disk_error" if s.disk_error else "spill_backlog")
            return
        if not s.spilling:
            log.warning("kinesis buffer full: new records go to %s", s.spill_dir)
            s.spilling = True
        s.unspilled.append((stream, partition_key, data, size, s.clock()))
        s.unspilled_records += 1
        s.unspilled_bytes += size
