"""The S3 lease against the moto server over HTTP: conditional writes, expiry judged by the
taker's wall clock and the holder's monotonic clock, no revival of a lapsed lease."""

from __future__ import annotations

from typing import Any

import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.settings import Settings
from ingest_pipeline.streaming.lease import LeaseLost, LeaseUnavailable, S3Lease


class Clock:
    def __init__(self) -> None:
        self.wall = 1_000_000_000_000
        self.mono = 100.0

    def advance(self, s: float) -> None:
        self.wall += int(s * 1000)
        self.mono += s


def lease(s3: Any, bucket: str, clock: Clock, name: str = "n", symbols: tuple[str, ...] = ("A",),
          ttl: float = 10.0) -> S3Lease:  # fmt: skip
    # Each process has its own monotonic clock; the wall clock is shared (synchronized hosts).
    return S3Lease(s3, bucket, "streamer", name, symbols, ttl_s=ttl, skew_s=1.0,
                   wall_ms=lambda: clock.wall, monotonic=lambda: clock.mono)  # fmt: skip


def test_one_holder_takeover_after_expiry_and_no_revival(aws_settings: Settings) -> None:
    s3 = aws_client("s3", aws_settings)
    clock = Clock()
    a = lease(s3, aws_settings.bucket, clock)
    b = lease(s3, aws_settings.bucket, clock)
    assert a.try_acquire({"symbols": {"A": {"trade_id": 5}}}) == {}
    assert a.valid() and a.epoch == 1
    with pytest.raises(LeaseUnavailable) as held:
        b.try_acquire()
    assert held.value.retry_in_s == pytest.approx(11.0)
    clock.advance(4)
    a.renew({"written_at_ms": clock.wall, "symbols": {"A": {"trade_id": 9}}})
    assert a.remaining_s() == pytest.approx(9.0)
    # A freezes (no renewal) past the expiry plus the skew margin: B takes over.
    clock.advance(11.5)
    assert not a.valid()
    previous = b.try_acquire()
    assert b.epoch == 2 and previous["holder"] == a.holder
    assert previous["payload"]["symbols"]["A"]["trade_id"] == 9
    assert b.payload == previous["payload"]  # carried forward until B writes its own
    # A wakes up: its lease lapsed by its own clock; it is never renewed again.
    with pytest.raises(LeaseLost, match="lapsed"):
        a.renew({"symbols": {}})
    with pytest.raises(LeaseLost):
        a.renew()
    assert b.read().body["epoch"] == 2
    assert [h["epoch"] for h in b.history()] == [1, 2]


def test_a_holder_that_lost_the_object_cannot_write(aws_settings: Settings) -> None:
    s3 = aws_client("s3", aws_settings)
    clock_a, clock_b = Clock(), Clock()
    a = lease(s3, aws_settings.bucket, clock_a)
    a.try_acquire()
    # B's wall clock runs far ahead (a skewed host): it sees A's lease expired and takes it,
    # although A still holds it by its own clock.
    clock_b.wall += 60_000
    b = lease(s3, aws_settings.bucket, clock_b)
    b.try_acquire()
    # A's conditional write fails: the object is not the one it wrote.
    with pytest.raises(LeaseLost, match="taken over"):
        a.renew({"symbols": {"A": {"trade_id": 1}}})
    assert not a.valid()
    assert b.read().body["holder"] == b.holder and b.read().body["payload"] is None


def test_release_lets_the_next_holder_start_at_once(aws_settings: Settings) -> None:
    s3 = aws_client("s3", aws_settings)
    clock = Clock()
    a = lease(s3, aws_settings.bucket, clock)
    a.try_acquire()
    assert a.release({"written_at_ms": 1, "symbols": {"A": {"trade_id": 42}}})
    assert not a.valid()
    b = lease(s3, aws_settings.bucket, clock)
    previous = b.try_acquire()
    assert previous["released"] and previous["payload"]["symbols"]["A"]["trade_id"] == 42


def test_another_name_claiming_the_same_symbol_blocks(aws_settings: Settings) -> None:
    s3 = aws_client("s3", aws_settings)
    clock = Clock()
    a = lease(s3, aws_settings.bucket, clock, name="group1", symbols=("A", "B"))
    a.try_acquire()
    c = lease(s3, aws_settings.bucket, clock, name="group2", symbols=("B", "C"))
    with pytest.raises(LeaseUnavailable, match=r"\['B'\]"):
        c.try_acquire()
    d = lease(s3, aws_settings.bucket, clock, name="group3", symbols=("C",))
    d.try_acquire()
    assert d.valid()
