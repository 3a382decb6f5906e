"""The command line as users and scripts call it: real subprocesses, real sockets."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from ingest_pipeline.aws import aws_client
from ingest_pipeline.records import AGG_TRADES
from ingest_pipeline.settings import Settings
from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.timeutil import parse_hour

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


def _first_line(cmd: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    return proc, line


@pytest.mark.integration  # serves on a socket
def test_simulator_command_prints_its_url_and_serves() -> None:
    proc, url = _first_line([str(BIN / "ingest-pipeline"), "simulator", "--port", "0"])
    try:
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(f"{url}/api/v3/ping", timeout=5).json() == {}
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


@pytest.mark.integration  # serves on a socket
def test_local_aws_command_prints_a_provisioned_endpoint(local_settings: Settings) -> None:
    proc, url = _first_line([str(BIN / "ingest-pipeline"), "local-aws", "--port", "0"])
    try:
        assert url.startswith("http://127.0.0.1:")
        s3 = aws_client("s3", dataclasses.replace(local_settings, aws_endpoint_url=url))
        assert local_settings.bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


def test_dagster_cli_materializes_a_partition(aws: EmbeddedAWS, simulator_url: str, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "AWS_ENDPOINT_URL": aws.endpoint_url,
        "BINANCE_REST_URL": simulator_url,
        "INGEST_SYMBOLS": "BTCUSDT",
    }
    partition = "2024-08-10-05:00"
    run = subprocess.run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "ingest_pipeline.definitions",
            "--select",
            "key:bronze/*/agg_trades",
            "--partition",
            partition,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    settings = aws.settings
    store = BronzeStore(aws_client("s3", settings), settings.bucket, settings.bronze_prefix)
    records = store.read_hour("BTCUSDT", AGG_TRADES, parse_hour(partition))
    assert records and len({r["trade_id"] for r in records}) == len(records)
