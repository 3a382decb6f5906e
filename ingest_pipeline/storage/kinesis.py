"""Kinesis producer that loses nothing (SPEC §3 real time, §5 health): batching, retries of the
failed entries only, a circuit breaker, a bounded memory buffer that spills to disk.

Guarantees
- At least once. A record handed to ``put`` is either acknowledged by Kinesis, still pending
  in memory, or in a spill file (fsync'd every ``spill_fsync_interval_s``; a crash loses at most
  the records spilled since the last fsync, a clean ``close`` loses none). Duplicates come from a
  call that timed out or was reset after Kinesis stored it, and from spill files that were
  partly acknowledged when the process stopped (the whole file is replayed).
- Order per partition key, within a stream: records are sent in ``put`` order; one sender
  thread makes one call at a time, and a stream with failed entries sends nothing new until
  they are in. PutRecords itself may store a later entry of a key while rejecting an earlier
  one of the same call (AWS documents this); such a rejected entry lands after the later ones
  of its own batch, never after a later batch. Spilled records are replayed before any record
  put after them.
- One producer per spill directory (an exclusive lock file enforces it).

Threads: ``put`` runs on the caller's thread (the streamer's event loop) and only appends to a
deque, or to a spill file with one ``write`` syscall when the buffer is full. A sender thread
batches and calls PutRecords; a small thread fsyncs the spill file. Hooks run on the sender
thread, outside the producer's lock.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import fcntl
import logging
import os
import random
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import boto3
from botocore.config import Config

from ingest_pipeline.aws import EMULATOR_CREDENTIALS, is_loopback
from ingest_pipeline.settings import Settings

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
_SPILL_GLOB = "spill-*.bin"
# crc32 of the body, stream length, partition key length, data length; then the three byte
# strings. The crc finds a torn tail left by a crash in the middle of a write.
_SPILL_HEADER = struct.Struct(">IHHI")


class RecordTooLargeError(ValueError):
    """Data plus partition key exceed Kinesis's 1 MiB per record: the record is never sent."""


class ProducerClosedError(RuntimeError):
    """``put`` after ``close``."""


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker: OPEN for ``cooldown_s`` after ``failure_threshold`` failed
    calls in a row, then HALF_OPEN, where the next call is the probe: success closes it, failure
    re-opens it. Not thread-safe; the producer uses it under its lock, with one call in flight,
    so HALF_OPEN admits exactly one probe."""

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState, CircuitState], None] | None = None,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._opened_at = 0.0
        self.consecutive_failures = 0
        self.opens = 0

    @property
    def state(self) -> CircuitState:
        self.retry_after()
        return self._state

    def retry_after(self) -> float:
        """Seconds until a call may be made; 0 when one may be made now."""
        if self._state is CircuitState.OPEN:
            remaining = self._opened_at + self.cooldown_s - self._clock()
            if remaining > 0:
                return remaining
            self._set(CircuitState.HALF_OPEN)
        return 0.0

    def record_success(self) -> None:
        self.consecutive_failures = 0
        if self._state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self._state is CircuitState.HALF_OPEN or (
            self._state is CircuitState.CLOSED
            and self.consecutive_failures >= self.failure_threshold
        ):
            self._opened_at = self._clock()
            self.opens += 1
            self._set(CircuitState.OPEN)

    def _set(self, new: CircuitState) -> None:
        old, self._state = self._state, new
        if self._on_change is not None:
            self._on_change(old, new)


@dataclasses.dataclass(frozen=True)
class ProducerConfig:
    linger_s: float = 0.05
    max_batch_records: int = MAX_BATCH_RECORDS
    max_batch_bytes: int = MAX_BATCH_BYTES
    # The memory buffer: records put and not yet acknowledged (queued, in flight, retrying).
    max_buffer_records: int = 200_000
    max_buffer_bytes: int = 128 * 1024 * 1024
    backoff_base_s: float = 0.05
    backoff_max_s: float = 5.0
    breaker_failure_threshold: int = 5
    breaker_cooldown_s: float = 5.0
    # A spill file is loaded whole for replay: this bounds the memory a replay takes.
    spill_file_max_bytes: int = 16 * 1024 * 1024
    spill_fsync_interval_s: float = 0.2
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
    spill_corrupt_tails: int
    circuit_state: CircuitState
    consecutive_failures: int
    circuit_opens: int


AckHook = Callable[[str, int, float], None]
CircuitHook = Callable[[CircuitState, CircuitState], None]


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
    kwargs: dict[str, Any] = {"region_name": settings.region, "config": config}
    if settings.aws_endpoint_url:
        kwargs["endpoint_url"] = settings.aws_endpoint_url
        if is_loopback(settings.aws_endpoint_url):
            kwargs.update(EMULATOR_CREDENTIALS)
    return boto3.client("kinesis", **kwargs)


# --- spill files -------------------------------------------------------------------------


def encode_spill_record(stream: str, partition_key: str, data: bytes) -> bytes:
    s, k = stream.encode(), partition_key.encode()
    body = s + k + data
    return _SPILL_HEADER.pack(zlib.crc32(body), len(s), len(k), len(data)) + body


def read_spill_file(path: Path) -> tuple[list[tuple[str, str, bytes]], bool]:
    """The records of a spill file, and False if it ends with a torn or corrupt record."""
    buf = path.read_bytes()
    out: list[tuple[str, str, bytes]] = []
    pos, n, hsize = 0, len(buf), _SPILL_HEADER.size
    while pos < n:
        if n - pos < hsize:
            return out, False
        crc, ls, lk, ld = _SPILL_HEADER.unpack_from(buf, pos)
        start, end = pos + hsize, pos + hsize + ls + lk + ld
        body = buf[start:end]
        if end > n or zlib.crc32(body) != crc:
            return out, False
        out.append((body[:ls].decode(), body[ls : ls + lk].decode(), body[ls + lk :]))
        pos = end
    return out, True


class _SpillWriter:
    """An append-only spill file written with raw ``os.write`` so another thread can fsync it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.bytes = 0
        self.dirty = True
        self._new = True
        self._closed = False
        self._io_lock = threading.Lock()

    def write(self, buf: bytes) -> None:
        view = memoryview(buf)
        while view:
            view = view[os.write(self.fd, view) :]
        self.bytes += len(buf)
        self.dirty = True

    def sync(self) -> None:
        with self._io_lock:
            if self._closed or not self.dirty:
                return
            self.dirty = False
            os.fsync(self.fd)
            if self._new:
                # The file's directory entry must survive a crash too.
                self._new = False
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)

    def close(self) -> None:
        self.sync()
        with self._io_lock:
            if not self._closed:
                self._closed = True
                os.close(self.fd)


