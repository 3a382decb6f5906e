"""The WebSocket server's building blocks: stream names, the ``serverShutdown`` event, the
switchable WS faults and their seeded draws, one client connection with its send queue, and the
log of emitted ids (``GET /_sim/ws/emitted``)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ingest_pipeline.standins.simulator.basics import mix64, stable_u64


def stream_symbol(symbol: str) -> str:
    """The symbol as it appears in a stream name (Binance lower-cases it)."""
    return symbol.lower()


def server_shutdown_event(now_ms: int) -> str:
    return orjson.dumps({"e": "serverShutdown", "E": now_ms}).decode()


@dataclass
class WsFaultSettings:
    """Runtime-switchable WebSocket faults (``GET``/``POST /_sim/ws/faults``).

    Rates are drawn deterministically from ``seed``: ``drop_rate`` per connection and second
    (abrupt TCP close), ``skip_depth_rate`` per depth batch and symbol (one ``@depth@100ms``
    diff omitted: the next one has ``U != previous u + 1``), ``malformed_rate`` per data frame
    (alternately an invalid JSON text frame and a payload with a bad price field).
    ``skip_depth_next`` omits the next N depth batches of whatever symbols are streamed.
    """

    drop_rate: float = 0.0
    skip_depth_rate: float = 0.0
    malformed_rate: float = 0.0
    skip_depth_next: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("drop_rate", "skip_depth_rate", "malformed_rate"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if not isinstance(self.skip_depth_next, int) or self.skip_depth_next < 0:
            raise ValueError("skip_depth_next must be an int >= 0")


class Draw:
    """Deterministic Bernoulli draws: the n-th draw of a seeded sequence."""

    def __init__(self, seed: int, name: str) -> None:
        self.key = stable_u64(f"ws-faults|{name}|{seed}")
        self.n = 0

    def __call__(self, rate: float) -> bool:
        if rate <= 0:
            return False
        self.n += 1
        return (mix64(self.key ^ mix64(self.n)) >> 11) / float(1 << 53) < rate


@dataclass
class EmitLog:
    """What was emitted on one stream: a count and the last ``limit`` ids.

    A payload counts as emitted once its frame has been written to a subscriber's socket, not
    when it is queued: frames still queued on a connection that then closes (a stalled one the
    client gave up on, say) never left the server, exactly as on Binance.
    """

    limit: int
    count: int = 0
    ids: deque[Any] = field(default_factory=deque)

    def add(self, ident: Any) -> None:
        self.count += 1
        self.ids.append(ident)
        if len(self.ids) > self.limit:
            self.ids.popleft()


class Emission:
    """One published payload, shared by the frames queued to its subscribers: logged as
    emitted by the first of them that is written to a socket."""

    __slots__ = ("ident", "logged", "stream")

    def __init__(self, stream: str, ident: Any) -> None:
        self.stream = stream
        self.ident = ident
        self.logged = False


class WsConnection:
    """One client connection: its subscriptions and an outgoing frame buffer."""

    def __init__(
        self, cid: int, ws: web.WebSocketResponse, transport: Any, combined: bool, ip: str
    ) -> None:
        self.id = cid
        self.ws = ws
        self.transport = transport
        self.combined = combined
        self.ip = ip
        self.streams: dict[str, None] = {}  # insertion-ordered set
        # Outgoing frames, each with the emission it carries (None: a reply, not market data).
        self.buf: list[tuple[str, Emission | None]] = []
        self.wake = asyncio.Event()
        self.closed = False
        self.stall_until = 0.0  # monotonic seconds
        self.opened = time.monotonic()
        self.incoming: deque[float] = deque()
        self.ping_pending_since: float | None = None
        self.sent = 0

    def push(self, frame: str, emission: Emission | None = None) -> None:
        self.buf.append((frame, emission))
        self.wake.set()

    def abort(self) -> None:
        """Close the TCP connection without a close frame (an abrupt drop)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.wake.set()
