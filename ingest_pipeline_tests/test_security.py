"""Secrets never reach a log line; symbols are checked before any URL or S3 key (SPEC §5)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingest_pipeline.binance.rest import BinanceRestClient
from ingest_pipeline.logsafety import RedactSecrets
from ingest_pipeline.storage.bronze import hour_path
from ingest_pipeline.symbols import UnsafeSymbol

FAKE_KEY_ID = "AKIA" + "FAKEFAKEFAKEFAKE"
FAKE_SECRET = "fake/secret+value0123456789abcdefghijklmn"
BIN = Path(sys.executable).parent


def test_redaction_masks_secrets_in_formatted_messages() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "auth %s", (FAKE_SECRET,), None)
    RedactSecrets([FAKE_SECRET, "short"]).filter(record)
    assert record.getMessage() == "auth ***"


@pytest.mark.slow
def test_no_secret_in_any_log_line_of_a_debug_run() -> None:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "INGEST_LOG_LEVEL": "DEBUG",
    }
    run = subprocess.run(
        [str(BIN / "ingest-pipeline"), "demo", "--symbols", "ETHUSDT"],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "aggTrades, ids" in output  # the run did real work
    assert FAKE_SECRET not in output and FAKE_KEY_ID not in output


@pytest.mark.parametrize(
    "symbol", ["../BTCUSDT", "BTC/USDT", "BTCUSDT\r\nX-Injected: 1", "B" * 200, "BTC USDT", "."]
)
def test_unsafe_symbols_reach_neither_a_url_nor_a_key(symbol: str) -> None:
    client = BinanceRestClient("http://127.0.0.1:9")  # nothing listens: a request would fail
    with pytest.raises(UnsafeSymbol):
        client.agg_trades_page(symbol, limit=1)
    assert client.stats.requests == 0
    with pytest.raises(UnsafeSymbol):
        hour_path(symbol, "agg_trades", 0)


def test_listed_non_ascii_symbol_is_kept_as_utf8_in_keys() -> None:
    assert hour_path("币安人生USDT", "agg_trades", 0).startswith("币安人生USDT/agg_trades/")


@pytest.mark.integration  # serves on a socket
def test_health_and_metrics_listen_on_loopback_only_by_default() -> None:
    import asyncio
    import socket

    from ingest_pipeline.settings import load_settings
    from ingest_pipeline.streaming import Streamer, StreamerConfig
    from ingest_pipeline.streaming.health import HealthServer

    assert StreamerConfig().health_host == "127.0.0.1"
    streamer = Streamer(load_settings("local", environ={}), StreamerConfig(symbols=("BTCUSDT",)))

    async def bound_addresses() -> list[tuple[str, int]]:
        server = HealthServer(streamer)
        await server.start()
        try:
            sockets = [s for site in server._runner.sites for s in site._server.sockets]
            return [s.getsockname()[:2] for s in sockets if s.family == socket.AF_INET]
        finally:
            await server.stop()

    addresses = asyncio.run(bound_addresses())
    assert addresses and all(host == "127.0.0.1" for host, _ in addresses)


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://localhost:4566", True),
        ("http://LOCALHOST:4566", True),
        ("http://127.0.0.1:4566", True),
        ("http://127.1.2.3", True),
        ("http://[::1]:9000", True),
        ("http://localhost.evil.com", False),
        ("http://localhost.evil.com:4566/", False),
        ("http://127.0.0.1.nip.io", False),
        ("http://localhost@evil.com", False),
        ("http://evil.com/localhost", False),
        ("http://evil.com?h=127.0.0.1", False),
        ("http://[::1", False),
        ("", False),
        (None, False),
    ],
)
def test_loopback_means_this_machine_only(url: str | None, loopback: bool) -> None:
    """Placeholder credentials go only to a loopback emulator: a host that merely starts with
    ``localhost`` or ``127.`` is remote."""
    from ingest_pipeline.aws import is_loopback

    assert is_loopback(url) is loopback


@pytest.mark.parametrize(
    ("endpoint", "placeholders"),
    [("http://localhost:4566", True), ("http://localhost.evil.com", False)],
)
def test_placeholder_credentials_reach_loopback_only(
    endpoint: str, placeholders: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    from ingest_pipeline.aws import EMULATOR_CREDENTIALS, aws_client
    from ingest_pipeline.defs.resources import s3_resource
    from ingest_pipeline.settings import load_settings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    # boto3's default session caches the credentials it resolved first (another test's).
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    settings = load_settings("local", environ={"AWS_ENDPOINT_URL": endpoint})
    expected = EMULATOR_CREDENTIALS["aws_access_key_id"] if placeholders else FAKE_KEY_ID
    for client in (aws_client("s3", settings), s3_resource(settings).get_client()):
        assert client._request_signer._credentials.access_key == expected
