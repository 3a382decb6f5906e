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

import bisect
import collections
import dataclasses
import fcntl
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from botocore.config import Config

from ingest_pipeline.aws import aws_client
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.circuit import CircuitBreaker, CircuitState
from ingest_pipeline.storage.spill import (
    LOCK_NAME,
    PROBE_NAME,
    SPILL_GLOB,
    SpillRecord,
    SpillRef,
    SpillWriter,
    by_name,
    describe_error,
    encode_spill_record,
    fsync_dir,
    lock_dir,
    read_spill_file,
)

log = logging.getLogger(__name__)

# Kinesis limits: a record's data plus its partition key, a PutRecords call, a partition key.
MAX_RECORD_BYTES = 1024 * 1024
MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 5 * 1024 * 1024
MAX_PARTITION_KEY_CHARS = 256

# botocore makes exactly one attempt per call ("total_max_attempts" counts the first one;
# "max_attempts" would count retries only): our loop owns retries, so every failure is seen by
# the circuit breaker and retried without blocking the other streams. The timeouts bound how
# long the sender can sit in one call, hence how long ``close`` waits for an in-flight call.
PRODUCER_CLIENT_CONFIG = Config(
    connect_timeout=2,
    read_timeout=10,
    retries={"total_max_attempts": 1, "mode": "standard"},
    tcp_keepalive=True,
)
_CALL_BOUND_S = 2 + 10 + 1

_IDLE_WAIT_S = 1.0


class RecordTooLargeError(ValueError):
    """Data plus partition key exceed Kinesis's 1 MiB per record: the record is never sent."""


class ProducerClosedError(RuntimeError):
    """``put`` after ``close``."""


class ProducerFencedError(ProducerClosedError):
    """``put`` after the gate refused: another producer owns the output now."""


@dataclasses.dataclass(frozen=True)
class ProducerConfig:
    linger_s: float = 0.05
    max_batch_records: int = MAX_BATCH_RECORDS
    max_batch_bytes: int = MAX_BATCH_BYTES
    # The send queues: records put and not yet acknowledged (queued, in flight, retrying). Past
    # this, new records go to disk behind them.
    max_buffer_records: int = 200_000
    max_buffer_bytes: int = 128 * 1024 * 1024
    # The hard cap of the records waiting in memory for the disk (one spill interval normally;
    # more while the disk fails). Past it ``put`` drops the new record and counts it.
    max_unspilled_records: int = 100_000
    max_unspilled_bytes: int = 64 * 1024 * 1024
    backoff_base_s: float = 0.05
    backoff_max_s: float = 5.0
    breaker_failure_threshold: int = 5
    breaker_cooldown_s: float = 5.0
    # A spill file is loaded whole for replay: this bounds the memory a replay takes.
    spill_file_max_bytes: int = 16 * 1024 * 1024
    # How often the spill thread writes and fsyncs, and how long a record may wait in memory
    # before it is journaled: together the crash window.
    spill_interval_s: float = 0.2
    spill_after_s: float = 1.0
    disk_retry_s: float = 1.0
    gate_retry_s: float = 1.0
    adopt_interval_s: float = 5.0
    # Upper bound of one PutRecords call (client timeouts): how long close() waits for it.
    call_bound_s: float = _CALL_BOUND_S
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_records <= MAX_BATCH_RECORDS:
            raise ValueError(f"max_batch_records must be in [1, {MAX_BATCH_RECORDS}]")
        if not MAX_RECORD_BYTES <= self.max_batch_bytes <= MAX_BATCH_BYTES:
            raise ValueError(f"max_batch_bytes must be in [{MAX_RECORD_BYTES}, {MAX_BATCH_BYTES}]")


@dataclasses.dataclass(frozen=True)
class ProducerStats:
    put: int
    acknowledged: int
    failed_entries: int
    retried: int
    call_failures: int
    spilled: int
    replayed: int
    refused_oversize: int
    batches_sent: int
    last_batch_records: int
    last_batch_bytes: int
    max_batch_records_seen: int
    max_batch_bytes_seen: int
    buffer_records: int
    buffer_bytes: int
    spill_files: int
    # Unreadable regions met in spill files (a torn tail after a crash, a damaged record).
    spill_damaged_regions: int
    circuit_state: CircuitState
    consecutive_failures: int
    circuit_opens: int
    spill_unreadable_bytes: int = 0
    # Records also written to a journal file while queued in memory.
    journaled: int = 0
    # Records waiting in memory to be written to a spill file.
    unspilled_records: int = 0
    # The current spill disk failure ("ENOSPC: No space left on device"), None when it works.
    disk_error: str | None = None
    disk_errors: int = 0
    # Records given up, by reason: besides a crash inside the documented window, the only way
    # a record accepted by put is not delivered. "disk_error" / "spill_backlog": the memory
    # hard cap was reached while the disk failed / was slower than the feed;
    # "disk_error_at_close": still only in memory when close gave up on the disk.
    dropped: int = 0
    dropped_reasons: Mapping[str, int] = dataclasses.field(default_factory=dict)
    fenced: bool = False
    adopted_dirs: int = 0
    adopted_files: int = 0
    # Gate calls that raised (the batch waited and asked again).
    gate_errors: int = 0

    @property
    def problems(self) -> list[str]:
        """What an operator must know about, one line each (empty when all is well)."""
        out = []
        if self.fenced:
            out.append("kinesis producer fenced (another producer owns the output)")
        if self.disk_error is not None:
            out.append(f"kinesis spill disk failing: {self.disk_error}")
        if self.dropped:
            why = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped_reasons.items()))
            out.append(f"kinesis producer dropped {self.dropped} records ({why})")
        if self.spill_damaged_regions:
            out.append(
                f"{self.spill_damaged_regions} damaged regions in spill files "
                f"({self.spill_unreadable_bytes} bytes unreadable)"
            )
        return out


