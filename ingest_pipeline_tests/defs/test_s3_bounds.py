"""A stalled S3 fails a partition within a stated bound (issue 14: 60 s x 6 attempts held a run
for six minutes). The bound is ``BoundedS3Resource.call_bound_s()``: attempts x (connect +
read timeout) + botocore's longest backoff; 87 s with the defaults, 5 s with the small
timeouts these tests use."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import botocore.exceptions
import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from ingest_pipeline.aws import EMULATOR_CREDENTIALS, aws_client, call_bound_s
from ingest_pipeline.defs.bronze import build_agg_trades_asset
from ingest_pipeline.defs.resources import BinanceRestResource, BoundedS3Resource, BronzeResource
from ingest_pipeline.records import AGG_TRADES
from ingest_pipeline.settings import Settings
from ingest_pipeline.standins.faultproxy import FaultProxy
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.timeutil import parse_hour

# Servers over real sockets (see ingest_pipeline_tests/tiers.py).
pytestmark = pytest.mark.integration

PARTITION = "2024-08-09-03:00"
SMALL = {"connect_timeout_s": 1.0, "read_timeout_s": 1.0, "max_attempts": 2}
SLACK_S = 3.0
S3_CALLS: list[float] = []  # wall-clock start of every S3 call made through ClockedS3


class ClockedS3(BoundedS3Resource):
    """The resource under test, noting when each S3 call starts."""

    def get_client(self) -> object:
        client = super().get_client()
        client.meta.events.register("before-call.s3", lambda **_: S3_CALLS.append(time.time()))
        return client


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """Accepts TCP connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()


@pytest.fixture
def handshake_black_hole() -> Iterator[str]:
    """A full accept queue: the TCP handshake never completes."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)
    yield f"http://127.0.0.1:{port}"
    filler.close()
    srv.close()


def test_the_s3_resource_bounds_every_call_where_dagster_aws_does_not() -> None:
    ours = BoundedS3Resource(region_name="us-east-1").get_client().meta.config
    assert (ours.connect_timeout, ours.read_timeout) == (5.0, 15.0)
    assert ours.retries == {"total_max_attempts": 4, "mode": "standard"}
    assert BoundedS3Resource(region_name="us-east-1").call_bound_s() == call_bound_s() == 87.0
    # The root cause: dagster-aws's client keeps botocore's 60 s timeouts, and its
    # max_attempts=5 counts retries (six attempts).
    theirs = S3Resource(region_name="us-east-1", max_attempts=5).get_client().meta.config
    assert (theirs.connect_timeout, theirs.read_timeout) == (60, 60)
    assert theirs.retries == {"total_max_attempts": 6, "mode": "standard"}


@pytest.mark.parametrize("hole", ["silent_endpoint", "handshake_black_hole"])
def test_a_call_to_a_black_hole_fails_within_the_bound(
    hole: str, request: pytest.FixtureRequest
) -> None:
    endpoint = request.getfixturevalue(hole)
    resource = BoundedS3Resource(
        region_name="us-east-1", endpoint_url=endpoint, **SMALL, **EMULATOR_CREDENTIALS
    )
    bound = resource.call_bound_s()
    assert bound == 5.0
    started = time.monotonic()
    with pytest.raises((botocore.exceptions.ReadTimeoutError,
                        botocore.exceptions.ConnectTimeoutError)) as failed:  # fmt: skip
        resource.get_client().head_object(Bucket="b", Key="k")
    assert time.monotonic() - started < bound + SLACK_S
    assert "timeout on endpoint URL" in str(failed.value)


def test_a_stalled_s3_fails_the_partition_within_the_bound_and_writes_nothing(
    settings: Settings, simulator_url: str
) -> None:
    """Real S3 (moto) behind a proxy that stops answering: the step fails with the endpoint
    timeout in its message within the bound of its first S3 call, and the bucket holds no
    object (the proxy forwards before it stalls, so a PUT would have landed)."""
    asset = build_agg_trades_asset("BTCUSDT", settings)
    with FaultProxy(settings.aws_endpoint_url or "") as proxy:
        proxy.stall_seconds = 60.0  # every answer, after the upstream call
        s3 = ClockedS3(
            region_name=settings.region, endpoint_url=proxy.url, **SMALL, **EMULATOR_CREDENTIALS
        )
        S3_CALLS.clear()
        resources = {
            "binance": BinanceRestResource(base_url=simulator_url),
            "bronze": BronzeResource(
                s3=s3,
                bucket=settings.bucket,
                bronze_prefix=settings.bronze_prefix,
                deadletter_prefix=settings.deadletter_prefix,
            ),
        }
        with dg.DagsterInstance.ephemeral() as instance:
            result = dg.materialize(
                [asset],
                resources=resources,
                partition_key=PARTITION,
                instance=instance,
                raise_on_error=False,
            )
            failed_at = next(
                entry.timestamp
                for entry in instance.all_logs(result.run_id)
                if entry.dagster_event and entry.dagster_event.event_type_value == "STEP_FAILURE"
            )
        stalls = proxy.counters["stalls"]
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data)
    assert "Read timeout on endpoint URL" in message, message[:2000]
    # The first S3 call (the HEAD of the existing object) used both attempts, then the step
    # failed: nothing after it ran.
    assert stalls == SMALL["max_attempts"] and len(S3_CALLS) == 1
    # From that call's start to the step's failure: within the bound.
    assert failed_at - S3_CALLS[0] < s3.call_bound_s() + SLACK_S
    store = BronzeStore(aws_client("s3", settings), settings.bucket, settings.bronze_prefix)
    assert store.head("BTCUSDT", AGG_TRADES, parse_hour(PARTITION)) is None
    assert aws_client("s3", settings).list_objects_v2(Bucket=settings.bucket)["KeyCount"] == 0
