"""The supervised streamer on a real Dagster deployment (``dagster dev``: webserver + daemon),
the real simulator and a moto server of its own.

One scenario, in order: the sensor starts the streamer; ``kill -9`` of the run's process at
random moments (twice) is detected by its stale heartbeat and replaced; the run is terminated
from Dagster (the UI's mutation) and flushes everything; its worker is then frozen with SIGSTOP
(the sensor marks it failed and a replacement takes the lease over) and woken with SIGCONT (it
finds its lease lapsed, sends nothing more and exits within seconds); the operator stops the
sensor and terminates the last run.

Checked against the truth, the simulator's REST ``historicalTrades`` (the simulator sends
nothing on the WebSocket while nobody subscribes, so comparing with what it sent would hide
every restart's hole): every trade id of each symbol from the first streamed to the last is
on the Kinesis trade stream. Never two producers at once: in arrival order, no record of an
older lease epoch comes after one of a newer epoch, on any stream; and never two runs alive.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.binance.rest import BinanceRestClient
from ingest_pipeline.defs.streamer import ALIVE, STREAMER_JOB, SUPERVISOR, read_heartbeats
from ingest_pipeline.records import PRODUCER_EPOCH
from ingest_pipeline.settings import Settings
from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline.streaming.lease import S3Lease
from ingest_pipeline_tests.dagster_harness import ROOT, DagsterDev
from ingest_pipeline_tests.streaming.test_streamer_continuity import read_all

# Short, but not so short that a busy 2-core machine (sqlite locked for a moment, a slow
# heartbeat write) makes a healthy run look dead; the lease follows (renew 2 s, ttl 8 s).
INTERVAL_S = 5
HEARTBEAT_S = 2
STALE_S = 8
# Kills are crashes to the supervisor: after the second one in a row it backs off (10 s, then
# 20 s) before the next launch. Plus the stale heartbeat, a tick, the run worker's start.
REPLACE_S = 150
SYMBOLS = ("BTCUSDT", "ETHUSDT")

TERMINATE = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
  }
}
"""


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
    status) at every moment."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.max_alive_runs = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            runs = self.instance.get_runs(dg.RunsFilter(job_name=STREAMER_JOB, statuses=ALIVE))
            self.max_alive_runs = max(self.max_alive_runs, len(runs))
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
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def own_aws(local_settings: Settings) -> Any:
    with EmbeddedAWS(local_settings) as server:
        yield server


@pytest.mark.daemon
def test_supervised_streamer_loses_no_trade_across_kills_termination_and_a_freeze(
    own_aws: EmbeddedAWS, tmp_path: Path
) -> None:
    with SimulatorServer(SimulatorConfig()) as sim:
        env = {
            "AWS_ENDPOINT_URL": own_aws.endpoint_url,
            "BINANCE_REST_URL": sim.url,
            "BINANCE_WS_URL": sim.url.replace("http://", "ws://"),
            "INGEST_SYMBOLS": ",".join(SYMBOLS),
            "INGEST_STREAMER_SUPERVISOR_STATUS": "RUNNING",
            "INGEST_STREAMER_SUPERVISOR_INTERVAL_SECONDS": str(INTERVAL_S),
            "INGEST_STREAMER_HEARTBEAT_SECONDS": str(HEARTBEAT_S),
            "INGEST_STREAMER_STALE_AFTER_SECONDS": str(STALE_S),
            "INGEST_STREAMER_STATE_DIR": str(tmp_path / "streamer"),
        }
        instance_yaml = (ROOT / "dagster.yaml").read_text()
        settings = own_aws.settings
        with DagsterDev(tmp_path / "home", env, instance_yaml) as dagster:
            instance = dg.DagsterInstance.from_config(str(tmp_path / "home"))
            watcher = Watcher(instance)
            try:
                stops = _scenario(dagster, instance)
            finally:
                watcher.stop()
            assert watcher.samples > 20
            assert watcher.max_alive_runs == 1, "two streamer runs were alive at once"
            runs = sorted(
                instance.get_run_records(dg.RunsFilter(job_name=STREAMER_JOB)),
                key=lambda r: r.create_timestamp,
            )
            # Each run was created after the one before it ended. (The frozen run's end time
            # moves to when its woken process finished; its status said FAILURE long before,
            # which the watcher saw.)
            for before, after in zip(runs, runs[1:], strict=False):
                assert before.end_time is not None
                if before.dagster_run.run_id != stops["frozen"]:
                    assert after.create_timestamp.timestamp() >= before.end_time
            beats = read_heartbeats(instance, [r.dagster_run.run_id for r in runs])
        _check(dagster_settings(settings, sim), stops, [beats[r.dagster_run.run_id] for r in runs])