AckHook = Callable[[str, int, float], None]
CircuitHook = Callable[[CircuitState, CircuitState], None]
Gate = Callable[[], bool]


class RecordSink(Protocol):
    """What the streamer needs from a Kinesis producer."""

    def put(self, stream: str, partition_key: str, data: bytes) -> None: ...
    def flush(self, timeout_s: float = ...) -> bool: ...
    def close(self, timeout_s: float = ...) -> bool: ...
    def stats(self) -> ProducerStats: ...


class NoopKinesisClient:
    """Acknowledges every record at once: with it the producer's own overhead is measured."""

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        ok = {"SequenceNumber": "0", "ShardId": "shardId-000000000000"}
        return {"FailedRecordCount": 0, "Records": [ok] * len(Records)}


def producer_client(settings: Settings, config: Config = PRODUCER_CLIENT_CONFIG) -> Any:
    """A Kinesis client for the producer: ``aws_client`` with single-attempt calls."""
    return aws_client("kinesis", settings, config)


# An entry is (partition_key, data, size, enqueue_monotonic, ref); ref is the spill file that
# holds the record too (a replayed or journaled record), None while it is only in memory.
_Entry = tuple[str, bytes, int, float, "SpillRef | None"]
# A record waiting for the disk: (stream, partition_key, data, size, enqueue_monotonic).
_Unspilled = tuple[str, str, bytes, int, float]


