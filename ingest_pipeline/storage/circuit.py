"""A consecutive-failure circuit breaker: the Kinesis producer's (``storage/kinesis.py``)."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


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
