"""The streamer as a Dagster job, kept alive by a sensor (DESIGN.md "Dagster layer").

Job ``realtime_streamer``: one op runs ``Streamer`` in a background thread until the run is
terminated. The op's main thread only waits and records a heartbeat; Dagster delivers
termination there as ``DagsterExecutionInterruptedError`` (a BaseException), and the
``finally`` stops the streamer, which stops reading and flushes the Kinesis producer before the
run ends. The job is tagged ``dagster/max_runtime: 0``, so run monitoring never times it out.

A deliberate stop is not a failure: the op catches the interrupt, stops cleanly and returns, so
the step succeeds and the run ends CANCELED (no red step, no stack trace). That takes the
multiprocess executor (one step process): its run worker receives the termination, forwards it
to the step and ends the run CANCELED after the step returns; in process, a returning op would
make the run SUCCESS and a re-raised interrupt a STEP_FAILURE. The streamer therefore runs in
the step process, a child of the run worker: ``kill -9`` of that process is the crash the
supervisor detects (the heartbeat's pid is the step process), and a step process whose run
worker died (``kill -9`` of the worker) stops by itself, so that no orphan keeps the lease.
The run log says ``starting``, ``running`` and ``stopped`` as they happen (on every change of
the streamer's state or status, and every ``LOG_EVERY_HEARTBEATS`` heartbeats in between).

Heartbeat: a small JSON (time, host, pid and its start time, health summary, lease epoch) in
the instance's key-value store
(``run_storage.set_cursor_values``), one key per run, rewritten every
``streamer_heartbeat_seconds``. Why there: it is one upsert of one row, costs nothing in the
event log (an AssetObservation or log line a minute would add ~1,400 events a day to the run),
needs no asset, and the sensor reads every live run's heartbeat in one query. The op also logs
a status line when the streamer's state or status changes and every ``LOG_EVERY_HEARTBEATS``
heartbeats, for people reading the run.

Sensor ``streamer_supervisor``: exactly one streamer run alive (queued, starting, started or
canceling). Each tick is a few storage queries, never a stream read:
- a started/canceling run whose heartbeat is older than ``streamer_stale_after_seconds`` is
  dead (``kill -9``, host lost: the default run launcher does not notice) or frozen -> marked
  failed, and when its process still runs on this host ``KILL_AFTER_MIN_S`` later (same pid
  *and* start time, so a reused pid is never hit) it gets SIGKILL. The sensor does not ask the
  run launcher to terminate it: the default launcher's terminate is a call back into the code
  server that evaluates this very sensor, and with a frozen worker it outlived the tick's
  60 s limit. None of this is what keeps two processes from producing at once: the
  streamer's S3 lease does (``streaming/lease.py``), wherever the process runs; a woken process
  finds its lease lapsed, sends nothing more and exits by itself;
- no run alive -> launch one, with ``run_key = streamer-<generation>`` (run keys are unique
  forever, and two overlapping ticks compute the same key, so the daemon creates one run);
  after consecutive crashes, wait with exponential backoff (state in the cursor);
- one alive with another symbol set than configured (hash in its tags) -> terminate it; the
  tick after it has ended launches the new set (never two alive, also not for a moment);
- otherwise skip, saying why (which run, its heartbeat age and figures).
A run stuck in STARTING (its worker never came up) is run monitoring's job: its start timeout
fails it, and the next tick replaces it.
"""

import hashlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import dagster as dg

from ingest_pipeline.settings import Settings

STREAMER_JOB = "realtime_streamer"
SUPERVISOR = "streamer_supervisor"
HEARTBEAT_PREFIX = "ingest_pipeline/streamer_heartbeat/"
TAG_ROLE = "ingest_pipeline/role"
ROLE_STREAMER = "streamer"
TAG_SYMBOLS_HASH = "ingest_pipeline/symbols_hash"
TAG_GENERATION = "ingest_pipeline/streamer_generation"
LOG_EVERY_HEARTBEATS = 10
# A run whose streamer has been up this long is healthy: the crash counter starts over.
HEALTHY_AFTER_S = 600.0
MAX_BACKOFF_S = 1800.0
STARTUP_GRACE_S = 60.0
# A run marked failed whose process still runs on this host this long after (frozen, or stuck
# in a flush) is killed. Long enough for a woken process to stop by itself.
KILL_AFTER_MIN_S = 60.0

ALIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
# Statuses in which the run's process exists and writes heartbeats.
BEATING = (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
FINISHED = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.SUCCESS]


def symbols_hash(symbols: tuple[str, ...]) -> str:
    return hashlib.sha256(",".join(sorted(symbols)).encode()).hexdigest()[:16]


# --- heartbeat -------------------------------------------------------------------------------


def heartbeat_key(run_id: str) -> str:
    return HEARTBEAT_PREFIX + run_id


def write_heartbeat(instance: dg.DagsterInstance, run_id: str, beat: dict[str, Any]) -> None:
    instance.run_storage.set_cursor_values({heartbeat_key(run_id): json.dumps(beat)})


def read_heartbeats(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not run_ids:
        return {}
    raw = instance.run_storage.get_cursor_values({heartbeat_key(r) for r in run_ids})
    return {k[len(HEARTBEAT_PREFIX) :]: json.loads(v) for k, v in raw.items()}


def process_start_ticks(pid: int | str = "self") -> int | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22): with the
    pid, it names one process for good (pids are reused, start times are not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is not alive
        return None
    return int(fields[19])


def lease_timing(settings: Settings) -> tuple[float, float]:
    """(renew every, ttl) of the streamer's lease, from the heartbeat settings: renewed as often
    as the heartbeat (at most every 5 s), expiring no later than the run is declared stale (at
    most 30 s), so a replacement never waits long for the lease of a dead process."""
    renew = min(5.0, float(settings.streamer_heartbeat_seconds))
    ttl = max(3 * renew, min(30.0, float(settings.streamer_stale_after_seconds)))
    return renew, ttl


def status_line(summary: dict[str, Any]) -> str:
    """``starting`` / ``running`` / ``stopping`` / ``stopped``, with the health status and its
    first reason when not ok: what a person reading the run needs from one heartbeat."""
    state = summary["state"]
    if state in ("created", "starting", "standby"):
        phase = "starting"
        if state == "standby":
            phase += " (waiting for the lease)"
        return phase
    if state != "running" or summary["status"] == "ok":
        return state
    reasons = summary.get("reasons") or []
    return f"running, {summary['status']}" + (f" ({reasons[0]})" if reasons else "")


def health_summary(health: dict[str, Any]) -> dict[str, Any]:
    """What the sensor and a person need from ``Streamer.health()``."""
    streams = health["streams"]
    continuity = health.get("continuity", {})
    return {
        "status": health["status"],
        "state": health["state"],
        "reasons": health["reasons"][:5],
        "uptime_s": health["uptime_s"],
        "messages_in": {t: s["messages_in"] for t, s in streams.items()},
        "records_out": {t: s["records_out"] for t, s in streams.items()},
        "reconnects": health["reconnects"],
        "gaps": health["gaps"],
        "trade_ids_unfilled": health["trade_ids_unfilled"],
        "circuit_state": health["kinesis"].get("circuit_state"),
        "kinesis_buffer": health["kinesis"].get("buffer_records"),
        "acknowledged": health["kinesis"].get("acknowledged"),
        "epoch": continuity.get("epoch"),
        "lease_held": (continuity.get("lease") or {}).get("held"),
        "start_fill": continuity.get("start_fill"),
        "gap_ids": continuity.get("gap_ids"),
    }


def _short(beat: dict[str, Any] | None) -> str:
    if not beat:
        return "no heartbeat yet"
    return (
        f"{beat.get('status')}, in {sum(beat.get('messages_in', {}).values())} "
        f"out {sum(beat.get('records_out', {}).values())}, reconnects {beat.get('reconnects')}, "
        f"gaps {beat.get('gaps')}, circuit {beat.get('circuit_state')}"
    )


# --- the job ---------------------------------------------------------------------------------


class StreamerRunConfig(dg.Config):
    """Run config of the streamer op (defaults fit the sensor's launches)."""

    # /health and /metrics of the streamer on 127.0.0.1 (None: off, 0: a free port).
    health_port: int | None = None
    shutdown_flush_timeout_s: float = 30.0


def _state_dir(settings: Settings, instance: dg.DagsterInstance) -> Path:
    if settings.streamer_state_dir:
        return Path(settings.streamer_state_dir)
    # The spill directory must outlive a crashed run: the next run replays what it left.
    return Path(instance.root_directory) / "streamer"


def build_streamer_job(settings: Settings) -> dg.JobDefinition:
    heartbeat_s = float(settings.streamer_heartbeat_seconds)

    @dg.op(name="run_streamer", description="Binance WebSocket -> Kinesis until terminated.")
    def run_streamer(context: dg.OpExecutionContext, config: StreamerRunConfig) -> None:
        # Imported here (aiohttp and the rest of the streamer's runtime): every run process
        # imports the definitions, only this op needs it.
        from ingest_pipeline.streaming import Streamer, StreamerConfig

        instance, run_id = context.instance, context.run_id
        state = _state_dir(settings, instance)
        renew_s, ttl_s = lease_timing(settings)
        streamer = Streamer(
            settings,
            StreamerConfig(
                deadletter_dir=str(state / "deadletter"),
                # A spill dir of its own per run: a predecessor still holding its own (frozen,
                # or still flushing) never blocks the start; its files are adopted once its
                # lock is free.
                spill_dir=str(state / "spill" / run_id),
                spill_root=str(state / "spill"),
                health_port=config.health_port,
                shutdown_flush_timeout_s=config.shutdown_flush_timeout_s,
                lease_renew_s=renew_s,
                lease_ttl_s=ttl_s,
            ),
        )
        host, started = socket.gethostname(), process_start_ticks()
        stop = threading.Event()
        errors: list[BaseException] = []

        def target() -> None:
            try:
                streamer.run_until(stop)
            except BaseException as exc:
                errors.append(exc)

        beats = 0
        logged = ""

        def beat(**extra: Any) -> None:
            nonlocal beats, logged
            summary = health_summary(streamer.health())
            payload = {"ts": time.time(), "host": host, "pid": os.getpid(),
                       "proc_start": started, "run_id": run_id, **summary, **extra}  # fmt: skip
            try:
                write_heartbeat(instance, run_id, payload)
            except Exception as exc:  # a busy storage must not stop the stream
                context.log.warning(f"heartbeat not recorded: {exc!r}")
            # A changed reason alone (an age that grows) is no news; a changed state or status is.
            now_in = f"{summary['state']}/{summary['status']}"
            if now_in != logged or beats % LOG_EVERY_HEARTBEATS == 0:
                context.log.info(f"streamer {status_line(summary)}: {streamer.progress_line()}")
                logged = now_in
            beats += 1

        thread = threading.Thread(target=target, name="streamer", daemon=True)
        thread.start()
        context.log.info(
            f"streaming {len(streamer.symbols)} symbols (pid {os.getpid()}), state in {state}; "
            f"heartbeat every {heartbeat_s:.0f} s"
        )
        interrupted = orphaned = False
        parent = os.getppid()
        try:
            next_beat = 0.0
            while thread.is_alive():
                if os.getppid() != parent:
                    # The run worker is gone (kill -9): nobody records this run any more, and
                    # the supervisor starts a replacement that needs the lease.
                    orphaned = True
                    break
                if time.monotonic() >= next_beat:
                    beat()
                    next_beat = time.monotonic() + heartbeat_s
                # Interruptible: termination raises DagsterExecutionInterruptedError here.
                time.sleep(min(0.5, heartbeat_s))
        except dg.DagsterExecutionInterruptedError:
            interrupted = True
            context.log.info("termination requested: stopping the streamer and flushing")
        except BaseException:
            interrupted = True
            context.log.info("stopping the streamer and flushing after an error")
            raise
        finally:
            stop.set()
            # Keep beating while the producer flushes: a long flush is not a dead run.
            deadline = time.monotonic() + config.shutdown_flush_timeout_s + 60
            while thread.is_alive() and time.monotonic() < deadline:
                thread.join(min(heartbeat_s, 1.0))
                if time.monotonic() >= next_beat:
                    beat()
                    next_beat = time.monotonic() + heartbeat_s
            beat(final=True, flushed_clean=streamer.flushed_clean, interrupted=interrupted)
            if thread.is_alive():
                context.log.error("the streamer did not stop within the flush timeout")
            elif streamer.flushed_clean is False:
                context.log.error("the Kinesis producer did not flush everything (spilled)")
        if errors:
            raise errors[0]
        if orphaned:
            raise dg.Failure("the run worker of this streamer is gone: stopped, flushed")
        if not interrupted:
            raise dg.Failure("the streamer stopped on its own, without being asked to")
        context.log.info(
            "streamer stopped as requested"
            + (", everything flushed" if streamer.flushed_clean else "")
            + f": {streamer.progress_line()}"
        )

    @dg.job(
        name=STREAMER_JOB,
        description="Runs the Binance -> Kinesis streamer until terminated; supervised by the "
        f"`{SUPERVISOR}` sensor.",
        # One step process: a terminated run ends CANCELED once the op has stopped cleanly.
        executor_def=dg.multiprocess_executor.configured({"max_concurrent": 1}),
        tags={"dagster/max_runtime": "0", TAG_ROLE: ROLE_STREAMER},
    )
    def realtime_streamer() -> None:
        run_streamer()

    return realtime_streamer


# --- the supervisor --------------------------------------------------------------------------


def backoff_s(crashes: int, base_s: float) -> float:
    """No wait after one crash (a killed process is replaced at once), then doubling."""
    if crashes <= 1:
        return 0.0
    return min(base_s * 2 ** (crashes - 1), MAX_BACKOFF_S)


def _load_cursor(raw: str | None) -> dict[str, Any]:
    try:
        cursor = json.loads(raw) if raw else {}
    except ValueError:
        cursor = {}
    return {"generation": 0, "crashes": 0, "last_failure": None, "failed_at": 0.0,
            "to_kill": {}, **cursor}  # fmt: skip


def _kill_leftovers(cursor: dict[str, Any], now: float, kill_after_s: float) -> list[str]:
    """SIGKILL the processes of runs marked failed ``kill_after_s`` ago that still run on this
    host (the same pid *and* start time as in their last heartbeat)."""
    notes = []
    host = socket.gethostname()
    for run_id, entry in list(cursor["to_kill"].items()):
        pid, started = entry.get("pid"), entry.get("proc_start")
        alive = (
            entry.get("host") == host
            and isinstance(pid, int)
            and started is not None
            and process_start_ticks(pid) == started
        )
        if not alive:
            del cursor["to_kill"][run_id]
            continue
        if now - entry["marked_at"] < kill_after_s:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            notes.append(f"killed pid {pid} of run {run_id[:8]} (alive {kill_after_s:.0f} s "
                         "after it was marked failed)")  # fmt: skip
        except OSError as exc:
            notes.append(f"could not kill pid {pid} of run {run_id[:8]}: {exc}")
        del cursor["to_kill"][run_id]
    return notes


def supervise(
    instance: dg.DagsterInstance, settings: Settings, cursor: dict[str, Any], now: float
) -> tuple[dg.RunRequest | None, str]:
    """One supervision step: returns the run to launch (or None) and what was decided.

    Mutates ``cursor``. Marks stale runs failed and requests termination of a run streaming
    an outdated symbol set.
    """
    stale_s = float(settings.streamer_stale_after_seconds)
    want = symbols_hash(settings.symbols)
    records = instance.get_run_records(dg.RunsFilter(job_name=STREAMER_JOB, statuses=ALIVE))
    beats = read_heartbeats(instance, [r.dagster_run.run_id for r in records])
    notes: list[str] = _kill_leftovers(cursor, now, max(KILL_AFTER_MIN_S, 2 * stale_s))
    alive = []
    for rec in sorted(records, key=lambda r: r.create_timestamp):
        run = rec.dagster_run
        beat = beats.get(run.run_id)
        if run.status in BEATING:
            last = beat["ts"] if beat else (rec.start_time or rec.create_timestamp.timestamp())
            age = now - last
            # Before its first heartbeat a run is still setting up (imports, resources): give
            # it more time than a run that stopped beating.
            if age > (stale_s if beat else stale_s + STARTUP_GRACE_S):
                what = f"last heartbeat {age:.0f} s ago" if beat else f"no heartbeat in {age:.0f} s"
                instance.report_run_failed(
                    run,
                    f"{SUPERVISOR}: streamer run presumed dead ({what}, limit {stale_s:.0f} s): "
                    "its process was killed, frozen or its host lost. A replacement is "
                    "launched; the streamer's lease keeps this one from producing should it "
                    "still run.",
                )
                if beat:
                    cursor["to_kill"][run.run_id] = {
                        "host": beat.get("host"), "pid": beat.get("pid"),
                        "proc_start": beat.get("proc_start"), "marked_at": now,
                    }  # fmt: skip
                notes.append(f"run {run.run_id[:8]} marked failed ({what})")
                continue
        alive.append((rec, beat))

    if len(alive) > 1:
        # Never expected (one run key per generation, the coordinator's tag limit): keep the
        # oldest, end the others.
        for rec, _ in alive[1:]:
            instance.run_coordinator.cancel_run(rec.dagster_run.run_id)
        ids = ", ".join(r.dagster_run.run_id[:8] for r, _ in alive[1:])
        return None, f"{len(alive)} streamer runs alive: terminating {ids}"

    if alive:
        rec, beat = alive[0]
        run = rec.dagster_run
        if beat and beat.get("uptime_s", 0) >= HEALTHY_AFTER_S and cursor["crashes"]:
            cursor["crashes"] = 0
        if run.tags.get(TAG_SYMBOLS_HASH) != want:
            if run.status != dg.DagsterRunStatus.CANCELING:
                instance.run_coordinator.cancel_run(run.run_id)
            return None, (
                f"symbols changed (run {run.run_id[:8]} streams another set): terminating it; "
                "a run with the configured symbols starts once it has ended"
            )
        detail = f"heartbeat {now - beat['ts']:.0f} s ago; {_short(beat)}" if beat else _short(beat)
        return None, (
            f"streamer run {run.run_id[:8]} is {run.status.value} ({detail})"
            + (f"; {'; '.join(notes)}" if notes else "")
        )

    last = instance.get_run_records(
        dg.RunsFilter(job_name=STREAMER_JOB, statuses=FINISHED), limit=1
    )
    if last and last[0].dagster_run.status == dg.DagsterRunStatus.FAILURE:
        failed = last[0]
        if failed.dagster_run.run_id != cursor["last_failure"]:
            cursor["crashes"] += 1
            cursor["last_failure"] = failed.dagster_run.run_id
            cursor["failed_at"] = min(failed.end_time or now, now)
    if cursor["crashes"]:
        wait = backoff_s(cursor["crashes"], float(settings.streamer_supervisor_interval_seconds))
        retry_at = cursor["failed_at"] + wait
        if wait > 0 and now < retry_at:
            return None, (
                f"backing off after {cursor['crashes']} consecutive streamer crashes "
                f"(last: run {str(cursor['last_failure'])[:8]}): next launch in "
                f"{retry_at - now:.0f} s"
            )
    newest = instance.get_runs(dg.RunsFilter(job_name=STREAMER_JOB), limit=1)
    tagged = int(newest[0].tags.get(TAG_GENERATION, 0)) if newest else 0
    generation = max(cursor["generation"], tagged) + 1
    cursor["generation"] = generation
    request = dg.RunRequest(
        run_key=f"streamer-{generation}",
        tags={
            TAG_GENERATION: str(generation),
            TAG_SYMBOLS_HASH: want,
            "ingest_pipeline/symbols": ",".join(settings.symbols)[:200],
        },
    )
    why = f"no streamer run alive: launching generation {generation}"
    return request, why + (f" ({'; '.join(notes)})" if notes else "")


def build_streamer_supervisor(settings: Settings, job: dg.JobDefinition) -> dg.SensorDefinition:
    status = (
        dg.DefaultSensorStatus.RUNNING
        if settings.streamer_supervisor_status == "RUNNING"
        else dg.DefaultSensorStatus.STOPPED
    )

    @dg.sensor(
        name=SUPERVISOR,
        job=job,
        minimum_interval_seconds=settings.streamer_supervisor_interval_seconds,
        default_status=status,
        description="Keeps exactly one realtime_streamer run alive: launches one when none is "
        "alive, marks a run with a stale heartbeat failed and replaces it (with backoff after "
        "repeated crashes), restarts it when the configured symbols change.",
    )
    def streamer_supervisor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor = _load_cursor(context.cursor)
        request, why = supervise(context.instance, settings, cursor, time.time())
        context.log.info(why)
        if request is None:
            return dg.SensorResult(skip_reason=dg.SkipReason(why), cursor=json.dumps(cursor))
        return dg.SensorResult(run_requests=[request], cursor=json.dumps(cursor))

    return streamer_supervisor