class _LoadedFile:
    """A spill file being replayed: deleted when its last record is acknowledged."""

    __slots__ = ("outstanding", "path")

    def __init__(self, path: Path, outstanding: int) -> None:
        self.path = path
        self.outstanding = outstanding


# An entry is (partition_key, data, size, enqueue_monotonic, source); source is the spill file
# of a replayed record, None for a record put in this process and held in the memory buffer.
_Entry = tuple[str, bytes, int, float, "_LoadedFile | None"]


class _Stream:
    __slots__ = ("attempt", "mem", "mem_bytes", "name", "replay", "retry", "retry_at")

    def __init__(self, name: str) -> None:
        self.name = name
        self.mem: collections.deque[_Entry] = collections.deque()
        self.mem_bytes = 0
        self.replay: collections.deque[_Entry] = collections.deque()
        self.retry: list[_Entry] = []
        self.retry_at = 0.0
        self.attempt = 0

    def has_queued(self) -> bool:
        return bool(self.mem or self.replay or self.retry)


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
    ``put_records``. Leftover spill files in ``spill_dir`` are replayed first, before any new
    record. Hooks: ``on_ack(stream, n_records, oldest_enqueue_monotonic)`` after each
    acknowledged batch (for replayed records the enqueue time is when their file was loaded),
    ``on_circuit_change(old, new)``; both run on the sender thread.
    """

    def __init__(
        self,
        client: Any,
        spill_dir: str | os.PathLike[str],
        config: ProducerConfig | None = None,
        *,
        on_ack: AckHook | None = None,
        on_circuit_change: CircuitHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._cfg = cfg = config or ProducerConfig()
        self._clock = clock
        self._on_ack = on_ack
        self._on_circuit_change = on_circuit_change
        self._rng = random.Random(cfg.seed)
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
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
        self._closed = False
        self._stop = False
        self._flush_waiters = 0
        self._sending = False
        self._counts = collections.Counter[str]()
        self._last_batch = (0, 0)
        self._max_batch = (0, 0)

        self._spill_dir = Path(spill_dir)
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self._spill_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise RuntimeError(f"another producer holds the spill dir {self._spill_dir}") from None
        self._spill_seq = 0
        self._writer: _SpillWriter | None = None
        self._sealed: collections.deque[_SpillWriter | Path] = collections.deque(
            sorted(self._spill_dir.glob(_SPILL_GLOB))
        )
        self._loaded: set[_LoadedFile] = set()
        # Leftover files hold the oldest records: new ones queue behind them on disk until the
        # replay has caught up, which keeps them in order.
        self._spilling = bool(self._sealed)
        if self._sealed:
            log.info("replaying %d spill files from %s", len(self._sealed), self._spill_dir)

        self._sender = threading.Thread(target=self._run, name="kinesis-sender", daemon=True)
        self._syncer = threading.Thread(target=self._sync_loop, name="kinesis-spill", daemon=True)
        self._sender.start()
        self._syncer.start()

    @classmethod
    def from_settings(
        cls, settings: Settings, spill_dir: str | os.PathLike[str], **kwargs: Any
    ) -> KinesisProducer:
        return cls(producer_client(settings), spill_dir, **kwargs)

    # --- caller side ---------------------------------------------------------------------

    def put(self, stream: str, partition_key: str, data: bytes) -> None:
        """Queue one record; never blocks on the network. Raises ``RecordTooLargeError``."""
        if not 0 < len(partition_key) <= MAX_PARTITION_KEY_CHARS:
            raise ValueError(f"partition key must have 1 to {MAX_PARTITION_KEY_CHARS} characters")
        size = len(data) + len(partition_key.encode())
        with self._cv:
            if self._closed:
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
                self._spill_locked(stream, partition_key, data)
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
        """Send everything now, spill included; True once all of it is acknowledged."""
        with self._cv:
            self._flush_waiters += 1
            self._cv.notify_all()
            try:
                return self._cv.wait_for(self._idle_locked, timeout_s)
            finally:
                self._flush_waiters -= 1

    def close(self, timeout_s: float = 30.0) -> bool:
        """Refuse new records, flush for up to ``timeout_s``, then stop; what is still
        unacknowledged goes to the spill directory for the next start. True if all was sent."""
        with self._cv:
            if self._closed and not self._sender.is_alive():
                return self._idle_locked()
            self._closed = True
        deadline = time.monotonic() + timeout_s
        flushed = self.flush(timeout_s)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._sender.join(max(deadline - time.monotonic(), 0) + self._cfg.call_bound_s)
        if self._sender.is_alive():
            log.error("kinesis sender did not stop; unacknowledged records may be lost")
        self._syncer.join(self._cfg.spill_fsync_interval_s + 5)
        os.close(self._lock_fd)
        return flushed

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
                spill_files=len(self._sealed) + len(self._loaded) + (self._writer is not None),
                spill_corrupt_tails=c["spill_corrupt_tails"],
                circuit_state=self._breaker.state,
                consecutive_failures=self._breaker.consecutive_failures,
                circuit_opens=self._breaker.opens,
            )

    # --- spill ---------------------------------------------------------------------------

    def _new_spill_path(self) -> Path:
        self._spill_seq += 1
        return self._spill_dir / f"spill-{time.time_ns():020d}-{self._spill_seq:06d}.bin"

    def _spill_locked(self, stream: str, partition_key: str, data: bytes) -> None:
        if not self._spilling:
            log.warning("kinesis buffer full: spilling to %s", self._spill_dir)
        self._spilling = True
        w = self._writer
        if w is None or w.bytes >= self._cfg.spill_file_max_bytes:
            if w is not None:
                self._sealed.append(w)
            w = self._writer = _SpillWriter(self._new_spill_path())
        w.write(encode_spill_record(stream, partition_key, data))
        self._counts["spilled"] += 1

    def _sync_loop(self) -> None:
        while True:
            with self._cv:
                if self._stop and not self._sender.is_alive():
                    return
                # Rotated files wait for their replay unclosed: they need fsyncs too.
                writers = [w for w in (*self._sealed, self._writer) if isinstance(w, _SpillWriter)]
            for w in writers:
                w.sync()
            time.sleep(self._cfg.spill_fsync_interval_s)

    def _dump_memory_locked(self) -> None:
        """Spill every unacknowledged record held only in memory (called on stop)."""
        entries = [
            (st.name, e)
            for st in self._streams.values()
            for e in (*st.retry, *st.mem)
            if e[4] is None
        ]
        if not entries:
            return
        # These records are older than any spill file not yet loaded, newer than loaded ones:
        # name the dump so that it sorts right before the oldest unloaded file.
        first = self._sealed[0] if self._sealed else self._writer
        if first is None:
            path = self._new_spill_path()
        else:
            p = first if isinstance(first, Path) else first.path
            path = p.with_name(p.stem + "-0" + p.suffix)  # "-" sorts before "."
        w = _SpillWriter(path)
        w.write(b"".join(encode_spill_record(name, e[0], e[1]) for name, e in entries))
        w.close()
        self._counts["spilled"] += len(entries)
        for st in self._streams.values():
            st.mem.clear()
            st.retry = []
            st.mem_bytes = 0
        self._buffer_records = self._buffer_bytes = 0
        log.warning("kinesis producer stopped with %d records unsent: spilled", len(entries))

    # --- sender --------------------------------------------------------------------------

    def _idle_locked(self) -> bool:
        return not (
            self._sending
            or self._sealed
            or self._loaded
            or self._writer is not None
            or any(st.has_queued() for st in self._streams.values())
        )

    def _pick_locked(self, now: float) -> tuple[_Stream | None, list[_Entry], float]:
        """The next batch to send, or the time to wait for one."""
        wait = self._breaker.retry_after()
        if wait > 0:
            return None, [], wait
        wait = _IDLE_WAIT_S
        urgent = self._flush_waiters > 0 or self._closed
        cfg = self._cfg
        best: _Stream | None = None
        best_t = float("inf")
        for st in self._streams.values():
            if st.retry:
                if st.retry_at <= now:
                    entries, st.retry = st.retry, []
                    self._counts["retried"] += len(entries)
                    return st, entries, 0.0
                wait = min(wait, st.retry_at - now)
                continue
            head = st.replay[0] if st.replay else st.mem[0] if st.mem else None
            if head is None:
                continue
            ready = (
                urgent
                or st.replay
                or len(st.mem) >= cfg.max_batch_records
                or st.mem_bytes >= cfg.max_batch_bytes
                or head[3] + cfg.linger_s <= now
            )
            if not ready:
                wait = min(wait, head[3] + cfg.linger_s - now)
            elif head[3] < best_t:
                best, best_t = st, head[3]
        if best is None:
            return None, [], wait
        return best, self._take_batch_locked(best), 0.0

    def _take_batch_locked(self, st: _Stream) -> list[_Entry]:
        max_n, max_b = self._cfg.max_batch_records, self._cfg.max_batch_bytes
        batch: list[_Entry] = []
        size = 0
        for q in (st.replay, st.mem):
            while q and len(batch) < max_n and size + q[0][2] <= max_b:
                e = q.popleft()
                batch.append(e)
                size += e[2]
                if e[4] is None:
                    st.mem_bytes -= e[2]
        return batch

    def _next_spill_locked(self) -> _SpillWriter | Path | None:
        """The oldest spill file, when nothing else is queued: its records come next."""
        if any(st.has_queued() for st in self._streams.values()):
            return None
        if not self._sealed and self._writer is not None:
            # Caught up: the active file is the last one, and new records may use memory again.
            self._sealed.append(self._writer)
            self._writer = None
            self._spilling = False
        return self._sealed.popleft() if self._sealed else None

    def _load(self, item: _SpillWriter | Path) -> None:
        if isinstance(item, _SpillWriter):
            item.close()
            item = item.path
        records, clean = read_spill_file(item)
        if not clean:
            log.error("spill file %s ends with a torn record: replaying the rest", item)
        now = self._clock()
        with self._cv:
            self._counts["spill_corrupt_tails"] += not clean
            if not records:
                item.unlink(missing_ok=True)
                return
            lf = _LoadedFile(item, len(records))
            self._loaded.add(lf)
            for stream, pk, data in records:
                st = self._streams.get(stream)
                if st is None:
                    st = self._streams[stream] = _Stream(stream)
                st.replay.append((pk, data, len(data) + len(pk.encode()), now, lf))
            self._counts["replayed"] += len(records)

    def _run(self) -> None:
        try:
            while True:
                load: _SpillWriter | Path | None = None
                with self._cv:
                    while True:
                        if self._stop:
                            return
                        st, batch, wait = self._pick_locked(self._clock())
                        if st is not None:
                            self._sending = True
                            break
                        if self._breaker.retry_after() == 0:
                            load = self._next_spill_locked()
                            if load is not None:
                                self._sending = True
                                break
                        self._cv.wait(wait)
                if load is not None:
                    self._load(load)
                    with self._cv:
                        self._sending = False
                        self._cv.notify_all()
                else:
                    assert st is not None
                    self._send(st, batch)
                self._fire_circuit_events()
        except Exception:
            log.exception("kinesis sender crashed")
            raise
        finally:
            with self._cv:
                self._dump_memory_locked()
                if self._writer is not None:
                    self._sealed.append(self._writer)
                    self._writer = None
                writers = [w for w in self._sealed if isinstance(w, _SpillWriter)]
                self._sending = False
                self._cv.notify_all()
            for w in writers:
                w.close()
            self._fire_circuit_events()

    def _fire_circuit_events(self) -> None:
        with self._lock:
            events, self._events[:] = list(self._events), []
        if self._on_circuit_change is not None:
            for old, new in events:
                _call_hook(self._on_circuit_change, old, new)

    def _send(self, st: _Stream, batch: list[_Entry]) -> None:
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
            self._sending = False
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

    def _ack_locked(self, acked: list[_Entry]) -> None:
        self._counts["acknowledged"] += len(acked)
        for e in acked:
            lf = e[4]
            if lf is None:
                self._buffer_records -= 1
                self._buffer_bytes -= e[2]
            else:
                lf.outstanding -= 1
                if lf.outstanding == 0:
                    lf.path.unlink(missing_ok=True)
                    self._loaded.discard(lf)
