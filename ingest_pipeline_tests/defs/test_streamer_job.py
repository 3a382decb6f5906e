"""The supervised streamer on a real Dagster deployment (``dagster dev``: webserver + daemon),
the real simulator and a moto server of its own.

One scenario, in order: the sensor starts the streamer and records reach Kinesis; ``kill -9``
of the run's process is detected by its stale heartbeat and replaced within two sensor
intervals; the replacement is terminated from Dagster (the UI's mutation) and flushes
everything; the sensor starts the next one; the operator stops the sensor and terminates the
last run. Throughout, never two streamer runs (nor processes) are alive at once. Finally the
hour(s) are archived from Kinesis: every trade id the simulator emitted since the kill is in
bronze exactly once, across the graceful restart.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests

from ingest_pipeline.aws import aws_client
from ingest_pipeline.defs.streamer import ALIVE, STREAMER_JOB, SUPERVISOR, read_heartbeats
from ingest_pipeline.localstack import EmbeddedAWS
from ingest_pipeline.records import TRADE
from ingest_pipeline.settings import Settings
from ingest_pipeline.simulator.server import SimulatorConfig, SimulatorServer
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.storage.kinesis_reader import KinesisReader, archive_hour
from ingest_pipeline.timeutil import HOUR_MS, floor_hour, now_ms
from ingest_pipeline_tests.dagster_harness import ROOT, DagsterDev

INTERVAL_S = 5
HEARTBEAT_S = 1
STALE_S = 3
SYMBOL = "BTCUSDT"

TERMINATE = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
  }
}
"""
SENSOR_STATE = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { id status } }
  }
}
"""
STOP_SENSOR = """
mutation Stop($id: String!) {
  stopSensor(id: $id) { __typename ... on PythonError { message } }
}
"""
REPOS = (
    "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
)


def wait(cond: Callable[[], Any], timeout: float, what: str, dagster: DagsterDev) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{dagster.log_tail()}")


class Watcher:
    """Samples the instance while the scenario runs: how many streamer runs are alive (by
    status) and how many heartbeat pids are live processes, at every moment."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.max_alive_runs = 0
        self.max_live_pids = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            runs = self.instance.get_runs(dg.RunsFilter(job_name=STREAMER_JOB))
            alive = [r for r in runs if r.status in ALIVE]
            beats = read_heartbeats(self.instance, [r.run_id for r in runs])
            pids = {b["pid"] for b in beats.values()}
            live = sum(1 for p in pids if _pid_alive(p))
            self.max_alive_runs = max(self.max_alive_runs, len(alive))
            self.max_live_pids = max(self.max_live_pids, live)
            self.samples += 1
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its parent) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def own_aws(local_settings: Settings) -> Any:
    with EmbeddedAWS(local_settings) as server:
        yield server


def test_supervised_streamer_survives_kill_and_flushes_on_termination(
    own_aws: EmbeddedAWS, tmp_path: Path
) -> None:
    started_ms = now_ms()
    with SimulatorServer(SimulatorConfig()) as sim:
        env = {
            "AWS_ENDPOINT_URL": own_aws.endpoint_url,
            "BINANCE_REST_URL": sim.url,
            "BINANCE_WS_URL": sim.url.replace("http://", "ws://"),
            "INGEST_SYMBOLS": SYMBOL,
            "INGEST_STREAMER_SUPERVISOR_STATUS": "RUNNING",
            "INGEST_STREAMER_SUPERVISOR_INTERVAL_SECONDS": str(INTERVAL_S),
            "INGEST_STREAMER_HEARTBEAT_SECONDS": str(HEARTBEAT_S),
            "INGEST_STREAMER_STALE_AFTER_SECONDS": str(STALE_S),
            "INGEST_STREAMER_STATE_DIR": str(tmp_path / "streamer"),
        }
        instance_yaml = (ROOT / "dagster.yaml").read_text()
        with DagsterDev(tmp_path / "home", env, instance_yaml) as dagster:
            instance = dg.DagsterInstance.from_config(str(tmp_path / "home"))
            watcher = Watcher(instance)
            try:
                emitted_after_kill = _scenario(dagster, instance, sim)
            finally:
                watcher.stop()
            assert watcher.samples > 20
            assert watcher.max_alive_runs == 1, "two streamer runs were alive at once"
            assert watcher.max_live_pids == 1, "two streamer processes were alive at once"
            runs = sorted(
                instance.get_run_records(dg.RunsFilter(job_name=STREAMER_JOB)),
                key=lambda r: r.create_timestamp,
            )
            for before, after in zip(runs, runs[1:], strict=False):
                assert before.end_time is not None
                assert after.create_timestamp.timestamp() >= before.end_time
    _check_archive(own_aws.settings, started_ms, emitted_after_kill)


def _streaming_run(instance: dg.DagsterInstance, exclude: set[str]) -> Callable[[], Any]:
    """A started streamer run (not in ``exclude``) whose heartbeat shows trades sent."""

    def find() -> Any:
        runs = instance.get_runs(
            dg.RunsFilter(job_name=STREAMER_JOB, statuses=[dg.DagsterRunStatus.STARTED])
        )
        runs = [r for r in runs if r.run_id not in exclude]
        if not runs:
            return None
        beat = read_heartbeats(instance, [runs[0].run_id]).get(runs[0].run_id)
        if beat and beat["records_out"]["trade"] > 0:
            return runs[0], beat
        return None

    return find


