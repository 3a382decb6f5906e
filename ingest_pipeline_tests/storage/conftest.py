"""Kinesis fixtures of the storage tests: the session's moto server, a fresh stream per call,
the fault proxy in front of moto."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.standins.faultproxy import FaultProxy
from ingest_pipeline.standins.moto_server import EmbeddedAWS


@pytest.fixture
def kinesis(aws: EmbeddedAWS) -> Any:
    return aws_client("kinesis", aws.settings)


@pytest.fixture
def new_stream(kinesis: Any) -> Iterator[Callable[[], str]]:
    created: list[str] = []

    def make(shards: int = 2) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        kinesis.create_stream(StreamName=name, ShardCount=shards)
        kinesis.get_waiter("stream_exists").wait(
            StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100}
        )
        created.append(name)
        return name

    yield make
    for name in created:
        kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)


@pytest.fixture
def proxy(aws: EmbeddedAWS) -> Iterator[FaultProxy]:
    with FaultProxy(aws.endpoint_url, seed=7) as p:
        yield p
