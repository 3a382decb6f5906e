"""Session fixtures: the embedded moto server and the Binance simulator, on real sockets."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator

import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.settings import Settings, load_settings
from ingest_pipeline.standins.moto_server import EmbeddedAWS

pytest_plugins = ("ingest_pipeline_tests.tiers",)

# Dagster's telemetry has no timeout; offline it stalls shutdown.
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
# The tests' AWS is the session's moto server: a developer's per-service endpoint variables
# would take precedence over it (ingest_pipeline.aws.resolve_endpoint).
for _name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_KINESIS"):
    os.environ.pop(_name, None)

# Tests work on the hours of the real captures (2024-08-08/09) and around them; the local
# config starts its partitions recently. Set here so that subprocesses (`dagster dev`, the CLI)
# and in-process definitions see the same partitions.
TEST_PARTITIONS_START = "2024-08-01"
os.environ.setdefault("INGEST_PARTITIONS_START", TEST_PARTITIONS_START)


@pytest.fixture(scope="session")
def local_settings() -> Settings:
    """The committed local config, untouched by the caller's environment, with the tests'
    partition start."""
    return load_settings("local", environ={"INGEST_PARTITIONS_START": TEST_PARTITIONS_START})


@pytest.fixture(scope="session")
def aws(local_settings: Settings) -> Iterator[EmbeddedAWS]:
    with EmbeddedAWS(local_settings) as server:
        yield server


@pytest.fixture(scope="session")
def simulator_url() -> Iterator[str]:
    from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer

    with SimulatorServer(SimulatorConfig()) as sim:
        yield sim.url


@pytest.fixture
def aws_settings(aws: EmbeddedAWS) -> Settings:
    """Settings aimed at the session's moto server, with a fresh bucket of the test's own."""
    s = dataclasses.replace(aws.settings, bucket=f"test-{uuid.uuid4().hex[:12]}")
    aws_client("s3", s).create_bucket(Bucket=s.bucket)
    return s


@pytest.fixture
def settings(aws_settings: Settings, simulator_url: str) -> Settings:
    """``aws_settings`` plus the session's Binance simulator."""
    return dataclasses.replace(aws_settings, binance_rest_url=simulator_url)
