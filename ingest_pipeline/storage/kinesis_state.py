"""What the Kinesis producer's caller side, sender thread and spill thread share: the send
queues, the records waiting for the disk, the spill files and the counters, all under one lock
(``ProducerState.cv``). The sender (``kinesis_sender.py``) and the spill thread
(``kinesis_spiller.py``) each hold the state and never call each other: the condition variable
and ``wake`` are how they hand work over."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from ingest_pipeline.storage.circuit import CircuitBreaker, CircuitState
from ingest_pipeline.storage.kinesis_config import ProducerConfig
from ingest_pipeline.storage.spill import SpillRef, SpillWriter, describe_error

log = logging.getLogger(__name__)

# An entry is (partition_key, data, size, enqueue_monotonic, ref); ref is the spill file that
# holds the record too (a replayed or journaled record), None while it is only in memory.
Entry = tuple[str, bytes, int, float, "SpillRef | None"]
# A record waiting for the disk: (stream, partition_key, data, size, enqueue_monotonic).
Unspilled = tuple[str, str, bytes, int, float]


class StreamQueue:
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
        self.backed: collections.deque[Entry] = collections.deque()
        self.mem: collections.deque[Entry] = collections.deque()
        self.mem_bytes = 0
        self.retry: list[Entry] = []
        self.retry_at = 0.0
        # The retry batch was sent before (not only held back by the gate).
        self.retry_resend = False
        self.attempt = 0

    def has_queued(self) -> bool:
        return bool(self.backed or self.mem or self.retry)


class ProducerState:
    """The producer's shared state. Once the threads run, every field is read and written with
    ``cv`` (``lock``) held, but ``lock_fd`` (the spill thread's alone); methods named
    ``*_locked`` expect it held."""

    def __init__(
        self, cfg: ProducerConfig, clock: Callable[[], float], spill_dir: Path, lock_fd: int
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.lock = threading.Lock()
        self.cv = threading.Condition(self.lock)
        # Wakes the spill thread before its interval ends (fenced, sender stopped, closing).
        self.wake = threading.Event()
        # Circuit changes not yet reported to the hook (the sender reports them, unlocked).
        self.events: list[tuple[CircuitState, CircuitState]] = []
        self.breaker = CircuitBreaker(
            cfg.breaker_failure_threshold,
            cfg.breaker_cooldown_s,
            clock,
            on_change=lambda old, new: self.events.append((old, new)),
        )
        self.streams: dict[str, StreamQueue] = {}
        self.buffer_records = 0
        self.buffer_bytes = 0
        self.unspilled: list[Unspilled] = []
        self.unspilled_records = 0
        self.unspilled_bytes = 0
        self.closed = False
        self.fenced = False
        self.stop = False
        self.final = False
        self.final_deadline = 0.0
        self.sender_done = False
        self.flush_waiters = 0
        self.sending = False
        self.inflight: tuple[StreamQueue, list[Entry]] | None = None
        self.inflight_t = 0.0
        self.spill_busy = False
        self.counts = collections.Counter[str]()
        self.dropped_reasons = collections.Counter[str]()
        self.last_drop_log = -1e9
        self.last_batch = (0, 0)
        self.max_batch = (0, 0)
        self.disk_error: str | None = None
        self.disk_retry_at = 0.0
        self.load_retry_at = 0.0

        self.spill_dir = spill_dir
        # The spill directory's lock, -1 once released (the spill thread's last act).
        self.lock_fd = lock_fd
        # The disk-only spill file being written, the journal and replayed files not yet fully
        # acknowledged, and the files waiting for replay (sorted by name: creation order).
        self.writer: SpillWriter | None = None
        self.refs: set[SpillRef] = set()
        self.sealed: list[Path] = []
        # New records go to disk only (behind older spill files, or the memory buffer is full).
        self.spilling = False

    def stream_locked(self, name: str) -> StreamQueue:
        st = self.streams.get(name)
        if st is None:
            st = self.streams[name] = StreamQueue(name)
        return st

    def clean_locked(self) -> bool:
        return self.idle_locked() and not self.fenced and not self.counts["dropped"]

    def drop_locked(self, n: int, reason: str) -> None:
        self.counts["dropped"] += n
        self.dropped_reasons[reason] += n
        now = self.clock()
        if now - self.last_drop_log >= 10:
            self.last_drop_log = now
            log.error(
                "kinesis producer DROPPED %d records (%s); %d dropped in all: %s",
                n,
                reason,
                self.counts["dropped"],
                self.disk_error or "the spill disk is slower than the feed",
            )

    def disk_failed_locked(self, exc: Exception, doing: str) -> None:
        what = describe_error(exc)
        self.counts["disk_errors"] += 1
        self.disk_retry_at = self.clock() + self.cfg.disk_retry_s
        if what != self.disk_error:
            log.error(
                "kinesis spill disk failed %s %s: %s; records stay in memory, retrying every "
                "%.1f s",
                doing,
                self.spill_dir,
                what,
                self.cfg.disk_retry_s,
            )
        self.disk_error = what

    def unlink_ref_locked(self, ref: SpillRef) -> None:
        self.refs.discard(ref)
        try:
            ref.path.unlink(missing_ok=True)
        except OSError as exc:
            # Left behind, it is replayed after a restart: duplicates, nothing lost.
            log.warning("could not delete acknowledged spill file %s: %s", ref.path, exc)

    def idle_locked(self) -> bool:
        return not (
            self.sending
            or self.spill_busy
            or self.sealed
            or self.writer is not None
            or self.unspilled
            or any(st.has_queued() for st in self.streams.values())
        )
