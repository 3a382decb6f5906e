"""``/health`` (JSON) and ``/metrics`` (Prometheus text) of one streamer, served by aiohttp on
the streamer's event loop; bound to 127.0.0.1 unless configured (SPEC §5).

``/health`` answers 200 for ``ok`` and ``degraded``, 503 for ``down`` (so a plain HTTP probe
can restart a dead streamer while a degraded one keeps running).

The payload is JSON by construction: ``health_json`` encodes any mapping the streamer builds,
whatever its keys (an enum, an int) or values (an enum, a path), so a new field can never turn
the probe into a 500."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HealthServerError(OSError):
    """The server cannot listen on its address (in use, not permitted, not resolvable)."""


def health_json(payload: Mapping[str, Any]) -> bytes:
    """UTF-8 JSON of a health payload: non-string keys become strings (an enum key its value),
    enum values their value, any other object that JSON has no type for its ``str()``."""
    return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS, default=str)


class _Metrics(Protocol):
    registry: CollectorRegistry


class Observed(Protocol):
    """What the server asks of the streamer it serves (``streamer.Streamer``)."""

    @property
    def metrics(self) -> _Metrics: ...
    def health(self) -> Mapping[str, Any]: ...
    def refresh_metrics(self) -> None: ...


class HealthServer:
    def __init__(self, streamer: Observed, host: str = "127.0.0.1", port: int = 0) -> None:
        self.streamer = streamer
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise HealthServerError(
                f"cannot serve /health on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        self.port = self._runner.addresses[0][1]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        body = self.streamer.health()
        return web.Response(
            body=health_json(body),
            status=503 if body["status"] == "down" else 200,
            content_type="application/json",
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        self.streamer.refresh_metrics()
        return web.Response(
            body=generate_latest(self.streamer.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )
