"""Streaming fixtures: a fresh simulator per test, fresh Kinesis streams per test on the session
moto server, and helpers to run a streamer in a thread and read the streams back."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from ingest_pipeline.aws import aws_client
from ingest_pipeline.binance.stream import StreamConfig
from ingest_pipeline.settings import Settings
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline.storage.kinesis import ProducerConfig
from ingest_pipeline.streaming import Streamer, StreamerConfig

FAST_STREAM = StreamConfig(
    max_age_s=3600.0,
    overlap_s=0.5,
    probe_after_s=1.0,
    silence_timeout_s=3.0,
    data_timeout_s=2.0,
    backoff_base_s=0.05,
    backoff_max_s=0.5,
    drain_timeout_s=2.0,
)
FAST_PRODUCER = ProducerConfig(
    linger_s=0.02, backoff_base_s=0.02, backoff_max_s=0.5, breaker_cooldown_s=1.0, seed=1
)


@pytest.fixture
def sim_factory() -> Iterator[Callable[..., SimulatorServer]]:
    servers: list[SimulatorServer] = []

    def make(**kwargs: Any) -> SimulatorServer:
        server = SimulatorServer(SimulatorConfig(**kwargs)).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def stream_settings(aws_settings: Settings) -> Settings:
    """``aws_settings`` with three Kinesis streams of this test's own (one shard each)."""
    tag = uuid.uuid4().hex[:8]
    s = dataclasses.replace(
        aws_settings,
        kinesis_trade_stream=f"trade-{tag}",
        kinesis_bba_stream=f"bba-{tag}",
        kinesis_depth_stream=f"depth-{tag}",
        symbols=("BTCUSDT", "ETHUSDT"),
    )
    kinesis = aws_client("kinesis", s)
    for name in s.kinesis_streams:
        kinesis.create_stream(StreamName=name, ShardCount=1)
    waiter = kinesis.get_waiter("stream_exists")
    for name in s.kinesis_streams:
        waiter.wait(StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    return s


def with_sim(settings: Settings, sim: SimulatorServer) -> Settings:
    return dataclasses.replace(
        settings, binance_rest_url=sim.url, binance_ws_url=sim.url.replace("http://", "ws://")
    )


def make_config(tmp_path: Path, **overrides: Any) -> StreamerConfig:
    base: dict[str, Any] = {
        "deadletter_dir": str(tmp_path / "deadletter"),
        "spill_dir": str(tmp_path / "spill"),
        "stream": FAST_STREAM,
        "producer": FAST_PRODUCER,
        "shutdown_flush_timeout_s": 30.0,
    }
    base.update(overrides)
    return StreamerConfig(**base)


class Running:
    """A streamer running ``run_until`` in a background thread."""

    def __init__(self, streamer: Streamer) -> None:
        self.streamer = streamer
        self.stop_event = threading.Event()
        self.error: list[BaseException] = []
        self.final: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.final = self.streamer.run_until(self.stop_event)
        except BaseException as exc:  # surfaced by stop()
            self.error.append(exc)

    def wait_for(self, cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or cond}")
            if self.error:
                raise self.error[0]
            time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        self.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "streamer did not stop"
        if self.error:
            raise self.error[0]
        assert self.final is not None
        return self.final


def sim_post(sim: SimulatorServer, path: str, body: dict[str, Any] | None = None) -> Any:
    resp = requests.post(f"{sim.url}{path}", json=body or {}, timeout=10)
    resp.raise_for_status()
    return resp.json()


def sim_get(sim: SimulatorServer, path: str, **params: Any) -> Any:
    resp = requests.get(f"{sim.url}{path}", params=params, timeout=10)
    resp.raise_for_status()
    return resp.json()


def emitted_ids(sim: SimulatorServer, stream: str) -> list[Any]:
    body = sim_get(sim, "/_sim/ws/emitted", stream=stream)
    assert not body["truncated"], "emitted log truncated: raise ws_emitted_log"
    return body["ids"]


def read_stream(settings: Settings, stream: str) -> list[dict[str, Any]]:
    """Every record of a (one-shard) stream, in order, parsed."""
    kinesis = aws_client("kinesis", settings)
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    out: list[dict[str, Any]] = []
    for shard in shards:
        it = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while it:
            resp = kinesis.get_records(ShardIterator=it, Limit=10_000)
            out.extend(orjson.loads(r["Data"]) for r in resp["Records"])
            if not resp["Records"] and resp.get("MillisBehindLatest", 0) == 0:
                break
            it = resp.get("NextShardIterator")
    return out