def dagster_settings(settings: Settings, sim: SimulatorServer) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, binance_rest_url=sim.url, symbols=SYMBOLS)


def _streaming_run(instance: dg.DagsterInstance, exclude: set[str]) -> Callable[[], Any]:
    """A started streamer run (not in ``exclude``) whose heartbeat shows trades sent with its
    lease held and its start fill done."""

    def find() -> Any:
        runs = instance.get_runs(
            dg.RunsFilter(job_name=STREAMER_JOB, statuses=[dg.DagsterRunStatus.STARTED])
        )
        runs = [r for r in runs if r.run_id not in exclude]
        if not runs:
            return None
        beat = read_heartbeats(instance, [runs[0].run_id]).get(runs[0].run_id)
        if beat and beat["records_out"]["trade"] > 0 and beat.get("lease_held"):
            return runs[0], beat
        return None

    return find


def _terminate(dagster: DagsterDev, instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    result = dagster.graphql(TERMINATE, {"runId": run_id})["terminateRun"]
    assert result["__typename"] == "TerminateRunSuccess", result
    wait(
        lambda: instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED,
        60, f"run {run_id} canceled", dagster,
    )  # fmt: skip
    beat = read_heartbeats(instance, [run_id])[run_id]
    assert beat["final"] and beat["interrupted"] and beat["flushed_clean"] is True, beat
    # Everything it put is acknowledged; more when it replayed a killed predecessor's spill.
    assert beat["kinesis_buffer"] == 0 and beat["acknowledged"] >= sum(
        beat["records_out"].values()
    ), beat
    return beat


def _scenario(dagster: DagsterDev, instance: dg.DagsterInstance) -> dict[str, Any]:
    """Runs the scenario; returns what the checks need to know about each stop."""
    rng = random.Random()
    stops: dict[str, Any] = {"kinds": []}
    seen: set[str] = set()
    # 1. The sensor (RUNNING by default here) starts the streamer; trades reach Kinesis.
    run, beat = wait(_streaming_run(instance, seen), 120, "a streaming run", dagster)
    assert run.tags["dagster/max_runtime"] == "0"
    assert run.tags["dagster/sensor_name"] == SUPERVISOR

    # 2. kill -9 of the run's process at random moments: replaced, the hole filled.
    for _ in range(2):
        time.sleep(rng.uniform(0.2, 4.0))
        os.kill(beat["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        stops["kinds"].append("kill -9")
        seen.add(run.run_id)
        run, beat = wait(_streaming_run(instance, seen), REPLACE_S, "a replacement", dagster)
        print(f"kill -9: replacement streaming {time.monotonic() - killed_at:.1f} s later")

    # 3. Terminated from Dagster: the op flushes everything, releases the lease.
    time.sleep(rng.uniform(0.5, 3.0))
    _terminate(dagster, instance, run.run_id)
    stops["kinds"].append("terminate")
    seen.add(run.run_id)
    run, beat = wait(_streaming_run(instance, seen), 2 * INTERVAL_S + 60,
                     "the run after a termination", dagster)  # fmt: skip

    # 4. Frozen: the sensor marks it failed and a replacement takes the lease over; woken up,
    # the frozen process sends nothing more and exits by itself.
    time.sleep(rng.uniform(0.5, 3.0))
    frozen_pid = beat["pid"]
    os.kill(frozen_pid, signal.SIGSTOP)
    stops["kinds"].append("freeze")
    stops["frozen"] = run.run_id
    seen.add(run.run_id)
    try:
        frozen_id = run.run_id
        wait(lambda: instance.get_run_by_id(frozen_id).status == dg.DagsterRunStatus.FAILURE,
             REPLACE_S, "the frozen run marked failed", dagster)  # fmt: skip
        assert _pid_alive(frozen_pid), "the sensor killed the frozen process at once"
        nxt, beat = wait(_streaming_run(instance, seen), REPLACE_S,
                         "a replacement of the frozen run", dagster)  # fmt: skip
        time.sleep(2.0)
    finally:
        # The supervisor kills it KILL_AFTER_MIN_S after marking it failed: on a busy machine
        # the replacement (a run worker and its step process) may stream only after that.
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen_pid, signal.SIGCONT)
    woke = time.time()
    stops["woke_ms"] = int(woke * 1000)
    wait(lambda: not _pid_alive(frozen_pid), 60, "the woken process to exit", dagster)
    stops["woken_exit_s"] = time.time() - woke
    run = nxt
    time.sleep(2.0)

    # 5. The operator stops the supervisor, then terminates the last run.
    dagster.stop_sensor(SUPERVISOR)
    _terminate(dagster, instance, run.run_id)
    time.sleep(2 * INTERVAL_S)
    alive = instance.get_runs(dg.RunsFilter(job_name=STREAMER_JOB, statuses=ALIVE))
    assert not alive, "the stopped sensor launched a run"
    return stops


def _check(settings: Settings, stops: dict[str, Any], beats: list[dict[str, Any]]) -> None:
    """Every trade id on Kinesis (REST is the truth); never two producers at once."""
    # Never two producers: a record of lease epoch k was received (ingest_ts) before epoch
    # k+1 was acquired. Records a dead or fenced process had taken in may still arrive later,
    # replayed from its spill files by its successor; nothing it received after it lost the
    # lease reaches Kinesis (the frozen one woke long after its successor began).
    lease = S3Lease(aws_client("s3", settings), settings.bucket, "streamer", "default",
                    SYMBOLS, ttl_s=3)  # fmt: skip
    history = lease.history()
    assert [h["epoch"] for h in history] == list(range(1, len(beats) + 1))
    acquired = {h["epoch"]: h["acquired_at_ms"] for h in history}
    frozen_epoch = next(b["epoch"] for b in beats if b["run_id"] == stops["frozen"])
    assert acquired[frozen_epoch + 1] < stops["woke_ms"]
    late_replays = 0
    for stream in settings.kinesis_streams:
        last_epoch = 0
        for rec, _ in read_all(settings, stream):
            epoch = rec[PRODUCER_EPOCH]
            if epoch + 1 in acquired:
                assert rec["ingest_ts"] < acquired[epoch + 1], (
                    f"{stream}: a record epoch {epoch} took in after epoch {epoch + 1} began: {rec}"
                )
            late_replays += epoch < last_epoch
            last_epoch = max(last_epoch, epoch)
    # Every id, per symbol, from the first streamed to the last: REST is the truth.
    trades = read_all(settings, settings.kinesis_trade_stream)
    client = BinanceRestClient(settings.binance_rest_url)
    for sym in SYMBOLS:
        ids = {r["trade_id"] for r, _ in trades if r["symbol"] == sym}
        first, last = min(ids), max(ids)
        truth = [t["id"] for p in client.historical_trades_range(sym, first, last) for t in p.items]
        missing = sorted(set(truth) - ids)
        assert not missing, f"{sym}: {len(missing)} of {len(truth)} ids missing: {missing[:5]}"
    # Figures: the hole each successor filled (ids, and the trade-time span they cover), and
    # how long its fill took.
    for kind, beat in zip(stops["kinds"], beats[1:], strict=False):
        fill = beat["start_fill"]
        filled = [r["event_ts"] for r, _ in trades
                  if r[PRODUCER_EPOCH] == beat["epoch"] and r["source"] == "rest"]  # fmt: skip
        span = (max(filled) - min(filled)) / 1000 if filled else 0.0
        print(f"after {kind}: epoch {beat['epoch']} filled {fill['ids']} ids "
              f"({fill['by_symbol']}) spanning {span:.1f} s of trades, in {fill['seconds']} s; "
              f"gap ids {beat['gap_ids']}")  # fmt: skip
        assert beat["gap_ids"] == 0 and beat["trade_ids_unfilled"] == 0
    print(
        f"frozen run: exited {stops['woken_exit_s']:.1f} s after SIGCONT; {late_replays} "
        "records of older epochs arrived late (replayed from adopted spill files)"
    )
