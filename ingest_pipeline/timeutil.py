"""Epoch-millisecond hour arithmetic (all times UTC)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def iso_ms(ms: int) -> str:
    """``2024-08-09T00:00:00.123Z``: an epoch-ms time as people read it, to the millisecond."""
    return f"{from_ms(ms):%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def floor_hour(ms: int) -> int:
    return ms - ms % HOUR_MS


def parse_hour(value: str) -> int:
    """Epoch ms of an hour given as ``YYYY-MM-DD-HH:MM`` (Dagster's hourly partition key) or ISO."""
    try:
        dt = datetime.strptime(value, "%Y-%m-%d-%H:%M")
    except ValueError:
        dt = datetime.fromisoformat(value)
    ms = to_ms(dt)
    if ms % HOUR_MS:
        raise ValueError(f"{value!r} is not the start of an hour")
    return ms
