"""Session fixtures: the embedded moto server and the Binance simulator, on real sockets."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.settings import Settings, load_settings
from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline_tests.tiers import tier_of

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


# `make test` runs the suite on pytest-xdist workers (--dist loadgroup: a group's tests run on
# one worker, one after another). The daemon, postgres and browser tests (each a `dagster dev`
# and its runs, CPU-bound on 2 cores) are split into two lanes, two groups, so that at most two
# run at once: four at once slowed them all past their timeouts. Every other module is a group
# of its own, so that its module fixtures are set up once. Groups are queued longest first
# (longest_tests.txt; a test not listed there counts as half a second), so that none starts
# late and finishes alone. Only where and when a test runs changes, never what it does.
LONGEST = Path(__file__).with_name("longest_tests.txt")
HEAVY_LANES = 2


def _longest_s() -> dict[str, float]:
    """Seconds by test id, setup and call added up, from ``pytest --durations`` lines
    (``254.21s call     ingest_pipeline_tests/...::test_x``)."""
    seconds: dict[str, float] = {}
    for fields in (line.split() for line in LONGEST.read_text().splitlines()):
        if fields and fields[0][0].isdigit():
            nodeid = fields[-1].split("@")[0]  # a grouped run prints "id@group"
            seconds[nodeid] = seconds.get(nodeid, 0.0) + float(fields[0].rstrip("s"))
    return seconds


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    known = _longest_s()

    def seconds(item: pytest.Item) -> float:
        return known.get(item.nodeid, 0.5)

    group: dict[str, str] = {}
    lanes = [0.0] * HEAVY_LANES
    for item in sorted(items, key=seconds, reverse=True):
        if tier_of(item) in ("daemon", "postgres", "browser"):
            lane = lanes.index(min(lanes))
            lanes[lane] += seconds(item)
            group[item.nodeid] = f"heavy-lane-{lane}"
        else:
            group[item.nodeid] = item.nodeid.partition("::")[0].removesuffix(".py")
            group[item.nodeid] = group[item.nodeid].removeprefix("ingest_pipeline_tests/")
    cost: dict[str, float] = {}
    for item in items:
        cost[group[item.nodeid]] = cost.get(group[item.nodeid], 0.0) + seconds(item)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group[item.nodeid]))
    # Stable: a group's tests keep their collection order.
    items.sort(key=lambda i: -cost[group[i.nodeid]])


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