def _emitted(sim: SimulatorServer) -> dict[str, Any]:
    resp = requests.get(
        f"{sim.url}/_sim/ws/emitted", params={"stream": f"{SYMBOL.lower()}@trade"}, timeout=10
    )
    resp.raise_for_status()
    body = resp.json()
    assert not body["truncated"]
    return body


def _terminate(dagster: DagsterDev, instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    result = dagster.graphql(TERMINATE, {"runId": run_id})["terminateRun"]
    assert result["__typename"] == "TerminateRunSuccess", result
    wait(
        lambda: instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED,
        60, f"run {run_id} canceled", dagster,
    )  # fmt: skip
    beat = read_heartbeats(instance, [run_id])[run_id]
    assert beat["final"] and beat["interrupted"] and beat["flushed_clean"] is True, beat
    assert beat["kinesis_buffer"] == 0 and beat["acknowledged"] == sum(
        beat["records_out"].values()
    ), beat
    return beat


def _scenario(dagster: DagsterDev, instance: dg.DagsterInstance, sim: SimulatorServer) -> list[int]:
    """Runs the scenario; returns the trade ids emitted after the kill."""
    # 1. The sensor (RUNNING by default here) starts the streamer; trades reach Kinesis.
    first, beat = wait(_streaming_run(instance, set()), 90, "a streaming run", dagster)
    assert first.tags["dagster/max_runtime"] == "0"
    assert first.tags["dagster/sensor_name"] == SUPERVISOR

    # 2. kill -9 of the run's process: the heartbeat goes stale, the sensor marks the run
    # failed and launches a replacement.
    os.kill(beat["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    time.sleep(1.0)
    # No subscriber from here until the replacement connects: the simulator emits nothing.
    after_kill = _emitted(sim)["last_id"]
    second, _ = wait(
        _streaming_run(instance, {first.run_id}), 2 * INTERVAL_S + STALE_S + 20,
        "a replacement", dagster,
    )  # fmt: skip
    record = instance.get_run_record_by_id(second.run_id)
    assert instance.get_run_by_id(first.run_id).status == dg.DagsterRunStatus.FAILURE
    # The replacement was launched within two sensor intervals of the heartbeat going stale.
    launched_after = record.create_timestamp.timestamp() - (time.time() - time.monotonic()
                                                            + killed_at)  # fmt: skip
    assert launched_after <= STALE_S + 2 * INTERVAL_S, launched_after
    print(f"replacement created {launched_after:.1f} s after the kill, started "
          f"{record.start_time - record.create_timestamp.timestamp():.1f} s later")  # fmt: skip

    # 3. Terminated from Dagster: the op flushes everything before the run ends.
    time.sleep(1.5)
    _terminate(dagster, instance, second.run_id)

    # 4. A canceled run is not a crash: the next tick starts a new one at once.
    third, _ = wait(
        _streaming_run(instance, {first.run_id, second.run_id}), 2 * INTERVAL_S + 20,
        "the run after a termination", dagster,
    )  # fmt: skip
    time.sleep(1.5)

    # 5. The operator stops the supervisor, then terminates the last run.
    repo = dagster.graphql(REPOS)["repositoriesOrError"]["nodes"][0]
    selector = {
        "repositoryLocationName": repo["location"]["name"],
        "repositoryName": repo["name"],
        "sensorName": SUPERVISOR,
    }
    state = dagster.graphql(SENSOR_STATE, {"selector": selector})["sensorOrError"]
    stopped = dagster.graphql(STOP_SENSOR, {"id": state["sensorState"]["id"]})["stopSensor"]
    assert stopped["__typename"] == "StopSensorMutationResult", stopped
    _terminate(dagster, instance, third.run_id)
    time.sleep(2 * INTERVAL_S)
    alive = instance.get_runs(dg.RunsFilter(job_name=STREAMER_JOB, statuses=ALIVE))
    assert not alive, "the stopped sensor launched a run"
    return [i for i in _emitted(sim)["ids"] if i > after_kill]


def _check_archive(settings: Settings, started_ms: int, emitted: list[int]) -> None:
    """Archive every hour the scenario touched; every emitted id is there exactly once."""
    assert len(emitted) > 10
    store = BronzeStore(aws_client("s3", settings), settings.bucket, settings.bronze_prefix)
    reader = KinesisReader(aws_client("kinesis", settings))
    ids: list[int] = []
    cutoff = now_ms() + 1
    for hour in range(floor_hour(started_ms), floor_hour(cutoff) + 1, HOUR_MS):
        end = max(hour + HOUR_MS, cutoff)
        archived = archive_hour(reader, store, settings.kinesis_trade_stream, SYMBOL, TRADE,
                                hour, end)  # fmt: skip
        stored = store.read_hour(SYMBOL, TRADE, hour) or []
        assert len(stored) == len(archived.records)
        ids += [r["trade_id"] for r in stored]
    assert len(ids) == len(set(ids)), "a trade id stored twice"
    missing = set(emitted) - set(ids)
    assert not missing, f"{len(missing)} emitted trades not archived, e.g. {sorted(missing)[:5]}"
