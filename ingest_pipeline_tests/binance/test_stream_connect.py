"""WebSocket connects that never answer (issue 14): each attempt is abandoned after
``connect_timeout_s``, a stop ends a connect in progress, the log names the failure, and
``ingest-pipeline stream`` exits promptly on SIGTERM while its connect hangs.

Two real black holes on loopback: a listener whose kernel completes the TCP handshake but that
never reads or answers (the upgrade request goes unanswered), and one whose accept queue is full
so the handshake itself never completes (SYNs are dropped)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from ingest_pipeline.binance.stream import AttemptLimiter, ShardConnection, StreamConfig
from ingest_pipeline.settings import InvalidEndpoint
from ingest_pipeline.standins.moto_server import EmbeddedAWS

# Servers over real sockets (see ingest_pipeline_tests/tiers.py).
pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
# Generous: the point is "about the timeout", not 30 s (aiohttp's socket default) or 300 s.
SLACK_S = 3.0


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """Accepts TCP connections (in the kernel's queue) and never answers them."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    yield f"ws://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()


@pytest.fixture
def handshake_black_hole() -> Iterator[str]:
    """A full accept queue (backlog 0, one connection parked): new SYNs are dropped, so a
    connect never completes the TCP handshake."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)
    probe = socket.socket()
    probe.settimeout(0.3)
    with pytest.raises(TimeoutError):  # the premise: a connect here hangs
        probe.connect(("127.0.0.1", port))
    probe.close()
    yield f"ws://127.0.0.1:{port}"
    filler.close()
    srv.close()


def _config(**overrides: float) -> StreamConfig:
    base = {"connect_timeout_s": 0.5, "backoff_base_s": 0.05, "backoff_max_s": 0.1}
    base.update(overrides)
    return StreamConfig(**base)  # type: ignore[arg-type]


async def _first_failure(url: str, cfg: StreamConfig) -> tuple[ShardConnection, float]:
    """Run one shard until its first attempt has failed; (shard, seconds it took)."""
    async with aiohttp.ClientSession() as session:
        shard = ShardConnection(
            0, url, ["btcusdt@trade"], lambda *_: False, session, AttemptLimiter(), cfg
        )
        started = time.monotonic()
        task = asyncio.create_task(shard.run())
        while shard.last_error is None and not task.done():
            await asyncio.sleep(0.02)
        took = time.monotonic() - started
        shard.stop()
        await asyncio.wait_for(task, SLACK_S)
        return shard, took


@pytest.mark.parametrize("hole", ["silent_listener", "handshake_black_hole"])
def test_a_connect_that_never_answers_is_abandoned_at_its_timeout(
    hole: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    url = request.getfixturevalue(hole)
    caplog.set_level(logging.WARNING, logger="ingest_pipeline.binance.stream")
    shard, took = asyncio.run(_first_failure(url, _config()))
    assert shard.connects == 0 and shard.attempts >= 1
    assert shard.last_error == "connect: no answer within 0.5 s"
    assert took < 0.5 + SLACK_S
    assert "connect failed (no answer within 0.5 s), attempt 1" in caplog.text


def test_a_refused_connect_is_logged_with_its_exception_and_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.WARNING, logger="ingest_pipeline.binance.stream")
    shard, _ = asyncio.run(_first_failure(f"ws://127.0.0.1:{port}", _config()))
    assert shard.last_error is not None
    assert shard.last_error.startswith("connect: ClientConnectorError: Cannot connect to host")
    assert "connect failed ()" not in caplog.text
    assert "connect failed (ClientConnectorError: Cannot connect to host" in caplog.text


@pytest.mark.parametrize("hole", ["silent_listener", "handshake_black_hole"])
def test_stop_ends_a_connect_in_progress(hole: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(hole)

    async def scenario() -> ShardConnection:
        async with aiohttp.ClientSession() as session:
            # A connect timeout far beyond the wait below: only the stop can end this attempt.
            shard = ShardConnection(
                0, url, ["btcusdt@trade"], lambda *_: False, session, AttemptLimiter(),
                _config(connect_timeout_s=120.0),
            )  # fmt: skip
            task = asyncio.create_task(shard.run())
            while shard.attempts == 0:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # the connect is under way
            shard.stop()
            await asyncio.wait_for(task, SLACK_S)
            return shard

    shard = asyncio.run(scenario())
    assert shard.attempts == 1 and shard.connects == 0 and shard.last_error is None


def test_stop_ends_a_wait_for_the_attempt_limiter() -> None:
    """The 300-per-5-minutes limiter may wait minutes; a stop must not."""

    async def scenario() -> float:
        async with aiohttp.ClientSession() as session:
            limiter = AttemptLimiter(max_attempts=1, window_s=600.0)
            await limiter.acquire()  # the window's only attempt is used up
            shard = ShardConnection(
                0, "ws://127.0.0.1:9", ["btcusdt@trade"], lambda *_: False, session, limiter,
                _config(),
            )  # fmt: skip
            task = asyncio.create_task(shard.run())
            await asyncio.sleep(0.3)
            assert shard.attempts == 0  # held by the limiter
            started = time.monotonic()
            shard.stop()
            await asyncio.wait_for(task, SLACK_S)
            return time.monotonic() - started

    assert asyncio.run(scenario()) < SLACK_S


def test_stream_command_exits_promptly_on_sigterm_during_a_hanging_connect(
    silent_listener: str, aws: EmbeddedAWS, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "BINANCE_WS_URL": silent_listener,
        "AWS_ENDPOINT_URL": aws.endpoint_url,
        "INGEST_ENV": "local",
    }
    proc = subprocess.Popen(
        [str(BIN / "ingest-pipeline"), "stream", "--symbols", "BTCUSDT",
         "--state-dir", str(tmp_path / "state"), "--progress", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    started = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "streaming 1 symbols" in line:
                started.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert started.wait(60), "".join(lines)[-3000:]
        time.sleep(1.0)  # the first connect is hanging on the listener now
        proc.send_signal(signal.SIGTERM)
        # Well under the 10 s connect timeout: the stop itself ends the connect.
        code = proc.wait(timeout=8)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    assert code == 0, "".join(lines)[-3000:]
    assert not any("Traceback" in line for line in lines), "".join(lines)[-3000:]


@pytest.mark.parametrize(
    "url", ["ws://exa mple.com", "http://127.0.0.1:9", "ws://[::1", "ws://:9", "ws://h:70000"]
)
def test_a_malformed_url_is_a_configuration_error_never_retried(url: str) -> None:
    with pytest.raises(InvalidEndpoint, match="URL"):
        ShardConnection(0, url, ["btcusdt@trade"], lambda *_: False, None, AttemptLimiter())  # type: ignore[arg-type]
