"""Binance spot WebSocket market streams over the synthetic market (or a replayed capture).

Served on the same aiohttp app and port as the REST surface, as Binance serves
``/ws/<stream>`` and ``/stream?streams=a/b/c`` from its stream host. Behaviour follows
``web-socket-streams.md`` of binance/binance-spot-api-docs:

- raw streams at ``/ws/<stream>`` (also ``/ws/a/b/c`` and bare ``/ws``), combined streams at
  ``/stream?streams=a/b/c`` (also bare ``/stream``); combined frames are
  ``{"stream":"<name>","data":<payload>}``; live ``SUBSCRIBE``/``UNSUBSCRIBE``/
  ``LIST_SUBSCRIPTIONS``/``SET_PROPERTY``/``GET_PROPERTY`` requests.
- streams ``<symbol>@trade``, ``<symbol>@bookTicker``, ``<symbol>@depth@100ms`` and
  ``<symbol>@depth`` (1000 ms); the symbol is the lower-cased listed symbol (``str.lower``,
  so non-ASCII symbols keep their letters). Unknown stream names are accepted and stay silent,
  as on Binance.
- the server pings every ``ws_ping_interval`` seconds (20 s) and drops a client that leaves a
  ping unanswered for ``ws_pong_timeout`` (60 s); more than ``ws_max_incoming_per_second`` (5)
  incoming messages (text, ping and pong frames) within one second drop the connection; at most
  ``ws_max_streams`` (1024) streams per connection; a connection lives ``ws_max_lifetime``
  (24 h); at most ``ws_connect_limit`` (300) upgrade attempts per ``ws_connect_window`` (5 min)
  per IP, answered with HTTP 429 beyond.

Choices where the docs are silent (documented here, kept stable):
- request errors are ``{"error": {"code": c, "msg": m}, "id": id}`` with the codes/messages of
  the docs' error table (what the live servers send);
- ``serverShutdown`` on market streams is the bare event ``{"e":"serverShutdown","E":<ms>}``
  (the shape of the WebSocket API/user-data event, without the ``subscriptionId`` wrapper), sent
  unwrapped on combined connections too, then the server closes with code 1000;
- close codes: 1000 for the 24 h mark and after ``serverShutdown``, 1008 for a rate-limit or
  pong-timeout violation, 1009 for a slow consumer; injected drops close the TCP connection
  without a close frame;
- more than 1024 streams in the URL: HTTP 400 ``{"code":-1,"msg":...}`` on upgrade; in a
  ``SUBSCRIBE``: error code 2 and the subscription is not changed.

Synthetic streams are computed once per symbol and batch and fanned out to all subscribers:
- trades are emitted at their trade time ``T`` (checked every ``ws_tick_ms``), and are exactly
  the trades ``historicalTrades``/``aggTrades`` return later (same id, price, qty, T, side);
- ``depthUpdate`` for batch ``b`` (100 ms) is ``SymbolModel.book_diff(b)``, emitted once the
  batch has begun: ``U = U(b-1)+1``, ``u = U(b)`` continue the REST snapshot's
  ``lastUpdateId``; ``@depth`` merges ten batches (``U`` of the first, ``u`` of the last);
- ``bookTicker`` is the top of ``book(b)`` with ``u = U(b)``, sent when the top changes;
- ``E`` is the simulator clock at emission.

Replay mode (``replay.py``): the first subscription starts playback of the capture; each
recorded frame is published at its recorded receive time + the replay's offset (one whole
number of seconds chosen at start), with the recorded bytes except trade ``E``/``T`` and depth
``E``, which carry the same offset; ids, prices and quantities are the recorded ones. Streams
the capture does not hold (``@depth``, other symbols) stay silent, and so does the synthetic
market.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from ingest_pipeline.standins.simulator.config import SimulatorConfig
from ingest_pipeline.standins.simulator.market import Market
from ingest_pipeline.standins.simulator.replay import Replayer
from ingest_pipeline.standins.simulator.ws_conn import (
    Draw,
    Emission,
    EmitLog,
    WsConnection,
    WsFaultSettings,
    server_shutdown_event,
    stream_symbol,
)
from ingest_pipeline.standins.simulator.ws_control import WsControl
from ingest_pipeline.standins.simulator.ws_market import LiveMarket, SymbolState

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("trade", "bookTicker", "depth@100ms", "depth")
_METHODS = "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"


class BinanceWs(LiveMarket, WsControl):
    """WebSocket streams, connection rules, faults and the emitted log of one server."""

    def __init__(self, config: SimulatorConfig, market: Market, clock: Callable[[], int]) -> None:
        self.config = config
        self.market = market
        self.clock = clock
        self.by_stream_symbol = {stream_symbol(s): s for s in market.models}
        self.faults = WsFaultSettings(seed=config.seed)
        self._draws = self._new_draws()
        self.conns: dict[int, WsConnection] = {}
        self.subs: dict[str, set[WsConnection]] = {}
        self.emitted: dict[str, EmitLog] = {}
        self.stats: dict[str, int] = {
            "connections": 0,
            "refused_429": 0,
            "refused_streams": 0,
            "dropped_rate_limit": 0,
            "dropped_pong_timeout": 0,
            "dropped_lifetime": 0,
            "dropped_fault": 0,
            "dropped_slow": 0,
            "server_shutdown": 0,
            "skipped_depth": 0,
            "malformed": 0,
            "pings_sent": 0,
        }
        self._attempts: dict[str, deque[float]] = {}
        self._next_id = 0
        self._states: dict[str, SymbolState] = {}
        self._trade_heap: list[tuple[int, str]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stall_all_until = 0.0
        self.replay: Replayer | None = None  # set by the server in replay mode

    def _new_draws(self) -> dict[str, Draw]:
        s = self.faults.seed
        return {k: Draw(s, k) for k in ("drop", "skip", "malformed", "malformed_kind")}

    # ---- app ------------------------------------------------------------------------------
    def install(self, app: web.Application) -> None:
        app.router.add_get("/ws", self._handle_raw)
        app.router.add_get("/ws/{tail:.*}", self._handle_raw)
        app.router.add_get("/stream", self._handle_combined)
        app.router.add_get("/_sim/ws/faults", self._get_faults)
        app.router.add_post("/_sim/ws/faults", self._post_faults)
        app.router.add_post("/_sim/ws/drop", self._post_drop)
        app.router.add_post("/_sim/ws/stall", self._post_stall)
        app.router.add_post("/_sim/ws/shutdown", self._post_shutdown)
        app.router.add_post("/_sim/ws/reset", self._post_reset)
        app.router.add_get("/_sim/ws/emitted", self._get_emitted)
        app.router.add_get("/_sim/ws/stats", self._get_stats)
        app.router.add_post("/_sim/replay/start", self._post_replay_start)
        app.router.add_get("/_sim/replay/status", self._get_replay_status)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_startup(self, app: web.Application) -> None:
        if self.replay is None:
            self._tasks.append(asyncio.create_task(self._live_loop(), name="ws-live"))
        self._tasks.append(asyncio.create_task(self._keeper_loop(), name="ws-keeper"))

    async def _on_shutdown(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for conn in list(self.conns.values()):
            conn.abort()
        if self.replay is not None:
            self.replay.stop()

    # ---- connections ----------------------------------------------------------------------
    async def _handle_raw(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        names = [s for s in tail.split("/") if s]
        return await self._serve(request, names, combined=False)

    async def _handle_combined(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("streams", "")
        names = [s for s in raw.split("/") if s]
        return await self._serve(request, names, combined=True)

    def _admit(self, ip: str) -> bool:
        now = time.monotonic()
        q = self._attempts.setdefault(ip, deque())
        while q and q[0] <= now - self.config.ws_connect_window:
            q.popleft()
        if len(q) >= self.config.ws_connect_limit:
            return False
        q.append(now)
        return True

    async def _serve(
        self, request: web.Request, names: list[str], combined: bool
    ) -> web.StreamResponse:
        ip = request.remote or "?"
        if not self._admit(ip):
            self.stats["refused_429"] += 1
            return web.json_response(
                {"code": -1003, "msg": "Too many connection attempts."},
                status=429,
                headers={"Retry-After": str(int(self.config.ws_connect_window))},
            )
        names = list(dict.fromkeys(names))
        if len(names) > self.config.ws_max_streams:
            self.stats["refused_streams"] += 1
            return web.json_response(
                {"code": -1, "msg": f"Too many streams: at most {self.config.ws_max_streams}."},
                status=400,
            )
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        self._next_id += 1
        conn = WsConnection(self._next_id, ws, request.transport, combined, ip)
        self.conns[conn.id] = conn
        self.stats["connections"] += 1
        self._subscribe(conn, names)
        writer = asyncio.create_task(self._writer(conn))
        try:
            await self._reader(conn)
        finally:
            conn.closed = True
            conn.wake.set()
            self._unsubscribe(conn, list(conn.streams))
            self.conns.pop(conn.id, None)
            writer.cancel()
            if not ws.closed:
                await ws.close()
        return ws

    async def _reader(self, conn: WsConnection) -> None:
        ws = conn.ws
        async for msg in ws:
            if conn.closed:
                break
            if not self._count_incoming(conn):
                self.stats["dropped_rate_limit"] += 1
                await self._close(conn, 1008, "Too many messages")
                break
            if msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                conn.ping_pending_since = None
            elif msg.type == WSMsgType.TEXT:
                reply = self._request(conn, msg.data)
                if reply is not None:
                    conn.push(reply)
            elif msg.type == WSMsgType.BINARY:
                conn.push(_error(3, "Invalid JSON: expected value at line 1 column 1", None))
            else:
                break

    def _count_incoming(self, conn: WsConnection) -> bool:
        now = time.monotonic()
        q = conn.incoming
        q.append(now)
        while q and q[0] <= now - 1.0:
            q.popleft()
        return len(q) <= self.config.ws_max_incoming_per_second

    async def _writer(self, conn: WsConnection) -> None:
        ws = conn.ws
        try:
            while not conn.closed:
                await conn.wake.wait()
                conn.wake.clear()
                stall = max(conn.stall_until, self._stall_all_until) - time.monotonic()
                if stall > 0:
                    await asyncio.sleep(stall)
                    conn.wake.set()
                    continue
                if len(conn.buf) > self.config.ws_max_pending:
                    self.stats["dropped_slow"] += 1
                    await self._close(conn, 1009, "Slow consumer")
                    return
                frames, conn.buf = conn.buf, []
                for frame, emission in frames:
                    if conn.closed:
                        return
                    await ws.send_str(frame)
                    conn.sent += 1
                    if emission is not None and not emission.logged:
                        emission.logged = True
                        self._log_emitted(emission)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            return
        except Exception:  # a failed write ends this connection, never the server
            log.exception("websocket writer failed")

    async def _close(self, conn: WsConnection, code: int, reason: str) -> None:
        if conn.closed:
            return
        conn.closed = True
        conn.wake.set()
        try:
            await asyncio.wait_for(conn.ws.close(code=code, message=reason.encode()), 2.0)
        except (TimeoutError, ConnectionError, RuntimeError):
            conn.abort()

    async def _keeper_loop(self) -> None:
        """Pings, pong timeouts, the 24 h mark and drop faults, checked every 50 ms."""
        cfg = self.config
        last_ping: dict[int, float] = {}
        last_drop_check = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            drop_tick = now - last_drop_check >= 1.0
            if drop_tick:
                last_drop_check = now
            for conn in list(self.conns.values()):
                if conn.closed:
                    continue
                if now - conn.opened >= cfg.ws_max_lifetime:
                    self.stats["dropped_lifetime"] += 1
                    if cfg.ws_shutdown_event_at_lifetime:
                        await self._send_now(conn, server_shutdown_event(self.clock()))
                    asyncio.create_task(self._close(conn, 1000, "24h limit"))
                    continue
                pending = conn.ping_pending_since
                if pending is not None and now - pending > cfg.ws_pong_timeout:
                    self.stats["dropped_pong_timeout"] += 1
                    asyncio.create_task(self._close(conn, 1008, "Pong timeout"))
                    continue
                if drop_tick and self._draws["drop"](self.faults.drop_rate):
                    self.stats["dropped_fault"] += 1
                    conn.abort()
                    continue
                stalled = max(conn.stall_until, self._stall_all_until) > now
                if (
                    not stalled
                    and now - last_ping.get(conn.id, conn.opened) >= cfg.ws_ping_interval
                ):
                    last_ping[conn.id] = now
                    if conn.ping_pending_since is None:
                        conn.ping_pending_since = now
                    self.stats["pings_sent"] += 1
                    try:
                        await conn.ws.ping(str(self.clock()).encode())
                    except (ConnectionError, RuntimeError):
                        conn.abort()
            for cid in [c for c in last_ping if c not in self.conns]:
                del last_ping[cid]

    async def _send_now(self, conn: WsConnection, frame: str) -> None:
        try:
            await conn.ws.send_str(frame)
        except (ConnectionError, RuntimeError):
            pass

    # ---- requests -------------------------------------------------------------------------
    def _request(self, conn: WsConnection, text: str) -> str | None:
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return _error(3, f"Invalid JSON: {exc}", None)
        if not isinstance(req, dict):
            return _error(3, "Invalid JSON: expected an object", None)
        rid = req.get("id")
        if not _valid_id(rid):
            return _error(2, "Invalid request: request ID must be an unsigned integer", None)
        if "method" not in req:
            return _error(2, "Invalid request: missing field `method`", rid)
        method = req["method"]
        params = req.get("params")
        if method == "SUBSCRIBE" or method == "UNSUBSCRIBE":
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                return _error(
                    2, "Invalid request: invalid type: expected a sequence of streams", rid
                )
            if method == "SUBSCRIBE":
                new = [p for p in dict.fromkeys(params) if p not in conn.streams]
                if len(conn.streams) + len(new) > self.config.ws_max_streams:
                    return _error(
                        2,
                        f"Invalid request: too many streams (max {self.config.ws_max_streams})",
                        rid,
                    )
                self._subscribe(conn, new)
            else:
                self._unsubscribe(conn, [p for p in params if p in conn.streams])
            return _result(None, rid)
        if method == "LIST_SUBSCRIPTIONS":
            return _result(list(conn.streams), rid)
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            if not isinstance(params, list) or not params:
                return _error(2, "Invalid request: property name must be a string", rid)
            if not isinstance(params[0], str):
                return _error(2, "Invalid request: property name must be a string", rid)
            if params[0] != "combined":
                return _error(0, "Unknown property", rid)
            if method == "GET_PROPERTY":
                return _result(conn.combined, rid)
            if len(params) != 2 or not isinstance(params[1], bool):
                return _error(1, "Invalid value type: expected Boolean", rid)
            conn.combined = params[1]
            return _result(None, rid)
        return _error(
            2, f"Invalid request: unknown variant `{method}`, expected one of {_METHODS}", rid
        )

    def _subscribe(self, conn: WsConnection, names: Iterable[str]) -> None:
        for name in names:
            conn.streams[name] = None
            subs = self.subs.setdefault(name, set())
            first = not subs
            subs.add(conn)
            if first:
                self._activate(name)

    def _unsubscribe(self, conn: WsConnection, names: Iterable[str]) -> None:
        for name in names:
            conn.streams.pop(name, None)
            subs = self.subs.get(name)
            if subs is not None:
                subs.discard(conn)
                if not subs:
                    del self.subs[name]
                    self._deactivate(name)

    # ---- fan-out --------------------------------------------------------------------------
    def publish(self, stream: str, payload: str, ident: Any) -> None:
        """Queue one payload to every subscriber of ``stream``; it is logged as emitted when the
        first of these frames is written to its socket (``_writer``)."""
        subs = self.subs.get(stream)
        if not subs:
            return
        emission = Emission(stream, ident)
        f = self.faults
        if f.malformed_rate > 0 and self._draws["malformed"](f.malformed_rate):
            self.stats["malformed"] += 1
            payload = _malform(payload, self._draws["malformed_kind"].n % 2 == 0)
            self._draws["malformed_kind"].n += 1
        wrapped: str | None = None
        for conn in subs:
            if conn.closed:
                continue
            if conn.combined:
                if wrapped is None:
                    wrapped = f'{{"stream":{orjson.dumps(stream).decode()},"data":{payload}}}'
                conn.push(wrapped, emission)
            else:
                conn.push(payload, emission)

    def _log_emitted(self, emission: Emission) -> None:
        log_ = self.emitted.get(emission.stream)
        if log_ is None:
            log_ = self.emitted[emission.stream] = EmitLog(self.config.ws_emitted_log)
        log_.add(emission.ident)

    # ---- synthetic live market ------------------------------------------------------------
    def _parse(self, name: str) -> tuple[str, str] | None:
        sym, _, kind = name.partition("@")
        if kind not in KINDS or sym not in self.by_stream_symbol:
            return None
        return self.by_stream_symbol[sym], kind

    def _activate(self, name: str) -> None:
        if self.replay is not None:
            self.replay.on_subscribe(name)
            return
        parsed = self._parse(name)
        if parsed is None:
            return
        symbol, kind = parsed
        st = self._states.get(symbol)
        now = self.clock()
        if st is None:
            model = self.market[symbol]
            st = self._states[symbol] = SymbolState(
                model, stream_symbol(symbol), orjson.dumps(symbol).decode()
            )
        if kind == "trade" and st.trade_hour < 0:
            h = max(st.model.hour_of(now), 0)
            st.trade_hour = h
            st.trade_idx = st.model.hour(h).visible_trades(now)
            st.trade_next_ms = now
            heapq.heappush(self._trade_heap, (now, symbol))
        if kind in ("depth@100ms", "depth", "bookTicker") and st.depth_batch < 0:
            st.depth_batch = st.model.batch_of(now)
            st.prev_u = st.model.update_id(st.depth_batch)

    def _deactivate(self, name: str) -> None:
        parsed = self._parse(name)
        if parsed is None or self.replay is not None:
            return
        symbol, kind = parsed
        st = self._states.get(symbol)
        if st is None:
            return
        p = st.name
        if kind == "trade":
            st.trade_hour = -1  # the heap entry is dropped when popped
        if not any(f"{p}@{k}" in self.subs for k in ("depth@100ms", "depth", "bookTicker")):
            st.depth_batch, st.agg, st.top = -1, None, None
        if kind == "depth":
            st.agg = None
        if kind == "bookTicker":
            st.top = None
        if st.trade_hour < 0 and st.depth_batch < 0:
            del self._states[symbol]


def _valid_id(rid: Any) -> bool:
    if rid is None:
        return True
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return -(1 << 63) <= rid < (1 << 63)
    return isinstance(rid, str) and len(rid) <= 36 and rid.isalnum()


def _result(result: Any, rid: Any) -> str:
    return orjson.dumps({"result": result, "id": rid}).decode()


def _error(code: int, msg: str, rid: Any) -> str:
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": rid}).decode()


def _malform(payload: str, invalid_json: bool) -> str:
    """An invalid JSON text (cut in half) or a valid one whose price/id field is not a number."""
    if invalid_json:
        return payload[: max(1, len(payload) // 2)]
    for key in ('"p":"', '"b":"'):  # trade price, bookTicker bid price
        i = payload.find(key)
        if i >= 0:
            j = payload.find('"', i + len(key))
            return payload[: i + len(key)] + "NaN-bad" + payload[j:]
    i = payload.find('"U":')  # depthUpdate first update id
    if i >= 0:
        j = payload.find(",", i)
        return payload[: i + 4] + '"bad"' + payload[j:]
    return payload[: max(1, len(payload) // 2)]
