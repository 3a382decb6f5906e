"""The Kinesis producer against the moto server, through the fault proxy, over real sockets.

Each test creates its own stream, so a read-back sees only that test's records. Every record
carries (key, seq) so the read-back checks exactly-once delivery and per-key order.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from botocore.config import Config

from ingest_pipeline.standins.faultproxy import FaultProxy
from ingest_pipeline.storage.circuit import CircuitBreaker, CircuitState
from ingest_pipeline.storage.kinesis import (
    MAX_BATCH_BYTES,
    MAX_RECORD_BYTES,
    KinesisProducer,
    NoopKinesisClient,
    ProducerConfig,
    RecordTooLargeError,
)
from ingest_pipeline.storage.spill import (
    SpillContents,
    SpillDirLockedError,
    encode_spill_record,
    read_spill_file,
)

KEYS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")
# Short timeouts keep the stall and outage tests quick; production uses PRODUCER_CLIENT_CONFIG.
TEST_CLIENT_CONFIG = Config(
    connect_timeout=1, read_timeout=1, retries={"total_max_attempts": 1, "mode": "standard"}
)
FAST = ProducerConfig(
    linger_s=0.02,
    backoff_base_s=0.02,
    backoff_max_s=0.3,
    breaker_failure_threshold=3,
    breaker_cooldown_s=0.5,
    call_bound_s=3.0,
    seed=1,
)


@dataclasses.dataclass
class Delivery:
    """What a stream holds for the records a test put."""

    counts: collections.Counter[tuple[str, int]]
    order_violations: int

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.counts.values() if n > 1)

    def assert_at_least_once(self, expected: set[tuple[str, int]]) -> None:
        missing = expected - set(self.counts)
        assert not missing, f"{len(missing)} records lost, e.g. {sorted(missing)[:5]}"
        assert set(self.counts) == expected

    def assert_exactly_once(self, expected: set[tuple[str, int]]) -> None:
        self.assert_at_least_once(expected)
        assert self.duplicates == 0


def read_stream(kinesis: Any, stream: str) -> Delivery:
    counts: collections.Counter[tuple[str, int]] = collections.Counter()
    last: dict[str, int] = {}
    violations = 0
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        it = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while it:
            out = kinesis.get_records(ShardIterator=it, Limit=10_000)
            for r in out["Records"]:
                rec = orjson.loads(r["Data"])
                assert r["PartitionKey"] == rec["k"]
                counts[(rec["k"], rec["i"])] += 1
                # A key lives on one shard; read in sequence order its seq must increase.
                violations += rec["i"] < last.get(rec["k"], -1)
                last[rec["k"]] = max(rec["i"], last.get(rec["k"], -1))
            if not out["Records"]:
                break
            it = out.get("NextShardIterator")
    return Delivery(counts, violations)


def put_many(
    producer: KinesisProducer, stream: str, n: int, start: int = 0, pad: int = 60
) -> set[tuple[str, int]]:
    """``n`` records over KEYS, seq numbered per key from ``start``; returns their ids."""
    ids = set()
    for j in range(start, start + n):
        key, seq = KEYS[j % len(KEYS)], j // len(KEYS)
        producer.put(stream, key, orjson.dumps({"k": key, "i": seq, "p": "x" * pad}))
        ids.add((key, seq))
    return ids


def client_for(url: str, config: Config = TEST_CLIENT_CONFIG) -> Any:
    return boto3.client(
        "kinesis",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=config,
    )


def assert_batches_within_limits(proxy: FaultProxy) -> None:
    assert proxy.put_records_batches
    assert max(n for n, _ in proxy.put_records_batches) <= 500
    assert max(b for _, b in proxy.put_records_batches) <= MAX_BATCH_BYTES


def test_delivers_in_order_across_streams(
    proxy: FaultProxy, new_stream: Callable[[], str], kinesis: Any, tmp_path: Path
) -> None:
    a, b = new_stream(), new_stream()
    acks: collections.Counter[str] = collections.Counter()
    with KinesisProducer(
        client_for(proxy.url), tmp_path, FAST, on_ack=lambda s, n, t0: acks.update({s: n})
    ) as producer:
        ids_a = put_many(producer, a, 1500)
        ids_b = put_many(producer, b, 700)
        assert producer.flush(20)
        stats = producer.stats()
    for stream, ids in ((a, ids_a), (b, ids_b)):
        got = read_stream(kinesis, stream)
        got.assert_exactly_once(ids)
        assert got.order_violations == 0
    assert acks == {a: 1500, b: 700}
    assert stats.put == stats.acknowledged == 2200
    assert stats.buffer_records == stats.buffer_bytes == 0
    assert stats.spilled == stats.failed_entries == stats.call_failures == 0
    assert stats.circuit_state is CircuitState.CLOSED
    assert_batches_within_limits(proxy)
    assert max(n for n, _ in proxy.put_records_batches) == 500


def test_throttled_entries_are_retried_alone(
    proxy: FaultProxy, new_stream: Callable[[], str], kinesis: Any, tmp_path: Path
) -> None:
    stream = new_stream()
    proxy.throttle_fraction = 0.3
    with KinesisProducer(client_for(proxy.url), tmp_path, FAST) as producer:
        ids = put_many(producer, stream, 3000)
        assert producer.flush(30)
        stats = producer.stats()
    got = read_stream(kinesis, stream)
    got.assert_exactly_once(ids)
    assert stats.failed_entries == proxy.counters["throttled_entries"] > 500
    # Only the failed entries go back: everything re-sent is a throttled entry.
    assert stats.retried == stats.failed_entries
    assert stats.acknowledged == 3000
    assert_batches_within_limits(proxy)
    print(f"throttled 30%: order violations within batches: {got.order_violations}")


@pytest.mark.parametrize("fault", ["error_5xx_fraction", "reset_fraction"])
def test_whole_call_failures_are_retried(
    fault: str, proxy: FaultProxy, new_stream: Callable[[], str], kinesis: Any, tmp_path: Path
) -> None:
    stream = new_stream()
    setattr(proxy, fault, 0.25)
    with KinesisProducer(client_for(proxy.url), tmp_path, FAST) as producer:
        ids = put_many(producer, stream, 2000)
        assert producer.flush(30)
        stats = producer.stats()
    got = read_stream(kinesis, stream)
    # Both faults hit before the request is forwarded: nothing was stored twice.
    got.assert_exactly_once(ids)
    assert got.order_violations == 0
    assert stats.call_failures == proxy.counters["errors_5xx"] + proxy.counters["resets"] > 0


def test_stalls_shorter_and_longer_than_the_read_timeout(
    proxy: FaultProxy, new_stream: Callable[[], str], kinesis: Any, tmp_path: Path
) -> None:
    short, long = new_stream(), new_stream()
    proxy.stall_seconds, proxy.stall_fraction = 0.3, 0.3
    with KinesisProducer(client_for(proxy.url), tmp_path / "a", FAST) as producer:
        ids = put_many(producer, short, 1000)
        assert producer.flush(30)
        assert producer.stats().call_failures == 0
    read_stream(kinesis, short).assert_exactly_once(ids)

    # A stall beyond the read timeout: the records were stored, the client gave up and sends
    # them again. At least once, with duplicates counted.
    proxy.stall_seconds, proxy.stall_fraction = 1.3, 0.2
    with KinesisProducer(client_for(proxy.url), tmp_path / "b", FAST) as producer:
        ids = put_many(producer, long, 1000)
        assert producer.flush(30)
        timeouts = producer.stats().call_failures
    got = read_stream(kinesis, long)
    got.assert_at_least_once(ids)
    assert timeouts > 0 and got.duplicates > 0
    print(f"stall > read timeout: {timeouts} timed-out calls, {got.duplicates} duplicates")


def test_outage_spills_to_disk_and_replays_in_order(
    proxy: FaultProxy, new_stream: Callable[[], str], kinesis: Any, tmp_path: Path
) -> None:
    stream = new_stream()
    transitions: list[tuple[CircuitState, CircuitState]] = []
    cfg = dataclasses.replace(FAST, max_buffer_records=300)
    ids: set[tuple[str, int]] = set()
    with KinesisProducer(
        client_for(proxy.url),
        tmp_path,
        cfg,
        on_circuit_change=lambda old, new: transitions.append((old, new)),
    ) as producer:
        ids |= put_many(producer, stream, 200)
        assert producer.flush(10)
        proxy.unreachable = True
        # Kinesis down for 10 s while the feed keeps coming.
        n = 200
        for _ in range(20):
            ids |= put_many(producer, stream, 100, start=n)
            n += 100
            time.sleep(0.5)
        during = producer.stats()
        assert during.circuit_state in (CircuitState.OPEN, CircuitState.HALF_OPEN)
        assert list(tmp_path.glob("spill-*.bin"))
        proxy.unreachable = False
        assert producer.flush(30)
        after = producer.stats()
    got = read_stream(kinesis, stream)
    got.assert_exactly_once(ids)
    assert got.order_violations == 0
    # 300 records fill the memory buffer (journaled there once the circuit opened), the rest
    # go to disk only: written by now or waiting for the next spill round.
    assert during.buffer_records == 300 and during.journaled == 300
    assert during.spilled + during.unspilled_records == 2000 - 300
    assert after.replayed == after.spilled == 2000 - 300
    assert after.dropped == after.disk_errors == 0
    assert not list(tmp_path.glob("spill-*.bin"))
    closed, open_, half = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
    assert transitions[0] == (closed, open_)
    assert (open_, half) in transitions and (half, open_) in transitions
    assert transitions[-1] == (half, closed)
    assert after.circuit_opens >= 2
    print(f"outage: circuit opened {after.circuit_opens} times, spilled {after.spilled}")


def test_close_sends_what_is_buffered(
    proxy: FaultProxy, new_stream: Callable[[], str], kinesis: Any, tmp_path: Path
) -> None:
    stream = new_stream()
    producer = KinesisProducer(
        client_for(proxy.url), tmp_path, dataclasses.replace(FAST, linger_s=60)
    )
    ids = put_many(producer, stream, 999)
    t0 = time.monotonic()
    assert producer.close(20)
    assert time.monotonic() - t0 < 10
    read_stream(kinesis, stream).assert_exactly_once(ids)
    with pytest.raises(RuntimeError):
        producer.put(stream, "BTCUSDT", b"{}")


def test_restart_replays_a_leftover_spill_dir(
    proxy: FaultProxy, new_stream: Callable[[], str], kinesis: Any, tmp_path: Path
) -> None:
    stream = new_stream()
    proxy.unreachable = True
    cfg = dataclasses.replace(FAST, max_buffer_records=100)
    first = KinesisProducer(client_for(proxy.url), tmp_path, cfg)
    ids = put_many(first, stream, 1000)
    assert not first.close(timeout_s=1)
    # The 100 records held in memory were journaled, in files that sort first, before the 900
    # put after the buffer was full went to a spill file.
    assert (first.stats().journaled, first.stats().spilled) == (100, 900)
    counts = [len(read_spill_file(f).records) for f in sorted(tmp_path.glob("spill-*.bin"))]
    assert sum(counts[:-1]) == 100 and counts[-1] == 900

    proxy.unreachable = False
    with KinesisProducer(client_for(proxy.url), tmp_path, FAST) as second:
        ids |= put_many(second, stream, 200, start=1000)
        assert second.flush(20)
        stats = second.stats()
    got = read_stream(kinesis, stream)
    got.assert_exactly_once(ids)
    assert got.order_violations == 0
    # The new records queued on disk behind the leftover ones, or in memory once caught up.
    assert stats.replayed == 1000 + stats.spilled
    assert not list(tmp_path.glob("spill-*.bin"))


def test_one_producer_per_spill_dir(tmp_path: Path) -> None:
    with KinesisProducer(NoopKinesisClient(), tmp_path):
        with pytest.raises(SpillDirLockedError) as err:
            KinesisProducer(NoopKinesisClient(), tmp_path)
    assert str(err.value) == (
        f"spill dir {tmp_path} is locked by another live producer (pid {os.getpid()})"
    )


def test_oversize_records_are_refused_and_big_batches_split(
    proxy: FaultProxy, new_stream: Callable[[], str], kinesis: Any, tmp_path: Path
) -> None:
    stream = new_stream(1)
    with KinesisProducer(client_for(proxy.url), tmp_path, FAST) as producer:
        with pytest.raises(RecordTooLargeError):
            producer.put(stream, "BTCUSDT", b"x" * (MAX_RECORD_BYTES - 6))
        with pytest.raises(ValueError):
            producer.put(stream, "", b"{}")
        # Exactly at the limit is fine; 12 of them need at least three 5 MiB calls.
        for i in range(12):
            empty = orjson.dumps({"k": "BTCUSDT", "i": i, "p": ""})
            pad = "y" * (MAX_RECORD_BYTES - len("BTCUSDT") - len(empty))
            producer.put(stream, "BTCUSDT", orjson.dumps({"k": "BTCUSDT", "i": i, "p": pad}))
        assert producer.flush(30)
        stats = producer.stats()
    assert stats.refused_oversize == 1
    assert stats.put == stats.acknowledged == 12
    assert_batches_within_limits(proxy)
    assert len(proxy.put_records_batches) >= 3
    read_stream(kinesis, stream).assert_exactly_once({("BTCUSDT", i) for i in range(12)})


def test_circuit_breaker_transitions() -> None:
    now = [0.0]
    seen: list[tuple[CircuitState, CircuitState]] = []
    cb = CircuitBreaker(3, 10.0, clock=lambda: now[0], on_change=lambda o, n: seen.append((o, n)))
    cb.record_failure()
    cb.record_failure()
    assert cb.state is CircuitState.CLOSED
    cb.record_failure()
    assert cb.state is CircuitState.OPEN and cb.retry_after() == 10.0
    now[0] = 10.0
    assert cb.state is CircuitState.HALF_OPEN and cb.retry_after() == 0
    cb.record_failure()  # the probe fails: open again, for a full cooldown
    assert cb.state is CircuitState.OPEN and cb.retry_after() == 10.0
    now[0] = 20.0
    assert cb.state is CircuitState.HALF_OPEN
    cb.record_success()
    assert cb.state is CircuitState.CLOSED and cb.consecutive_failures == 0
    c, o, h = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
    assert seen == [(c, o), (o, h), (h, o), (o, h), (h, c)]


def test_spill_file_with_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "spill-1.bin"
    recs = [("s", "BTCUSDT", b"{}"), ("t", "\u00e9", b"x" * 1000), ("s", "K", b"")]
    whole = b"".join(encode_spill_record(*r) for r in recs)
    path.write_bytes(whole)
    assert read_spill_file(path) == SpillContents(recs, [])
    torn = encode_spill_record("s", "K", b"tail")[:-2]
    path.write_bytes(whole + torn)
    assert read_spill_file(path) == SpillContents(recs, [(len(whole), len(torn))])


def test_a_failing_hook_does_not_stop_delivery(tmp_path: Path) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("metrics backend down")

    with KinesisProducer(NoopKinesisClient(), tmp_path, FAST, on_ack=boom) as producer:
        put_many(producer, "s", 50)
        assert producer.flush(5)
        put_many(producer, "s", 50, start=50)
        assert producer.flush(5)
        assert producer.stats().acknowledged == 100