class _Stream:
    __slots__ = (
        "attempt",
        "backed",
        "mem",
        "mem_bytes",
        "name",
        "retry",
        "retry_at",
        "retry_resend",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        # Records that are on disk too (replayed or journaled), older than those in ``mem``.
        self.backed: collections.deque[_Entry] = collections.deque()
        self.mem: collections.deque[_Entry] = collections.deque()
        self.mem_bytes = 0
        self.retry: list[_Entry] = []
        self.retry_at = 0.0
        # The retry batch was sent before (not only held back by the gate).
        self.retry_resend = False
        self.attempt = 0

    def has_queued(self) -> bool:
        return bool(self.backed or self.mem or self.retry)


def _call_hook(hook: Callable[..., None], *args: Any) -> None:
    # A failing metrics hook must not kill the sender thread, which would stop delivery.
    try:
        hook(*args)
    except Exception:
        log.exception("kinesis producer hook %r failed", hook)


# --- the producer --------------------------------------------------------------------------


class KinesisProducer:
    """``put`` records; a sender thread delivers them to Kinesis with PutRecords.

    ``client`` is a boto3 Kinesis client (see ``producer_client``) or anything with its
    ``put_records``. Leftover spill files in ``spill_dir`` (and those adopted from dead siblings
    under ``adopt_from``) are replayed first, before any new record. Hooks:
    ``on_ack(stream, n_records, oldest_enqueue_monotonic)`` after each acknowledged batch (for
    replayed records the enqueue time is when their file was loaded),
    ``on_circuit_change(old, new)``; both run on the sender thread. ``gate()``: see the module
    docstring (fencing).
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
        self._client = client
        self._cfg = cfg = config or ProducerConfig()
        self._clock = clock
        self._on_ack = on_ack
        self._on_circuit_change = on_circuit_change
        self._gate = gate
        self._rng = random.Random(cfg.seed)
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._events: list[tuple[CircuitState, CircuitState]] = []
        self._breaker = CircuitBreaker(
            cfg.breaker_failure_threshold,
            cfg.breaker_cooldown_s,
            clock,
            on_change=lambda old, new: self._events.append((old, new)),
        )
        self._streams: dict[str, _Stream] = {}
        self._buffer_records = 0
        self._buffer_bytes = 0
        self._unspilled: list[_Unspilled] = []
        self._unspilled_records = 0
        self._unspilled_bytes = 0
        self._closed = False
        self._fenced = False
        self._stop = False
        self._final = False
        self._final_deadline = 0.0
        self._sender_done = False
        self._flush_waiters = 0
        self._sending = False
        self._inflight: tuple[_Stream, list[_Entry]] | None = None
        self._inflight_t = 0.0
        self._spill_busy = False
        self._counts = collections.Counter[str]()
        self._dropped_reasons = collections.Counter[str]()
        self._last_drop_log = -1e9
        self._last_batch = (0, 0)
        self._max_batch = (0, 0)
        self._disk_error: str | None = None
        self._disk_retry_at = 0.0
        self._load_retry_at = 0.0

        self._spill_dir = Path(spill_dir)
        self._lock_fd = lock_dir(self._spill_dir)
        self._name_ns = 0
        self._name_seq = 0
        self._writer: SpillWriter | None = None
        self._refs: set[SpillRef] = set()
        self._sealed: list[Path] = []
        self._adopt_from = Path(adopt_from) if adopt_from is not None else None
        if self._adopt_from is not None:
            self._adopt()
        # Sorted by name, which is creation order: the replay order, now and after a restart.
        self._sealed = sorted(self._spill_dir.glob(SPILL_GLOB), key=by_name)
        # Leftover files hold the oldest records: new ones queue behind them on disk until the
        # replay has caught up, which keeps them in order.
        self._spilling = bool(self._sealed)
        if self._sealed:
            log.info("replaying %d spill files from %s", len(self._sealed), self._spill_dir)

        self._sender = threading.Thread(target=self._run, name="kinesis-sender", daemon=True)
        self._spiller = threading.Thread(target=self._spill_loop, name="kinesis-spill", daemon=True)
        self._sender.start()
        self._spiller.start()

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
        if not 0 < len(partition_key) <= MAX_PARTITION_KEY_CHARS:
            raise ValueError(f"partition key must have 1 to {MAX_PARTITION_KEY_CHARS} characters")
        size = len(data) + len(partition_key.encode())
        with self._cv:
            if self._closed:
                if self._fenced:
                    raise ProducerFencedError("put after the gate fenced this producer")
                raise ProducerClosedError("put after close")
            if size > MAX_RECORD_BYTES:
                self._counts["refused_oversize"] += 1
                raise RecordTooLargeError(
                    f"record of {size} bytes (data + partition key) for {stream!r} exceeds "
                    f"Kinesis's {MAX_RECORD_BYTES}"
                )
            self._counts["put"] += 1
            if (
                self._spilling
                or self._buffer_records >= self._cfg.max_buffer_records
                or self._buffer_bytes + size > self._cfg.max_buffer_bytes
            ):
                self._to_disk_locked(stream, partition_key, data, size)
                return
            st = self._streams.get(stream)
            if st is None:
                st = self._streams[stream] = _Stream(stream)
            st.mem.append((partition_key, data, size, self._clock(), None))
            st.mem_bytes += size
            self._buffer_records += 1
            self._buffer_bytes += size
            # The sender sleeps until the oldest record's linger ends: wake it for a first
            # record or a full batch only.
            n = len(st.mem)
            if (
                n == 1
                or n == self._cfg.max_batch_records
                or st.mem_bytes >= self._cfg.max_batch_bytes
            ):
                self._cv.notify()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Send everything now, spill included; True once all of it is acknowledged (never
        after a record was dropped, nor once fenced)."""
        with self._cv:
            self._flush_waiters += 1
            self._cv.notify_all()
            try:
                self._cv.wait_for(lambda: self._fenced or self._idle_locked(), timeout_s)
                return self._clean_locked()
            finally:
                self._flush_waiters -= 1

    def close(self, timeout_s: float = 30.0) -> bool:
        """Refuse new records, flush for up to ``timeout_s``, then stop; what is still
        unacknowledged is fsync'd to the spill directory for the next start (or an adopter).
        True if all was sent."""
        with self._cv:
            if self._final:
                return self._clean_locked()
            self._closed = True
        deadline = time.monotonic() + timeout_s
        flushed = self.flush(timeout_s)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._sender.join(max(deadline - time.monotonic(), 0) + self._cfg.call_bound_s)
        if self._sender.is_alive():
            log.error("kinesis sender did not stop; its in-flight batch goes to the spill dir")
        # The spill thread writes what is left; a failing disk gets a few more tries.
        final_deadline = max(deadline, time.monotonic() + 2 * self._cfg.disk_retry_s)
        with self._cv:
            self._final = True
            self._final_deadline = self._clock() + (final_deadline - time.monotonic())
        self._wake.set()
        self._spiller.join(max(final_deadline - time.monotonic(), 0) + 5)
        if self._spiller.is_alive():
            log.error("kinesis spill thread did not stop: the spill disk hangs")
        with self._cv:
            return flushed and self._clean_locked()

    def __enter__(self) -> KinesisProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def circuit_state(self) -> CircuitState:
        with self._lock:
            return self._breaker.state

    def stats(self) -> ProducerStats:
        with self._lock:
            c = self._counts
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
                last_batch_records=self._last_batch[0],
                last_batch_bytes=self._last_batch[1],
                max_batch_records_seen=self._max_batch[0],
                max_batch_bytes_seen=self._max_batch[1],
                buffer_records=self._buffer_records,
                buffer_bytes=self._buffer_bytes,
                spill_files=len(self._sealed) + len(self._refs) + (self._writer is not None),
                spill_damaged_regions=c["spill_damaged_regions"],
                circuit_state=self._breaker.state,
                consecutive_failures=self._breaker.consecutive_failures,
                circuit_opens=self._breaker.opens,
                spill_unreadable_bytes=c["spill_unreadable_bytes"],
                journaled=c["journaled"],
                unspilled_records=self._unspilled_records,
                disk_error=self._disk_error,
                disk_errors=c["disk_errors"],
                dropped=c["dropped"],
                dropped_reasons=dict(self._dropped_reasons),
                fenced=self._fenced,
                adopted_dirs=c["adopted_dirs"],
                adopted_files=c["adopted_files"],
                gate_errors=c["gate_errors"],
            )

    def _clean_locked(self) -> bool:
        return self._idle_locked() and not self._fenced and not self._counts["dropped"]

    def _to_disk_locked(self, stream: str, partition_key: str, data: bytes, size: int) -> None:
        cfg = self._cfg
        if (
            self._unspilled_records >= cfg.max_unspilled_records
            or self._unspilled_bytes + size > cfg.max_unspilled_bytes
        ):
            self._drop_locked(1, "disk_error" if self._disk_error else "spill_backlog")
            return
        if not self._spilling:
            log.warning("kinesis buffer full: new records go to %s", self._spill_dir)
            self._spilling = True
        self._unspilled.append((stream, partition_key, data, size, self._clock()))
        self._unspilled_records += 1
        self._unspilled_bytes += size

    def _drop_locked(self, n: int, reason: str) -> None:
        self._counts["dropped"] += n
        self._dropped_reasons[reason] += n
        now = self._clock()
        if now - self._last_drop_log >= 10:
            self._last_drop_log = now
            log.error(
                "kinesis producer DROPPED %d records (%s); %d dropped in all: %s",
                n,
                reason,
                self._counts["dropped"],
                self._disk_error or "the spill disk is slower than the feed",
            )

    # --- spill thread ---------------------------------------------------------------------

    def _new_spill_path(self) -> Path:
        # Names sort in creation order even if the wall clock steps back.
        self._name_ns = max(time.time_ns(), self._name_ns + 1)
        self._name_seq += 1
        return self._spill_dir / f"spill-{self._name_ns:020d}-{self._name_seq:06d}.bin"

    def _spill_loop(self) -> None:
        next_adopt = self._clock() + self._cfg.adopt_interval_s
        while True:
            self._wake.wait(self._cfg.spill_interval_s)
            self._wake.clear()
            # A bug here must not end the thread: nothing would reach the disk any more.
            try:
                with self._cv:
                    final = self._final
                    fenced = self._fenced and self._sender_done
                self._spill_step(everything=final or fenced)
                if final or fenced:
                    if self._finish(final):
                        return
                elif self._adopt_from is not None and self._clock() >= next_adopt:
                    next_adopt = self._clock() + self._cfg.adopt_interval_s
                    self._adopt()
            except Exception:
                log.exception("kinesis spill thread round failed")

    def _finish(self, final: bool) -> bool:
        """After the sender stopped: True once every record is on disk or given up; then the
        files are closed and the directory lock released (an adopter may take it)."""
        with self._cv:
            left = self._memory_only_locked()
            if left:
                if not final or self._clock() < self._final_deadline:
                    return False
                self._drop_locked(len(left), "disk_error_at_close")
                log.error(
                    "kinesis producer stopped with %d records it could not write to %s: lost",
                    len(left),
                    self._spill_dir,
                )
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        return True

    def _memory_only_locked(self) -> list[Any]:
        """Every record held only in memory (none may remain once the sender has stopped)."""
        out: list[Any] = list(self._unspilled)
        for st in self._streams.values():
            out += [e for e in (*st.retry, *st.mem) if e[4] is None]
        if self._inflight is not None:
            out += [e for e in self._inflight[1] if e[4] is None]
        return out

    def _journal_locked(
        self, now: float, everything: bool
    ) -> list[tuple[SpillRef, list[SpillRecord]]]:
        """Mark the records held only in memory that must reach the disk now (all of them, or
        those older than ``spill_after_s``) as backed by new journal files; they keep their
        place in the queues. Returns what to write, file by file."""
        cutoff = float("inf") if everything else now - self._cfg.spill_after_s
        limit = self._cfg.spill_file_max_bytes
        chunks: list[tuple[SpillRef, list[SpillRecord]]] = []
        nbytes = limit

        def tag(stream: str, e: _Entry) -> _Entry:
            nonlocal nbytes
            if nbytes + e[2] > limit:
                ref = SpillRef(self._new_spill_path(), 0, journal=True)
                self._refs.add(ref)
                chunks.append((ref, []))
                nbytes = 0
            ref, recs = chunks[-1]
            ref.outstanding += 1
            recs.append((stream, e[0], e[1]))
            nbytes += e[2]
            return (e[0], e[1], e[2], e[3], ref)

        # Per stream, oldest first: the batch in flight or to retry, then the memory queue.
        for st in self._streams.values():
            held = [self._inflight[1]] if self._inflight and self._inflight[0] is st else []
            for entries in (*held, st.retry):
                for i, e in enumerate(entries):
                    if e[4] is None and e[3] <= cutoff:
                        entries[i] = tag(st.name, e)
            while st.mem and st.mem[0][3] <= cutoff:
                e = st.mem.popleft()
                st.mem_bytes -= e[2]
                st.backed.append(tag(st.name, e))
        return chunks

    def _untag_locked(self, failed: list[SpillRef]) -> None:
        """Journal files that could not be written: their records are memory-only again."""
        gone = set(failed)
        held = [self._inflight[1]] if self._inflight else []
        for st in self._streams.values():
            for entries in (*held, st.retry):
                for i, e in enumerate(entries):
                    if e[4] in gone:
                        entries[i] = (e[0], e[1], e[2], e[3], None)
            # They were appended last to ``backed``; whatever of them is left is at its end.
            while st.backed and st.backed[-1][4] in gone:
                e = st.backed.pop()
                st.mem.appendleft((e[0], e[1], e[2], e[3], None))
                st.mem_bytes += e[2]
        for ref in failed:
            self._refs.discard(ref)

    def _spill_step(self, everything: bool) -> None:
        """One round of the spill thread: journal what must be durable, then write the records
        waiting for the disk (only once nothing older is held in memory alone)."""
        now = self._clock()
        with self._cv:
            if now < self._disk_retry_at:
                return
            everything = (
                everything
                or self._spilling
                or self._fenced
                or self._sender_done
                or self._breaker.state is not CircuitState.CLOSED
                # A call unanswered this long: Kinesis hangs, and it may take minutes of
                # timeouts before the circuit opens.
                or (self._inflight is not None and now - self._inflight_t > self._cfg.spill_after_s)
            )
            chunks = self._journal_locked(now, everything)
            pending: list[_Unspilled] = []
            if everything:
                pending, self._unspilled = self._unspilled, []
            probe = not chunks and not pending and self._disk_error is not None
            if not (chunks or pending or probe):
                return
            self._spill_busy = True
            writer = self._writer
        error: Exception | None = None
        written: list[SpillRef] = []
        sealed: list[Path] = []
        n_spilled = 0
        try:
            for ref, recs in chunks:
                self._write_new(ref.path, recs)
                written.append(ref)
            if probe:
                self._probe_disk()
            limit = self._cfg.spill_file_max_bytes
            while n_spilled < len(pending):
                if writer is None or writer.broken or writer.bytes >= limit:
                    if writer is not None:
                        writer.close()
                        sealed.append(writer.path)
                        writer = None
                    writer = SpillWriter(self._new_spill_path())
                parts: list[bytes] = []
                room = max(limit - writer.bytes, 1)
                for stream, pk, data, _, _ in pending[n_spilled:]:
                    rec = encode_spill_record(stream, pk, data)
                    if parts and len(rec) > room:
                        break
                    parts.append(rec)
                    room -= len(rec)
                writer.append(b"".join(parts))
                n_spilled += len(parts)
        except Exception as exc:
            # Whatever failed, the records not written are still in memory: keep them.
            if not isinstance(exc, OSError):
                log.exception("kinesis spill write failed")
            error = exc
        with self._cv:
            self._writer = writer
            self._sealed.extend(sealed)
            for ref in written:
                ref.writing = False
                if ref.outstanding == 0:
                    self._unlink_ref_locked(ref)
            failed = [ref for ref, _ in chunks[len(written) :]]
            if failed:
                self._untag_locked(failed)
            done = pending[:n_spilled]
            self._unspilled[:0] = pending[n_spilled:]
            self._unspilled_records -= len(done)
            self._unspilled_bytes -= sum(p[3] for p in done)
            self._counts["spilled"] += len(done)
            self._counts["journaled"] += sum(len(recs) for _, recs in chunks[: len(written)])
            if error is not None:
                self._disk_failed_locked(error, "writing")
            elif self._disk_error is not None:
                log.warning("kinesis spill disk works again (%s)", self._spill_dir)
                self._disk_error = None
            self._spill_busy = False
            self._cv.notify_all()

    def _write_new(self, path: Path, recs: list[SpillRecord]) -> None:
        """Write and fsync a new file; on failure nothing of it is left (if the disk allows)."""
        w = SpillWriter(path)
        try:
            w.append(b"".join(encode_spill_record(*r) for r in recs))
        except OSError:
            w.close()
            path.unlink(missing_ok=True)
            raise
        w.close()

    def _probe_disk(self) -> None:
        """Nothing to write, but the disk failed last time: does a small write work now?"""
        path = self._spill_dir / PROBE_NAME
        path.unlink(missing_ok=True)
        w = SpillWriter(path)
        try:
            w.append(b"\0" * 4096)
        finally:
            w.close()
            path.unlink(missing_ok=True)

    def _disk_failed_locked(self, exc: Exception, doing: str) -> None:
        what = describe_error(exc)
        self._counts["disk_errors"] += 1
        self._disk_retry_at = self._clock() + self._cfg.disk_retry_s
        if what != self._disk_error:
            log.error(
                "kinesis spill disk failed %s %s: %s; records stay in memory, retrying every "
                "%.1f s",
                doing,
                self._spill_dir,
                what,
                self._cfg.disk_retry_s,
            )
        self._disk_error = what

    def _unlink_ref_locked(self, ref: SpillRef) -> None:
        self._refs.discard(ref)
        try:
            ref.path.unlink(missing_ok=True)
        except OSError as exc:
            # Left behind, it is replayed after a restart: duplicates, nothing lost.
            log.warning("could not delete acknowledged spill file %s: %s", ref.path, exc)

    # --- adoption -------------------------------------------------------------------------

    def _adopt(self) -> None:
        """Take over the spill files of sibling directories whose owner is gone."""
        assert self._adopt_from is not None
        own = self._spill_dir.resolve()
        try:
            siblings = sorted(p for p in self._adopt_from.iterdir() if p.is_dir())
        except OSError as exc:
            log.warning("cannot list %s for orphaned spill dirs: %s", self._adopt_from, exc)
            return
        # ``adopt_from`` itself may be a spill dir of the layout before per-run directories.
        for d in (self._adopt_from, *siblings):
            moved = None if d.resolve() == own else self._adopt_dir(d, d in siblings)
            if moved is None:
                continue
            with self._cv:
                for p in moved:
                    # Replayed in name order with the other files not yet loaded.
                    bisect.insort(self._sealed, p, key=by_name)
                if moved:
                    self._spilling = True
                self._counts["adopted_dirs"] += 1
                self._counts["adopted_files"] += len(moved)
                self._cv.notify_all()

    def _adopt_dir(self, d: Path, remove: bool) -> list[Path] | None:
        """Move ``d``'s spill files into our directory if its lock is free, then remove it (or
        just its lock); the moved files, or None if ``d`` is not an orphaned spill directory."""
        try:
            fd = os.open(d / LOCK_NAME, os.O_RDWR)
        except OSError:
            return None  # not a producer's directory, or one being removed
        moved: list[Path] = []
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # its owner is alive
            for src in sorted(d.glob(SPILL_GLOB), key=by_name):
                dst = self._spill_dir / src.name
                while dst.exists():
                    dst = dst.with_name(dst.stem + "-a" + dst.suffix)
                os.rename(src, dst)
                moved.append(dst)
            if moved:
                fsync_dir(self._spill_dir)
                fsync_dir(d)
            (d / PROBE_NAME).unlink(missing_ok=True)
            (d / LOCK_NAME).unlink(missing_ok=True)
            if remove:
                try:
                    d.rmdir()
                except OSError:
                    pass  # something else lives there (or a new producer just started in it)
            log.warning(
                "adopted orphaned spill dir %s: %d spill files moved to %s",
                d,
                len(moved),
                self._spill_dir,
            )
        except OSError as exc:
            # What was moved is ours now; the rest stays for the next round.
            log.error("adopting spill dir %s failed after %d files: %s", d, len(moved), exc)
        finally:
            os.close(fd)
        return moved

    # --- sender ---------------------------------------------------------------------------

    def _idle_locked(self) -> bool:
        return not (
            self._sending
            or self._spill_busy
            or self._sealed
            or self._writer is not None
            or self._unspilled
            or any(st.has_queued() for st in self._streams.values())
        )

    def _pick_locked(self, now: float) -> tuple[_Stream | None, list[_Entry], bool, float]:
        """The next batch to send (and whether it is a resend), or the time to wait for one."""
        wait = self._breaker.retry_after()
        if wait > 0:
            return None, [], False, wait
        wait = _IDLE_WAIT_S
        urgent = self._flush_waiters > 0 or self._closed
        cfg = self._cfg
        best: _Stream | None = None
        best_t = float("inf")
        for st in self._streams.values():
            if st.retry:
                if st.retry_at <= now:
                    entries, st.retry = st.retry, []
                    return st, entries, st.retry_resend, 0.0
                wait = min(wait, st.retry_at - now)
                continue
            head = st.backed[0] if st.backed else st.mem[0] if st.mem else None
            if head is None:
                continue
            ready = (
                urgent
                or st.backed
                or len(st.mem) >= cfg.max_batch_records
                or st.mem_bytes >= cfg.max_batch_bytes
                or head[3] + cfg.linger_s <= now
            )
            if not ready:
                wait = min(wait, head[3] + cfg.linger_s - now)
            elif head[3] < best_t:
                best, best_t = st, head[3]
        if best is None:
            return None, [], False, wait
        return best, self._take_batch_locked(best), False, 0.0

    def _take_batch_locked(self, st: _Stream) -> list[_Entry]:
        max_n, max_b = self._cfg.max_batch_records, self._cfg.max_batch_bytes
        batch: list[_Entry] = []
        size = 0
        q = st.backed
        while q and len(batch) < max_n and size + q[0][2] <= max_b:
            e = q.popleft()
            batch.append(e)
            size += e[2]
        q = st.mem
        while q and len(batch) < max_n and size + q[0][2] <= max_b:
            e = q.popleft()
            batch.append(e)
            size += e[2]
            st.mem_bytes -= e[2]
        return batch

    def _next_file_locked(self) -> SpillWriter | Path | None:
        """The oldest spill file, when nothing else is queued: its records come next."""
        if self._sealed:
            return self._sealed.pop(0) if self._clock() >= self._load_retry_at else None
        if self._writer is not None and not self._spill_busy:
            w, self._writer = self._writer, None
            return w
        return None

    def _take_unspilled_locked(self) -> bool:
        """Caught up with the disk: the records still waiting for it are the newest, send them
        from memory. Back to memory mode once Kinesis takes records again."""
        if self._sealed or self._writer is not None or self._spill_busy:
            return False
        if self._breaker.state is CircuitState.CLOSED and not self._fenced:
            self._spilling = False
        if not self._unspilled:
            return False
        for stream, pk, data, size, t in self._unspilled:
            st = self._streams.get(stream)
            if st is None:
                st = self._streams[stream] = _Stream(stream)
            st.mem.append((pk, data, size, t, None))
            st.mem_bytes += size
        self._buffer_records += self._unspilled_records
        self._buffer_bytes += self._unspilled_bytes
        self._unspilled, self._unspilled_records, self._unspilled_bytes = [], 0, 0
        return True

    def _load(self, item: SpillWriter | Path) -> None:
        if isinstance(item, SpillWriter):
            item.close()
            item = item.path
        try:
            contents = read_spill_file(item)
        except OSError as exc:
            with self._cv:
                self._sealed.insert(0, item)
                self._load_retry_at = self._clock() + self._cfg.disk_retry_s
                self._disk_failed_locked(exc, f"reading {item.name} in")
            return
        records = contents.records
        if contents.damaged:
            log.error(
                "spill file %s: %d damaged regions (%d bytes, at offsets %s) could not be read; "
                "%d whole records around them are replayed",
                item,
                len(contents.damaged),
                contents.unreadable_bytes,
                [off for off, _ in contents.damaged][:10],
                len(records),
            )
        now = self._clock()
        with self._cv:
            self._counts["spill_damaged_regions"] += len(contents.damaged)
            self._counts["spill_unreadable_bytes"] += contents.unreadable_bytes
            if not records:
                try:
                    item.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("could not delete empty spill file %s: %s", item, exc)
                return
            ref = SpillRef(item, len(records), journal=False)
            self._refs.add(ref)
            for stream, pk, data in records:
                st = self._streams.get(stream)
                if st is None:
                    st = self._streams[stream] = _Stream(stream)
                st.backed.append((pk, data, len(data) + len(pk.encode()), now, ref))
            self._counts["replayed"] += len(records)

    def _run(self) -> None:
        try:
            while True:
                load: SpillWriter | Path | None = None
                with self._cv:
                    while True:
                        if self._stop or self._fenced:
                            return
                        st, batch, resend, wait = self._pick_locked(self._clock())
                        if st is not None:
                            self._sending = True
                            self._inflight = (st, batch)
                            self._inflight_t = self._clock()
                            break
                        if self._breaker.retry_after() == 0 and not any(
                            s.has_queued() for s in self._streams.values()
                        ):
                            load = self._next_file_locked()
                            if load is not None:
                                self._sending = True
                                break
                            if self._take_unspilled_locked():
                                continue
                        self._cv.wait(wait)
                if load is not None:
                    self._load(load)
                    with self._cv:
                        self._sending = False
                        self._cv.notify_all()
                else:
                    assert st is not None
                    self._send(st, batch, resend)
                self._fire_circuit_events()
        except Exception:
            log.exception("kinesis sender crashed")
            raise
        finally:
            with self._cv:
                self._sending = False
                self._sender_done = True
                self._cv.notify_all()
            # The spill thread now writes everything still held only in memory.
            self._wake.set()
            self._fire_circuit_events()

    def _fire_circuit_events(self) -> None:
        with self._lock:
            events, self._events[:] = list(self._events), []
        if self._on_circuit_change is not None:
            for old, new in events:
                _call_hook(self._on_circuit_change, old, new)

    def _allowed(self, st: _Stream, batch: list[_Entry], resend: bool) -> bool:
        """Ask the gate; on anything but yes the batch goes back to the head of its stream."""
        try:
            allowed: bool | None = bool(self._gate())  # type: ignore[misc]
        except Exception as exc:
            log.warning(
                "kinesis gate failed (%r): asking again in %.1f s", exc, self._cfg.gate_retry_s
            )
            allowed = None
        if allowed:
            return True
        with self._cv:
            self._inflight = None
            self._sending = False
            st.retry, st.retry_resend = batch, resend
            st.retry_at = self._clock() + self._cfg.gate_retry_s
            if allowed is None:
                self._counts["gate_errors"] += 1
            else:
                self._fenced = self._closed = True
                log.error(
                    "kinesis producer fenced by its gate: sending stops, everything unsent goes "
                    "to %s",
                    self._spill_dir,
                )
            self._cv.notify_all()
        self._wake.set()
        return False

    def _send(self, st: _Stream, batch: list[_Entry], resend: bool) -> None:
        if self._gate is not None and not self._allowed(st, batch, resend):
            return
        nbytes = sum(e[2] for e in batch)
        records = [{"Data": e[1], "PartitionKey": e[0]} for e in batch]
        results: list[dict[str, Any]] | None = None
        try:
            results = self._client.put_records(StreamName=st.name, Records=records)["Records"]
        except Exception as exc:
            # Every failure is retried, whatever it is: losing records is worse than retrying a
            # misconfiguration, which the circuit breaker and spill contain.
            log.warning("PutRecords to %s failed (%d records): %r", st.name, len(batch), exc)
        acked: list[_Entry] = []
        with self._cv:
            # The spill thread may have journaled entries of the batch meanwhile: re-read them.
            self._inflight = None
            self._sending = False
            if resend:
                self._counts["retried"] += len(batch)
            self._counts["batches_sent"] += 1
            self._last_batch = (len(batch), nbytes)
            self._max_batch = (max(self._max_batch[0], len(batch)), max(self._max_batch[1], nbytes))
            if results is None or len(results) != len(batch):
                self._counts["call_failures"] += 1
                self._breaker.record_failure()
                self._retry_locked(st, batch)
            else:
                failed: list[_Entry] = []
                for e, r in zip(batch, results, strict=True):
                    (failed if r.get("ErrorCode") else acked).append(e)
                # A call whose every entry was refused is a failed call for the breaker. One
                # that made progress restarts the backoff, so a shard taking most entries is
                # not slowed by an exponent built while it took none.
                if acked:
                    self._breaker.record_success()
                    st.attempt = 0
                else:
                    self._breaker.record_failure()
                if failed:
                    self._counts["failed_entries"] += len(failed)
                    self._retry_locked(st, failed)
                self._ack_locked(acked)
            self._cv.notify_all()
        if acked and self._on_ack is not None:
            _call_hook(self._on_ack, st.name, len(acked), min(e[3] for e in acked))

    def _retry_locked(self, st: _Stream, entries: list[_Entry]) -> None:
        st.attempt += 1
        cap = min(self._cfg.backoff_max_s, self._cfg.backoff_base_s * 2 ** min(st.attempt, 30))
        # Equal jitter: at least half the step, so retries back off, and spread over the other
        # half, so streams and producers do not retry in lockstep.
        st.retry_at = self._clock() + cap / 2 + self._rng.uniform(0, cap / 2)
        st.retry = entries
        st.retry_resend = True

    def _ack_locked(self, acked: list[_Entry]) -> None:
        self._counts["acknowledged"] += len(acked)
        n = nbytes = 0
        for e in acked:
            ref = e[4]
            if ref is None:
                n += 1
                nbytes += e[2]
                continue
            if ref.journal:
                n += 1
                nbytes += e[2]
            ref.outstanding -= 1
            if ref.outstanding == 0 and not ref.writing:
                self._unlink_ref_locked(ref)
        self._buffer_records -= n
        self._buffer_bytes -= nbytes
