"""The Kinesis producer's limits, settings, statistics, errors and client (the producer itself is
``storage/kinesis.py``, which re-exports every public name here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from botocore.config import Config

from ingest_pipeline.aws import aws_client
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.circuit import CircuitState

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
