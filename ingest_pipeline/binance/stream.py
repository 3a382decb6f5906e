"""Binance spot WebSocket connections (SPEC §1): combined streams, pings, reconnects, rollover.

Transport only: frames go to a callback with their receive time; parsing, deduplication and
routing are the streamer's job (``ingest_pipeline.streaming``).

- URL: ``<ws_base>/stream?streams=a/b/c``, lower-case stream names, at most 1024 streams per
  connection; ``shard_streams`` splits a symbol list across connections.
- Pings: the server pings every 20 s and drops a client that has not answered within a minute.
  We read with ``autoping=False`` and answer every ping ourselves, so a ping also counts as a
  sign of life for the watchdog.
- Reconnects: capped exponential backoff with full jitter (``delay = U(0, min(cap, base*2^n))``),
  and a process-wide ``AttemptLimiter`` that never allows more than 300 connection attempts in any
  5-minute window (Binance's per-IP limit), whatever the number of shards.
- Rollover: a connection lives at most 24 h. Before ``max_age_s`` we open the replacement first,
  read both for ``overlap_s``, then close the old one. Both feed the same callback; the
  streamer drops the overlap's duplicates by record key. ``serverShutdown`` triggers the same
  make-before-break handover at once (the old connection is read until it closes or the new one
  has taken over).
- Silence watchdog, judged per connection and never per stream or symbol (a quiet symbol's
  trade stream may stay silent for minutes; that is not a fault). Two rules:
  1. transport: every frame counts (data on any of its streams, a server ping, a pong). After
     ``probe_after_s`` of total silence we send a ping (Binance answers with a pong); if nothing
     at all arrives within ``silence_timeout_s`` of the last frame, the socket is dead.
  2. data: a connection that carries ``@depth@100ms`` streams receives a diff every 100 ms per
     symbol on a live server, quiet or not, so ``data_timeout_s`` (30 s by default) without any
     data frame means the stream is stuck even if the socket still answers pings.
  Either way the connection is stalled: closed and replaced (with backoff).
- Every network wait has its own bound and ends at ``stop()``: a connect (TCP, TLS and the
  HTTP upgrade together) is abandoned after ``connect_timeout_s``, a ping or UNSUBSCRIBE send
  after ``send_timeout_s``, a read by the watchdog; backoff sleeps and the attempt limiter's
  waits are raced against stop, so a stop is honoured within about ``tick_s`` whatever the
  network does. A malformed URL is a configuration error (``InvalidEndpoint``), never retried.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import aiohttp
import orjson

from ingest_pipeline.records import STREAMED
from ingest_pipeline.settings import WS_SCHEMES, InvalidEndpoint, check_url

log = logging.getLogger(__name__)

MAX_STREAMS_PER_CONNECTION = 1024
# Binance: at most 300 connection attempts per 5 minutes per IP.
MAX_ATTEMPTS = 300
ATTEMPT_WINDOW_S = 300.0
# The WebSocket streams of the streamed data types (the registry's), per symbol.
DEFAULT_KINDS = tuple(t.ws for t in STREAMED if t.ws is not None)
T = TypeVar("T")


def stream_names(symbols: Iterable[str], kinds: Sequence[str] = DEFAULT_KINDS) -> list[str]:
    """``["btcusdt@trade", "btcusdt@bookTicker", "btcusdt@depth@100ms", ...]`` (symbol order)."""
    return [f"{s.lower()}@{k}" for s in symbols for k in kinds]


def shard_streams(
    symbols: Sequence[str],
    kinds: Sequence[str] = DEFAULT_KINDS,
    max_streams: int = MAX_STREAMS_PER_CONNECTION,
) -> list[list[str]]:
    """Stream names split into connections of at most ``max_streams``; a symbol's streams stay
    on one connection (its depth ticks keep that connection's watchdog fed)."""
    per_symbol = len(kinds)
    if not 1 <= per_symbol <= max_streams:
        raise ValueError(f"{per_symbol} streams per symbol do not fit {max_streams} per connection")
    per_conn = max_streams // per_symbol
    return [
        stream_names(symbols[i : i + per_conn], kinds) for i in range(0, len(symbols), per_conn)
    ]


def combined_url(ws_base: str, streams: Sequence[str]) -> str:
    """``<ws_base>/stream?streams=a/b/c``; ``InvalidEndpoint`` unless the base is a ws(s) URL."""
    check_url(ws_base, WS_SCHEMES)
    if not streams:
        raise ValueError("no streams")
    if len(streams) > MAX_STREAMS_PER_CONNECTION:
        raise ValueError(f"{len(streams)} streams exceed {MAX_STREAMS_PER_CONNECTION}")
    return f"{ws_base.rstrip('/')}/stream?streams={'/'.join(streams)}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def describe(exc: BaseException) -> str:
    """``TypeName: message`` of an exception, never empty (``TimeoutError()`` prints as "")."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_reply(data: str | bytes, request_id: int) -> bool:
    """Is this frame the reply ``{"result": ..., "id": request_id}`` to our request?"""
    if isinstance(data, str):
        if not data.startswith('{"result"'):
            return False
    elif not data.startswith(b'{"result"'):
        return False
    try:
        return bool(orjson.loads(data).get("id") == request_id)
    except (ValueError, AttributeError):
        return False


class AttemptLimiter:
    """At most ``max_attempts`` connection attempts in any ``window_s``; shared by all shards."""

    def __init__(
        self,
        max_attempts: int = MAX_ATTEMPTS,
        window_s: float = ATTEMPT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_attempts = max_attempts
        self.window_s = window_s
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()
        self._lock = asyncio.Lock()
        self.waited_s = 0.0

    def _prune(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()

    def delay(self) -> float:
        """Seconds until an attempt is allowed (0: now)."""
        now = self._clock()
        self._prune(now)
        if len(self._times) < self.max_attempts:
            return 0.0
        return self._times[0] + self.window_s - now

    async def acquire(self) -> None:
        async with self._lock:
            while (wait := self.delay()) > 0:
                log.warning("connection attempt limit reached: waiting %.1f s", wait)
                self.waited_s += wait
                await asyncio.sleep(wait)
            self._times.append(self._clock())

    def attempts_in_window(self) -> int:
        self._prune(self._clock())
        return len(self._times)


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    max_age_s: float = 23 * 3600 + 45 * 60  # roll over 15 min before Binance's 24 h mark
    overlap_s: float = 5.0
    probe_after_s: float = 5.0
    silence_timeout_s: float = 15.0
    # Data frames only, on a connection carrying @depth@100ms streams (None: never).
    data_timeout_s: float | None = 30.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    # TCP connect, TLS and the HTTP upgrade together; aiohttp's own default would be 300 s.
    connect_timeout_s: float = 10.0
    # A ping or UNSUBSCRIBE that cannot be written (a peer that stopped reading).
    send_timeout_s: float = 5.0
    tick_s: float = 0.1
    drain_timeout_s: float = 2.0
    max_msg_bytes: int = 16 * 1024 * 1024


class LinkEnd(enum.StrEnum):
    CLOSED = "closed"  # the server closed it or the socket failed
    STALLED = "stalled"  # the watchdog gave up on it
    ROLLOVER = "rollover"  # replaced before the 24 h mark
    SERVER_SHUTDOWN = "server_shutdown"
    STOPPED = "stopped"


# on_frame(raw, ingest_ts, link) -> True when the frame was a serverShutdown (hand over now).
FrameCallback = Callable[[str | bytes, int, "Link"], bool]


class Link:
    """One open WebSocket and its reader task."""

    _ids = itertools.count(1)

    def __init__(self, shard: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.id = next(Link._ids)
        self.shard = shard
        self.ws = ws
        self.opened_at = time.monotonic()
        self.last_frame = self.opened_at
        self.last_data = self.opened_at
        self.data_frames = 0
        self.pings = 0
        self.pongs = 0
        self.probes = 0
        self.probed_at: float | None = None
        self.shutdown_announced = False
        # Set while retiring: the id of our UNSUBSCRIBE and the event its reply sets.
        self.unsubscribe_id: int | None = None
        self.drained = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.error: str | None = None

    def age(self) -> float:
        return time.monotonic() - self.opened_at

    def silence(self) -> float:
        return time.monotonic() - self.last_frame

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        try:
            await asyncio.wait_for(self.ws.close(), 2.0)
        except (TimeoutError, aiohttp.ClientError, OSError, asyncio.CancelledError):
            pass
        if self.task is not None:
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass


class ShardConnection:
    """Keeps one shard's streams connected until ``stop()``; frames go to ``on_frame``."""

    def __init__(
        self,
        shard: int,
        ws_base: str,
        streams: Sequence[str],
        on_frame: FrameCallback,
        session: aiohttp.ClientSession,
        limiter: AttemptLimiter,
        config: StreamConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.shard = shard
        self.streams = list(streams)
        self.url = combined_url(ws_base, self.streams)
        # depth@100ms ticks ~10 times a second per symbol on a live server: data silence on a
        # connection carrying it means a stalled stream, even if pings still flow.
        self.expects_data = any(s.endswith("@depth@100ms") for s in self.streams)
        self._on_frame = on_frame
        self._session = session
        self._limiter = limiter
        self.cfg = config or StreamConfig()
        self._rng = rng or random.Random()
        self._stop = asyncio.Event()
        self.links: list[Link] = []
        self.failures = 0  # consecutive failed attempts/links (the backoff exponent)
        self.attempts = 0
        self.connects = 0
        self.reconnects = 0
        # Keyed by ``LinkEnd.value``: plain strings, so any snapshot of it is JSON as it is.
        self.reconnect_reasons: collections.Counter[str] = collections.Counter()
        self.rollovers = 0
        self.drains = 0
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return any(not link.ws.closed for link in self.links)

    def stop(self) -> None:
        self._stop.set()

    # --- connecting ------------------------------------------------------------------------

    def backoff_delay(self) -> float:
        if self.failures == 0:
            return 0.0
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** min(self.failures, 30))
        return self._rng.uniform(0, cap)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped first; False if stopped."""
        if seconds <= 0:
            return not self._stop.is_set()
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
            return False
        except TimeoutError:
            return True

    async def _unless_stopped(self, aw: Awaitable[T]) -> asyncio.Task[T] | None:
        """Await ``aw`` until it ends or ``stop()``: its finished task, or None (cancelled) when
        stop came first."""
        task = asyncio.ensure_future(aw)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))
        return None if task.cancelled() else task

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        # The session's timeout would govern the upgrade request (aiohttp: 300 s total by
        # default); this bound covers DNS, TCP, TLS and the handshake together.
        async with asyncio.timeout(self.cfg.connect_timeout_s):
            return await self._session.ws_connect(
                self.url,
                autoping=False,
                heartbeat=None,
                max_msg_size=self.cfg.max_msg_bytes,
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                compress=0,
            )

    async def _open(self) -> Link | None:
        """Connect, retrying with backoff; None once stopped."""
        while not self._stop.is_set():
            if not await self._sleep(self.backoff_delay()):
                return None
            if await self._unless_stopped(self._limiter.acquire()) is None:
                return None
            self.attempts += 1
            task = await self._unless_stopped(self._connect())
            if task is None:
                return None
            try:
                ws = task.result()
            except aiohttp.InvalidURL as exc:
                raise InvalidEndpoint(f"WebSocket URL {exc}: not a valid URL") from exc
            except aiohttp.ClientError as exc:  # first: aiohttp's own timeouts are TimeoutErrors
                self._connect_failed(describe(exc))
                continue
            except TimeoutError:  # ours, from _connect
                self._connect_failed(f"no answer within {self.cfg.connect_timeout_s:g} s")
                continue
            except OSError as exc:
                self._connect_failed(describe(exc))
                continue
            link = Link(self.shard, ws)
            link.task = asyncio.create_task(
                self._read(link), name=f"ws-shard{self.shard}-{link.id}"
            )
            self.links.append(link)
            self.connects += 1
            log.info("shard %d: connected link %d (%d streams)", self.shard, link.id,
                     len(self.streams))  # fmt: skip
            return link
        return None

    def _connect_failed(self, reason: str) -> None:
        self.failures += 1
        self.last_error = f"connect: {reason}"
        log.warning("shard %d: connect failed (%s), attempt %d", self.shard, reason,
                    self.failures)  # fmt: skip

    # --- reading ---------------------------------------------------------------------------

    async def _read(self, link: Link) -> None:
        ws = link.ws
        on_frame = self._on_frame
        text, binary = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY
        ping, pong = aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG
        try:
            while True:
                msg = await ws.receive()
                received = time.monotonic()
                ingest_ts = time.time_ns() // 1_000_000
                link.last_frame = received
                kind = msg.type
                if kind is text or kind is binary:
                    uid = link.unsubscribe_id
                    if uid is not None and _is_reply(msg.data, uid):
                        link.drained.set()
                        continue
                    link.last_data = received
                    link.data_frames += 1
                    if link.data_frames == 1:
                        # A link that delivers data resets the backoff exponent.
                        self.failures = 0
                    if on_frame(msg.data, ingest_ts, link):
                        link.shutdown_announced = True
                elif kind is ping:
                    link.pings += 1
                    await ws.pong(msg.data)
                elif kind is pong:
                    link.pongs += 1
                else:  # CLOSE, CLOSING, CLOSED, ERROR
                    if kind is aiohttp.WSMsgType.ERROR:
                        link.error = repr(ws.exception())
                    else:
                        link.error = f"closed by server ({ws.close_code})"
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a callback bug must not kill the shard silently
            link.error = repr(exc)
            log.exception("shard %d: reader of link %d failed", self.shard, link.id)

    # --- supervision -----------------------------------------------------------------------

    async def _watch(self, link: Link) -> LinkEnd:
        """Wait until ``link`` must be replaced; sends the silence probe."""
        cfg = self.cfg
        while True:
            if self._stop.is_set():
                return LinkEnd.STOPPED
            assert link.task is not None
            if link.shutdown_announced:  # before "closed": the close follows the event
                return LinkEnd.SERVER_SHUTDOWN
            if link.task.done():
                return LinkEnd.CLOSED
            silence = link.silence()
            if silence >= cfg.silence_timeout_s:
                link.error = f"no frame at all for {silence:.1f} s"
                return LinkEnd.STALLED
            if (
                self.expects_data
                and cfg.data_timeout_s is not None
                and time.monotonic() - link.last_data >= cfg.data_timeout_s
            ):
                link.error = f"no data frame for {cfg.data_timeout_s:g} s"
                return LinkEnd.STALLED
            if silence >= cfg.probe_after_s and (
                link.probed_at is None or link.probed_at < link.last_frame
            ):
                link.probed_at = time.monotonic()
                link.probes += 1
                try:
                    await asyncio.wait_for(link.ws.ping(b"watchdog"), cfg.send_timeout_s)
                except (TimeoutError, aiohttp.ClientError, OSError, RuntimeError):
                    pass
            if link.age() >= cfg.max_age_s:
                return LinkEnd.ROLLOVER
            await self._sleep(cfg.tick_s)

    async def _retire(self, link: Link, graceful: bool = False) -> None:
        """Close ``link``. Graceful: UNSUBSCRIBE first and keep reading until the server's reply,
        which it queues behind every frame it sent before: nothing sent to us is cut off."""
        if graceful and not link.ws.closed and link.task is not None and not link.task.done():
            link.unsubscribe_id = 1_000_000 + link.id
            request = {"method": "UNSUBSCRIBE", "params": self.streams, "id": link.unsubscribe_id}
            try:
                await asyncio.wait_for(
                    link.ws.send_str(orjson.dumps(request).decode()), self.cfg.send_timeout_s
                )
                await asyncio.wait_for(link.drained.wait(), self.cfg.drain_timeout_s)
                self.drains += 1
            except (TimeoutError, aiohttp.ClientError, OSError, RuntimeError) as exc:
                log.warning("shard %d: link %d not drained: %s", self.shard, link.id,
                            describe(exc))  # fmt: skip
        await link.close()
        if link in self.links:
            self.links.remove(link)

    async def run(self) -> None:
        current: Link | None = None
        try:
            while not self._stop.is_set():
                if current is None:
                    current = await self._open()
                    if current is None:
                        break
                end = await self._watch(current)
                if end is LinkEnd.STOPPED:
                    break
                self.reconnect_reasons[end.value] += 1
                if end in (LinkEnd.ROLLOVER, LinkEnd.SERVER_SHUTDOWN):
                    # Make before break: the old link keeps reading while the new one connects.
                    log.info("shard %d: %s of link %d after %.1f s", self.shard, end, current.id,
                             current.age())  # fmt: skip
                    self.rollovers += end is LinkEnd.ROLLOVER
                    self.reconnects += 1
                    new = await self._open()
                    if new is None:
                        break
                    old, current = current, new
                    await self._overlap(old, new)
                    await self._retire(old, graceful=True)
                else:
                    self.reconnects += 1
                    self.failures += 1
                    self.last_error = current.error or str(end)
                    log.warning("shard %d: link %d %s (%s); reconnecting", self.shard, current.id,
                                end, self.last_error)  # fmt: skip
                    await self._retire(current)
                    current = None
        finally:
            for link in list(self.links):
                await self._retire(link, graceful=True)

    async def _overlap(self, old: Link, new: Link) -> None:
        """Read both until the overlap has passed (or either side ends)."""
        deadline = time.monotonic() + self.cfg.overlap_s
        assert old.task is not None and new.task is not None
        while time.monotonic() < deadline and not self._stop.is_set():
            if old.task.done() or new.task.done():
                return
            await self._sleep(self.cfg.tick_s)

    def snapshot(self) -> dict[str, object]:
        return {
            "shard": self.shard,
            "streams": len(self.streams),
            "connected": self.connected,
            "links": [
                {
                    "id": link.id,
                    "age_s": round(link.age(), 3),
                    "silence_s": round(link.silence(), 3),
                    "data_frames": link.data_frames,
                    "pings": link.pings,
                    "pongs": link.pongs,
                    "probes": link.probes,
                }
                for link in self.links
            ],
            "attempts": self.attempts,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "reconnect_reasons": dict(self.reconnect_reasons),
            "rollovers": self.rollovers,
            "backoff_failures": self.failures,
            "last_error": self.last_error,
        }
