"""Run the Binance simulator: in a background thread (tests, local stack) or in the foreground."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from ingest_pipeline.standins.simulator.archive import BinanceArchive
from ingest_pipeline.standins.simulator.config import SimulatorConfig
from ingest_pipeline.standins.simulator.market import Market
from ingest_pipeline.standins.simulator.replay import Replayer, load_captures, spec_of
from ingest_pipeline.standins.simulator.rest import BinanceRest
from ingest_pipeline.standins.simulator.ws import BinanceWs


class SimulatorServer:
    """The simulator's HTTP server on ``host:port`` (port 0 picks a free port)."""

    def __init__(
        self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config or SimulatorConfig()
        self.host = host
        self.port = port
        self.replay: Replayer | None = None
        if self.config.replay_path is not None:
            cfg = self.config
            captures = load_captures(cfg.replay_path)
            self.replay = Replayer(
                captures,
                cfg.replay_speed,
                shift=cfg.replay_shift,
                from_ms=cfg.replay_from_ms,
                until_ms=cfg.replay_until_ms,
                clock=cfg.clock,
            )
            specs = [spec_of(c) for c in captures.values()]
            self.market = Market(specs, self.config.genesis_ms)
        else:
            self.market = Market(self.config.all_symbols(), self.config.genesis_ms)
        self.rest = BinanceRest(self.config, self.market, self.config.clock)
        self.ws = BinanceWs(self.config, self.market, self.config.clock)
        self.archive = BinanceArchive(self.market, self.config.clock, self.config.archive)
        if self.replay is not None:
            self.replay.hub = self.ws
            self.ws.replay = self.replay
            self.rest.replay = self.replay
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None

    def app(self) -> web.Application:
        """REST and WebSocket endpoints on one aiohttp app, as Binance's hosts serve them."""
        app = self.rest.app()
        self.ws.install(app)
        self.archive.install(app)
        return app

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _serve(self, ready: Callable[[], None]) -> None:
        self._stopped = asyncio.Event()
        self._runner = web.AppRunner(
            self.app(),
            access_log=None,
            shutdown_timeout=2.0,
            max_line_size=65_536,  # a 1024-stream combined URL is ~25 kB
            max_field_size=65_536,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only through the server
        if self.port == 0 and server is not None:
            self.port = server.sockets[0].getsockname()[1]
        ready()
        try:
            await self._stopped.wait()
        finally:
            await self._runner.cleanup()

    def start(self) -> SimulatorServer:
        """Serve from a background thread; returns once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._serve(started.set))
            except BaseException as exc:  # surface bind errors in the caller's thread
                failure.append(exc)
                started.set()
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="binance-simulator", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None or self._stopped is None:
            return
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=10)
        self._thread = None

    def run_forever(self) -> None:
        """Serve in the foreground until SIGINT/SIGTERM (the CLI entry point)."""

        async def main() -> None:
            loop = asyncio.get_running_loop()

            def ready() -> None:
                print(f"Binance simulator listening on {self.url}", flush=True)
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, self._stopped.set)  # type: ignore[union-attr]

            await self._serve(ready)

        asyncio.run(main())

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
