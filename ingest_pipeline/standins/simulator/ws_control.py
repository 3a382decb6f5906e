"""The WebSocket server's ``/_sim/`` control endpoints (``ws.BinanceWs`` mixes this in): faults,
drops, stalls, ``serverShutdown``, the emitted log, replay and stats."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from aiohttp import web

from ingest_pipeline.standins.simulator.ws_conn import (
    EmitLog,
    WsConnection,
    WsFaultSettings,
    server_shutdown_event,
)


class WsControl:
    """``/_sim/ws/...`` of ``BinanceWs``: what tests switch and read."""

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.faults))

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json() if request.can_read_body else {}
            self.faults = WsFaultSettings(**{**asdict(self.faults), **changes})
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self._draws = self._new_draws()
        return web.json_response(asdict(self.faults))

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        data = await request.json()
        return data if isinstance(data, dict) else {}

    def _targets(self, body: dict[str, Any]) -> list[WsConnection]:
        ids = body.get("ids")
        conns = [c for c in self.conns.values() if not c.closed]
        return [c for c in conns if ids is None or c.id in ids]

    async def _post_drop(self, request: web.Request) -> web.Response:
        """Close connections abruptly now (all, or ``{"ids": [...]}``)."""
        targets = self._targets(await self._body(request))
        for conn in targets:
            self.stats["dropped_fault"] += 1
            conn.abort()
        return web.json_response({"dropped": [c.id for c in targets]})

    async def _post_stall(self, request: web.Request) -> web.Response:
        """Stop sending (data and pings) for ``{"seconds": N}``, keeping the sockets open."""
        body = await self._body(request)
        seconds = float(body.get("seconds", 5.0))
        until = time.monotonic() + seconds
        targets = self._targets(body)
        if body.get("ids") is None:
            self._stall_all_until = until
        for conn in targets:
            conn.stall_until = until
        return web.json_response({"stalled": [c.id for c in targets], "seconds": seconds})

    async def _post_shutdown(self, request: web.Request) -> web.Response:
        """Send ``serverShutdown`` then close (all, or ``{"ids": [...]}``)."""
        targets = self._targets(await self._body(request))
        event = server_shutdown_event(self.clock())
        for conn in targets:
            self.stats["server_shutdown"] += 1
            await self._send_now(conn, event)
            await self._close(conn, 1000, "Server shutdown")
        return web.json_response({"shutdown": [c.id for c in targets]})

    async def _post_reset(self, request: web.Request) -> web.Response:
        """Forget the emitted log, statistics, connection attempts and faults."""
        self.emitted.clear()
        for k in self.stats:
            self.stats[k] = 0
        self._attempts.clear()
        self.faults = WsFaultSettings(seed=self.config.seed)
        self._draws = self._new_draws()
        self._stall_all_until = 0.0
        return web.json_response({})

    async def _get_emitted(self, request: web.Request) -> web.Response:
        stream = request.query.get("stream")
        if stream is None:
            return web.json_response(
                {
                    s: {"count": e.count, "last_id": e.ids[-1] if e.ids else None}
                    for s, e in sorted(self.emitted.items())
                }
            )
        e = self.emitted.get(stream) or EmitLog(self.config.ws_emitted_log)
        return web.json_response(
            {
                "stream": stream,
                "count": e.count,
                "last_id": e.ids[-1] if e.ids else None,
                "ids": list(e.ids),
                "truncated": e.count > len(e.ids),
            }
        )

    async def _post_replay_start(self, request: web.Request) -> web.Response:
        """(Re)start the replay from the start of its slice, with a new offset."""
        if self.replay is None:
            return web.json_response({"error": "not in replay mode"}, status=400)
        self.replay.start()
        return web.json_response(
            {"started": True, "total": self.replay.total, "offset_ms": self.replay.offset_ms}
        )

    async def _get_replay_status(self, request: web.Request) -> web.Response:
        if self.replay is None:
            return web.json_response({"replay": False})
        return web.json_response(self.replay.status())

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                **self.stats,
                "open": len(self.conns),
                "connection_ids": sorted(self.conns),
                "streams": len(self.subs),
                "active_symbols": len(self._states),
            }
        )
