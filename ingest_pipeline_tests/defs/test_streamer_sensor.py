"""The supervisor's decisions, tick by tick, against a real (temporary, sqlite) instance."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator

import dagster as dg
import pytest

from ingest_pipeline.defs.streamer import (
    KILL_AFTER_MIN_S,
    TAG_GENERATION,
    TAG_SYMBOLS_HASH,
    _load_cursor,
    build_streamer_job,
    build_streamer_supervisor,
    lease_timing,
    process_start_ticks,
    read_heartbeats,
    supervise,
    symbols_hash,
    write_heartbeat,
)
from ingest_pipeline.settings import Settings, load_settings

SETTINGS = dataclasses.replace(
    load_settings("local", environ={}),
    symbols=("BTCUSDT",),
    streamer_heartbeat_seconds=1,
    streamer_stale_after_seconds=3,
    streamer_supervisor_interval_seconds=5,
)
JOB = build_streamer_job(SETTINGS)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def tick(
    instance: dg.DagsterInstance, cursor: str | None = None, settings: Settings = SETTINGS
) -> tuple[dg.SensorResult, str | None]:
    sensor = build_streamer_supervisor(settings, JOB)
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = sensor(context)
    return result, result.cursor


def add_run(
    instance: dg.DagsterInstance,
    status: dg.DagsterRunStatus,
    generation: int,
    symbols: tuple[str, ...] = SETTINGS.symbols,
) -> dg.DagsterRun:
    return instance.create_run_for_job(
        JOB,
        status=status,
        tags={TAG_GENERATION: str(generation), TAG_SYMBOLS_HASH: symbols_hash(symbols)},
    )


def beat(instance: dg.DagsterInstance, run: dg.DagsterRun, age_s: float, **extra: object) -> None:
    write_heartbeat(instance, run.run_id, {
        "ts": time.time() - age_s, "pid": 1, "status": "ok", "messages_in": {"trade": 5},
        "records_out": {"trade": 5}, "reconnects": 0, "gaps": 0, "circuit_state": "closed",
        "uptime_s": 30, **extra,
    })  # fmt: skip


def test_launches_one_when_none_is_alive_and_overlapping_ticks_agree(
    instance: dg.DagsterInstance,
) -> None:
    result, cursor = tick(instance)
    (request,) = result.run_requests
    assert request.run_key == "streamer-1"
    assert request.tags[TAG_SYMBOLS_HASH] == symbols_hash(("BTCUSDT",))
    # A tick overlapping the first one reads the same state and asks for the same run key:
    # the daemon creates a run per run key once, so there is still one run.
    again, _ = tick(instance)
    assert [r.run_key for r in again.run_requests] == ["streamer-1"]
    assert json.loads(cursor)["generation"] == 1


def test_skips_while_a_run_is_starting_or_healthy(instance: dg.DagsterInstance) -> None:
    # (A QUEUED run needs a code location origin; STARTING goes through the same branch.)
    starting = add_run(instance, dg.DagsterRunStatus.STARTING, 1)
    result, _ = tick(instance)
    assert not result.run_requests
    assert f"streamer run {starting.run_id[:8]} is STARTING" in result.skip_reason.skip_message
    instance.delete_run(starting.run_id)
    started = add_run(instance, dg.DagsterRunStatus.STARTED, 1)
    beat(instance, started, age_s=0.1)
    result, _ = tick(instance)
    assert not result.run_requests
    message = result.skip_reason.skip_message
    assert f"{started.run_id[:8]} is STARTED (heartbeat 0 s ago; ok, in 5 out 5" in message, message


def test_stale_heartbeat_marks_the_run_failed_and_replaces_it(
    instance: dg.DagsterInstance,
) -> None:
    dead = add_run(instance, dg.DagsterRunStatus.STARTED, 4)
    beat(instance, dead, age_s=10)
    result, cursor = tick(instance, json.dumps({"generation": 4}))
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    (request,) = result.run_requests
    assert request.run_key == "streamer-5"  # a fresh key per generation
    assert json.loads(cursor)["crashes"] == 1
    failure = instance.all_logs(dead.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0]
    assert "presumed dead (last heartbeat 10 s ago, limit 3 s)" in failure.message


def test_repeated_crashes_back_off_exponentially(instance: dg.DagsterInstance) -> None:
    cursor = _load_cursor(None)
    now = time.time()
    waits = []
    for generation in range(1, 5):
        run = add_run(instance, dg.DagsterRunStatus.STARTED, generation)
        instance.report_run_failed(run, "crashed")
        request, why = supervise(instance, SETTINGS, cursor, now)
        if request is None:
            assert why.startswith(f"backing off after {generation} consecutive streamer crashes")
            waits.append(round(cursor["failed_at"] + 5 * 2 ** (generation - 1) - now))
            # Once the wait is over, the next generation is launched.
            request, _ = supervise(instance, SETTINGS, cursor, now + 3600)
        assert request is not None and request.run_key == f"streamer-{generation + 1}"
    assert cursor["crashes"] == 4
    assert waits == [10, 20, 40]
    # A run healthy for long enough resets the count.
    healthy = add_run(instance, dg.DagsterRunStatus.STARTED, 9)
    beat(instance, healthy, age_s=0, uptime_s=601)
    supervise(instance, SETTINGS, cursor, time.time())
    assert cursor["crashes"] == 0


def test_a_change_of_symbols_restarts_the_streamer(instance: dg.DagsterInstance) -> None:
    old = add_run(instance, dg.DagsterRunStatus.STARTED, 1, symbols=("BTCUSDT",))
    beat(instance, old, age_s=0)
    changed = dataclasses.replace(SETTINGS, symbols=("BTCUSDT", "ETHUSDT"))
    result, cursor = tick(instance, settings=changed)
    assert not result.run_requests
    assert "symbols changed" in result.skip_reason.skip_message
    # Termination was requested (no run worker here to act on it); nothing new until it ends.
    assert instance.get_run_by_id(old.run_id).status == dg.DagsterRunStatus.CANCELING
    result, cursor = tick(instance, cursor, settings=changed)
    assert not result.run_requests
    instance.report_run_canceled(instance.get_run_by_id(old.run_id))
    result, _ = tick(instance, cursor, settings=changed)
    (request,) = result.run_requests
    assert request.tags[TAG_SYMBOLS_HASH] == symbols_hash(("ETHUSDT", "BTCUSDT"))
    assert request.run_key == "streamer-2"
    assert read_heartbeats(instance, [old.run_id])[old.run_id]["pid"] == 1


@pytest.mark.parametrize(("env", "status"), [("local", "STOPPED"), ("dev", "STOPPED"),
                                             ("prod", "RUNNING")])  # fmt: skip
def test_default_status_follows_the_environment(env: str, status: str) -> None:
    settings = load_settings(env, environ={})
    sensor = build_streamer_supervisor(settings, build_streamer_job(settings))
    assert sensor.default_status == dg.DefaultSensorStatus(status)
    assert sensor.minimum_interval_seconds == 30


def test_a_run_setting_up_is_not_taken_for_dead(instance: dg.DagsterInstance) -> None:
    # Started a few seconds ago, no heartbeat yet: more than the stale limit, within the
    # startup grace.
    run = add_run(instance, dg.DagsterRunStatus.STARTED, 1)
    request, why = supervise(instance, SETTINGS, _load_cursor(None), time.time() + 10)
    assert request is None and "no heartbeat yet" in why
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    request, _ = supervise(instance, SETTINGS, _load_cursor(None), time.time() + 120)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert request is not None


def test_a_stale_run_still_alive_on_this_host_is_killed_after_a_grace(
    instance: dg.DagsterInstance,
) -> None:
    """A frozen worker: marked failed at once, SIGKILLed only if it is still alive
    ``KILL_AFTER_MIN_S`` later (a woken one stops by itself before: its lease lapsed); a pid
    whose start time differs from the heartbeat's (reused) is never touched."""
    import signal
    import socket
    import subprocess
    import sys

    host = socket.gethostname()
    frozen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        run = add_run(instance, dg.DagsterRunStatus.STARTED, 1)
        beat(instance, run, age_s=10, host=host, pid=frozen.pid,
             proc_start=process_start_ticks(frozen.pid))  # fmt: skip
        cursor = _load_cursor(None)
        now = time.time()
        supervise(instance, SETTINGS, cursor, now)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert cursor["to_kill"][run.run_id]["pid"] == frozen.pid
        # The same pid with another start time: a process that reused the pid.
        cursor["to_kill"]["reused"] = {"host": host, "pid": bystander.pid, "proc_start": 1,
                                       "marked_at": now - 3600}  # fmt: skip
        supervise(instance, SETTINGS, cursor, now + KILL_AFTER_MIN_S - 5)
        assert frozen.poll() is None and "reused" not in cursor["to_kill"]
        supervise(instance, SETTINGS, cursor, now + KILL_AFTER_MIN_S + 1)
        assert frozen.wait(10) == -signal.SIGKILL
        assert not cursor["to_kill"] and bystander.poll() is None
    finally:
        for p in (frozen, bystander):
            p.kill()
            p.wait()


def test_lease_timing_follows_the_heartbeat() -> None:
    assert lease_timing(SETTINGS) == (1.0, 3.0)  # heartbeat 1 s, stale 3 s
    prod = dataclasses.replace(SETTINGS, streamer_heartbeat_seconds=60,
                               streamer_stale_after_seconds=180)  # fmt: skip
    assert lease_timing(prod) == (5.0, 30.0)
    issue = dataclasses.replace(SETTINGS, streamer_heartbeat_seconds=3,
                                streamer_stale_after_seconds=15)  # fmt: skip
    assert lease_timing(issue) == (3.0, 15.0)
