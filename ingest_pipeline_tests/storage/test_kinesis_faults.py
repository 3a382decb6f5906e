"""The producer when its disk fails, when it is killed, fenced or replaced (issue 14).

Kinesis is the moto server (through the fault proxy for outages), the disk is a real directory:
failures are injected into the ``os`` calls the producer module makes, or real (a tmpfs of
128 KiB in a user namespace, a ``kill -9`` of a producer process). Every test compares what
reached Kinesis with what ``put`` accepted.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
from prometheus_client import generate_latest

import ingest_pipeline.storage.kinesis_spiller as spiller_module
import ingest_pipeline.storage.spill as spill_module
from ingest_pipeline.settings import load_settings
from ingest_pipeline.standins.faultproxy import FaultProxy
from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline.storage.kinesis import (
    PRODUCER_CLIENT_CONFIG,
    KinesisProducer,
    NoopKinesisClient,
    ProducerFencedError,
)
from ingest_pipeline.storage.spill import SpillContents, encode_spill_record, read_spill_file
from ingest_pipeline.streaming import Streamer, StreamerConfig
from ingest_pipeline_tests.storage.test_kinesis import (
    FAST,
    KEYS,
    client_for,
    put_many,
    read_stream,
)

REPO = Path(__file__).resolve().parents[2]
# What the module docstring promises: a record is on disk spill_after_s + spill_interval_s
# after put (plus the write itself) unless acknowledged first.
CRASH_WINDOW_S = FAST.spill_after_s + FAST.spill_interval_s
Id = tuple[str, int]


def ids_of(js: range) -> set[Id]:
    """The ids ``put_many`` gives to its records number ``js``."""
    return {(KEYS[j % len(KEYS)], j // len(KEYS)) for j in js}


def wait_for(cond: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


class FaultyDisk:
    """The ``os`` module as the producer module sees it, with a disk that fills up or breaks:
    ``budget`` bytes left for ``write`` (the write that crosses it is short, the next one
    fails with ``code``), or every ``fsync`` failing with ``code``."""

    def __init__(self) -> None:
        self.budget: int | None = None
        self.fsync_fails = False
        self.code = errno.ENOSPC
        self.failures = 0
        self.short_writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _fail(self) -> OSError:
        self.failures += 1
        return OSError(self.code, os.strerror(self.code))

    def write(self, fd: int, data: Any) -> int:
        if self.budget is None:
            return os.write(fd, data)
        if self.budget == 0:
            raise self._fail()
        n = os.write(fd, data[: self.budget])
        self.short_writes += n < len(data)
        self.budget -= n
        return n

    def fsync(self, fd: int) -> None:
        if self.fsync_fails:
            raise self._fail()
        os.fsync(fd)

    def heal(self) -> None:
        self.budget, self.fsync_fails = None, False


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> FaultyDisk:
    d = FaultyDisk()
    monkeypatch.setattr(spiller_module, "os", d)
    monkeypatch.setattr(spill_module, "os", d)
    return d


def assert_no_torn_record(spill_dir: Path) -> None:
    for f in spill_dir.glob("spill-*.bin"):
        assert read_spill_file(f).damaged == [], f"torn record in {f.name}"


# --- disk errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "how"), [("ENOSPC", "short write"), ("EDQUOT", "write"), ("EIO", "fsync")]
)
def test_a_failing_spill_disk_loses_nothing(
    code: str,
    how: str,
    disk: FaultyDisk,
    proxy: FaultProxy,
    new_stream: Callable[[], str],
    kinesis: Any,
    tmp_path: Path,
) -> None:
    stream = new_stream()
    cfg = dataclasses.replace(FAST, max_buffer_records=200, disk_retry_s=0.2)
    proxy.unreachable = True
    with KinesisProducer(client_for(proxy.url), tmp_path, cfg) as producer:
        # The disk works: 200 records in memory (journaled once the circuit opened), 100 on disk.
        ids = put_many(producer, stream, 300)
        wait_for(lambda: (s := producer.stats()).journaled == 200 and s.spilled == 100)
        disk.code = getattr(errno, code)
        if how == "fsync":
            disk.fsync_fails = True
        else:
            disk.budget = 3000 if how == "short write" else 0
        # The disk fails while Kinesis is down: put neither raises nor loses anything.
        ids |= put_many(producer, stream, 1000, start=300)
        wait_for(lambda: producer.stats().disk_error is not None)
        during = producer.stats()
        assert during.disk_error.startswith(f"{code}: ")
        assert during.problems[0] == f"kinesis spill disk failing: {during.disk_error}"
        assert during.spilled + during.unspilled_records == 1100 and during.unspilled_records
        assert during.dropped == 0
        # A failed write was cut back to the last whole record.
        assert_no_torn_record(tmp_path)
        if how == "short write":
            assert disk.short_writes == 1
        assert not producer.flush(0.5)

        disk.heal()
        wait_for(lambda: (s := producer.stats()).disk_error is None and not s.unspilled_records)
        assert_no_torn_record(tmp_path)
        proxy.unreachable = False
        assert producer.flush(30)
        after = producer.stats()
    got = read_stream(kinesis, stream)
    got.assert_exactly_once(ids)
    assert got.order_violations == 0
    assert after.disk_errors >= 1 and after.dropped == 0 and after.problems == []
    assert after.replayed == after.spilled == 1100
    assert not list(tmp_path.glob("spill-*.bin"))


def test_past_the_memory_cap_records_are_dropped_counted_and_flush_says_so(
    disk: FaultyDisk,
    proxy: FaultProxy,
    new_stream: Callable[[], str],
    kinesis: Any,
    tmp_path: Path,
) -> None:
    stream = new_stream()
    cfg = dataclasses.replace(
        FAST, max_buffer_records=100, max_unspilled_records=300, disk_retry_s=0.2
    )
    proxy.unreachable = True
    disk.budget = 0
    producer = KinesisProducer(client_for(proxy.url), tmp_path, cfg)
    # 100 in memory, 300 waiting for the disk: all the memory the producer may use.
    kept = put_many(producer, stream, 400)
    wait_for(lambda: producer.stats().disk_error is not None)
    put_many(producer, stream, 600, start=400)
    during = producer.stats()
    assert during.put == 1000 and during.dropped == 600
    assert during.dropped_reasons == {"disk_error": 600}
    assert "kinesis producer dropped 600 records (disk_error 600)" in during.problems
    # What the streamer serves on /health and /metrics says so too.
    streamer = Streamer(
        load_settings("local", environ={}),
        StreamerConfig(deadletter_dir=str(tmp_path / "dl"), spill_dir=str(tmp_path)),
        producer=producer,
    )
    health = streamer.health()
    assert health["kinesis"]["dropped_reasons"] == {"disk_error": 600}
    assert health["kinesis"]["disk_error"] == during.disk_error
    assert set(during.problems) <= set(health["reasons"])
    scrape = generate_latest(streamer.metrics.registry).decode()
    assert 'streamer_kinesis_records_dropped_total{reason="disk_error"} 600.0' in scrape
    assert "streamer_kinesis_disk_error 1.0" in scrape

    disk.heal()
    proxy.unreachable = False
    # All that was kept is delivered, and still the producer does not report a clean flush.
    assert not producer.flush(30)
    wait_for(lambda: producer.stats().acknowledged == 400)
    assert not producer.close(10)
    got = read_stream(kinesis, stream)
    got.assert_exactly_once(kept)
    assert got.order_violations == 0


def test_no_disk_io_while_kinesis_takes_everything(disk: FaultyDisk, tmp_path: Path) -> None:
    disk.budget = 0  # any spill write would fail and be counted
    with KinesisProducer(NoopKinesisClient(), tmp_path, FAST) as producer:
        put_many(producer, "s", 2000)
        assert producer.flush(10)
        stats = producer.stats()
    assert disk.failures == 0
    assert stats.journaled == stats.spilled == stats.disk_errors == 0
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


@dataclasses.dataclass
class Child:
    """A producer_child process and what it printed."""

    proc: subprocess.Popen[str]
    puts: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    lines: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, out: IO[str] | None) -> None:
        assert out is not None
        for line in out:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("put "):
                _, n, t = line.split()
                self.puts.append((int(n), float(t)))

    @property
    def n_put(self) -> int:
        return self.puts[-1][0] if self.puts else 0

    def put_by(self, t: float) -> int:
        """How many records ``put`` had accepted by wall time ``t`` (a lower bound)."""
        return max((n for n, tn in self.puts if tn <= t), default=0)

    def value(self, prefix: str) -> str:
        return next(line[len(prefix) + 1 :] for line in self.lines if line.startswith(prefix))

    def finish(self, timeout_s: float = 60) -> None:
        self.proc.wait(timeout_s)
        self._reader.join(5)


def start_child(args: list[str], log: Path, wrap: list[str] | None = None) -> Child:
    cmd = [sys.executable, "-m", "ingest_pipeline_tests.storage.producer_child", *args]
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*(wrap or []), *cmd], cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True
        )
    return Child(proc)


@pytest.mark.skipif(not _unshare_works(), reason="needs unprivileged user namespaces (unshare)")
@pytest.mark.parametrize("cap", [None, 1000])
def test_a_full_tmpfs_loses_nothing_it_accepted(
    cap: int | None,
    proxy: FaultProxy,
    new_stream: Callable[[], str],
    kinesis: Any,
    tmp_path: Path,
) -> None:
    """A real ENOSPC: the child producer's spill dir is a 128 KiB tmpfs mounted in a user and
    mount namespace of its own. Kinesis is down while it puts 4,000 records (~400 KB)."""
    stream = new_stream()
    spill, go = tmp_path / "spill", tmp_path / "go"
    spill.mkdir()
    proxy.unreachable = True
    mount = 'mount -t tmpfs -o size=128k tmpfs "$1" && shift && exec "$@"'
    args = ["--endpoint", proxy.url, "--spill-dir", str(spill), "--stream", stream]
    args += ["--count", "4000", "--rate", "2000", "--max-buffer-records", "200"]
    args += ["--flush-after", str(go)]
    if cap is not None:
        args += ["--max-unspilled-records", str(cap)]
    wrap = ["unshare", "-Urm", "sh", "-c", mount, "sh", str(spill)]
    child = start_child(args, tmp_path / "child.log", wrap)
    wait_for(lambda: child.n_put == 4000 or child.proc.poll() is not None, 30)
    time.sleep(1)  # a few spill rounds against the full disk
    proxy.unreachable = False
    go.touch()
    child.finish()
    assert child.proc.returncode == 0
    stats = orjson.loads(child.value("stats"))
    flushed = child.value("flushed") == "True"
    got = read_stream(kinesis, stream)
    assert got.duplicates == 0 and got.order_violations == 0
    assert stats["disk_errors"] >= 1 and stats["put"] == 4000
    if cap is None:
        # Everything the full disk could not take waited in memory.
        assert flushed and stats["dropped"] == 0
        assert set(got.counts) == ids_of(range(4000))
    else:
        # Past the cap the newest records were dropped: counted, and exactly those are missing.
        assert not flushed and stats["dropped"] > 0
        assert sum(stats["dropped_reasons"].values()) == stats["dropped"]
        assert set(got.counts) == ids_of(range(4000 - stats["dropped"]))


# --- damaged spill files ---------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["cut short", "bit flip"])
def test_a_damaged_record_in_the_middle_loses_only_itself(
    damage: str, aws: EmbeddedAWS, new_stream: Callable[[], str], kinesis: Any, tmp_path: Path
) -> None:
    stream = new_stream()
    blobs = [
        encode_spill_record(stream, k, orjson.dumps({"k": k, "i": i, "p": "x" * 60}))
        for k, i in sorted(ids_of(range(135)), key=lambda ki: (ki[1], KEYS.index(ki[0])))
    ]
    bad = blobs[60]
    blobs[60] = bad[:-7] if damage == "cut short" else bad[:30] + bytes([bad[30] ^ 1]) + bad[31:]
    (tmp_path / "spill-00000000000000000001-000001.bin").write_bytes(b"".join(blobs))
    with KinesisProducer(client_for(aws.endpoint_url), tmp_path, FAST) as producer:
        assert producer.flush(20)
        stats = producer.stats()
    got = read_stream(kinesis, stream)
    got.assert_exactly_once(ids_of(range(135)) - ids_of(range(60, 61)))
    assert got.order_violations == 0
    assert stats.replayed == 134
    assert (stats.spill_damaged_regions, stats.spill_unreadable_bytes) == (1, len(blobs[60]))


def test_reader_resynchronises_after_damage(tmp_path: Path) -> None:
    recs = [("s", f"K{i}", b"{}" * i) for i in range(6)]
    blobs = [encode_spill_record(*r) for r in recs]
    junk = b"\xffKSP garbage that looks like a header"
    path = tmp_path / "f.bin"
    path.write_bytes(blobs[0] + blobs[1][:-1] + blobs[2] + junk + blobs[3] + blobs[4] + b"\0")
    got = read_spill_file(path)
    assert got.records == [recs[0], recs[2], recs[3], recs[4]]
    off1 = len(blobs[0])
    off2 = off1 + len(blobs[1]) - 1 + len(blobs[2])
    assert got.damaged == [
        (off1, len(blobs[1]) - 1),
        (off2, len(junk)),
        (path.stat().st_size - 1, 1),
    ]
    assert got.unreadable_bytes == len(blobs[1]) - 1 + len(junk) + 1


def test_reads_spill_files_written_before_the_framing(tmp_path: Path) -> None:
    recs = [("s", "BTCUSDT", b'{"i":1}'), ("t", "K", b"")]
    legacy = b""
    for stream, key, data in recs:
        body = stream.encode() + key.encode() + data
        legacy += struct.pack(">IHHI", zlib.crc32(body), len(stream), len(key), len(data)) + body
    path = tmp_path / "f.bin"
    path.write_bytes(legacy + b"\x01\x02")
    assert read_spill_file(path) == SpillContents(recs, [(len(legacy), 2)])


# --- crash, fencing, adoption ----------------------------------------------------------------


@pytest.mark.parametrize("outage", ["unreachable", "hanging"])
def test_kill_during_an_outage_loses_at_most_the_crash_window(
    outage: str,
    proxy: FaultProxy,
    aws: EmbeddedAWS,
    new_stream: Callable[[], str],
    kinesis: Any,
    tmp_path: Path,
) -> None:
    """A producer process puts 2,000 records/s while Kinesis is down and is killed -9 after
    ~3 s. Down is unreachable (calls fail at once: the circuit opens), or hanging (Kinesis
    stores the first call and never answers: the circuit stays closed, records only age). A
    replacement in a sibling directory leaves the spill dir alone while its owner lives, adopts
    it once the owner is dead and delivers what it holds."""
    stream = new_stream()
    if outage == "unreachable":
        proxy.unreachable = True
    else:
        proxy.stall_seconds = 60
    args = ["--endpoint", proxy.url, "--spill-dir", str(tmp_path / "run-a"), "--stream", stream]
    args += ["--count", "1000000", "--rate", "2000", "--read-timeout", "60"]
    child = start_child(args, tmp_path / "child.log")
    try:
        wait_for(lambda: child.n_put >= 20, 30)
        cfg = dataclasses.replace(FAST, adopt_interval_s=0.2)
        with KinesisProducer(
            client_for(aws.endpoint_url, PRODUCER_CLIENT_CONFIG),
            tmp_path / "run-b",
            cfg,
            adopt_from=tmp_path,
        ) as heir:
            wait_for(lambda: child.n_put >= 6000, 30)
            # The owner is alive (its lock is held): nothing of its directory is touched.
            assert heir.stats().adopted_dirs == 0
            assert list((tmp_path / "run-a").glob("spill-*.bin"))
            child.proc.send_signal(signal.SIGKILL)
            t_kill = time.time()
            child.finish()
            wait_for(lambda: heir.stats().adopted_dirs == 1)
            assert heir.flush(60)
            stats = heir.stats()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    assert not (tmp_path / "run-a").exists()
    got = read_stream(kinesis, stream)
    # The hanging call was stored by Kinesis, and journaled while it hung: sent twice.
    in_flight = proxy.put_records_batches[0][0] if outage == "hanging" else 0
    assert got.duplicates == in_flight
    if not in_flight:
        assert got.order_violations == 0
    accepted = child.n_put
    delivered = {KEYS.index(k) + 4 * i for k, i in got.counts}
    lost = sorted(set(range(accepted)) - delivered)
    safe = child.put_by(t_kill - CRASH_WINDOW_S)
    # Everything put before the crash window is delivered; what is lost is a tail of the feed.
    assert safe >= 1000 and not [j for j in lost if j < safe]
    assert stats.adopted_files >= 1 and stats.replayed == len(got.counts)
    first_lost_t = min((t for n, t in child.puts if lost and n > lost[0]), default=t_kill)
    print(
        f"\nkill -9 ({outage}) after {accepted} records accepted: {len(lost)} lost, all put in "
        f"the last {t_kill - first_lost_t:.2f} s (documented window {CRASH_WINDOW_S:.1f} s, "
        f"{FAST.spill_interval_s:.1f} s once the outage is detected)"
    )


def test_gate_fences_within_one_call_and_a_successor_delivers_the_rest(
    proxy: FaultProxy, new_stream: Callable[[], str], kinesis: Any, tmp_path: Path
) -> None:
    stream = new_stream()
    answers: list[bool] = []

    def gate() -> bool:
        answers.append(len(answers) < 3)
        return answers[-1]

    # Records are journaled only when fenced (a slow moto would have them journaled by age,
    # then acknowledged, then replayed by the successor: duplicates this test is not about).
    cfg = dataclasses.replace(
        FAST, max_batch_records=100, linger_s=0.5, adopt_interval_s=0.2, spill_after_s=30
    )
    fenced = KinesisProducer(client_for(proxy.url), tmp_path / "run-a", cfg, gate=gate)
    ids = put_many(fenced, stream, 1000)
    assert not fenced.flush(20)
    stats = fenced.stats()
    # Three calls allowed, the fourth refused: nothing sent after the refusal.
    assert answers == [True, True, True, False]
    assert len(proxy.put_records_batches) == 3 and stats.acknowledged == 300
    assert stats.fenced and stats.problems == [
        "kinesis producer fenced (another producer owns the output)"
    ]
    with pytest.raises(ProducerFencedError):
        fenced.put(stream, "BTCUSDT", b"{}")
    # Everything unsent goes to disk, then the fenced producer lets go of its directory while
    # still alive, and a successor adopts and delivers it.
    with KinesisProducer(
        client_for(proxy.url), tmp_path / "run-b", cfg, adopt_from=tmp_path
    ) as successor:
        wait_for(lambda: successor.stats().adopted_dirs == 1)
        assert successor.flush(30)
        assert successor.stats().replayed == 700
    assert not fenced.close(5)
    got = read_stream(kinesis, stream)
    got.assert_exactly_once(ids)
    assert got.order_violations == 0


def test_a_gate_that_raises_delays_but_does_not_fence(
    proxy: FaultProxy, new_stream: Callable[[], str], kinesis: Any, tmp_path: Path
) -> None:
    stream = new_stream()
    calls: list[float] = []

    def gate() -> bool:
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise TimeoutError("lease store unreachable")
        return True

    cfg = dataclasses.replace(FAST, gate_retry_s=0.2)
    with KinesisProducer(client_for(proxy.url), tmp_path, cfg, gate=gate) as producer:
        ids = put_many(producer, stream, 300)
        assert producer.flush(20)
        stats = producer.stats()
    assert not stats.fenced and stats.gate_errors == 2
    assert stats.acknowledged == 300 and stats.retried == 0
    assert len(proxy.put_records_batches) == len(calls) - 2
    got = read_stream(kinesis, stream)
    got.assert_exactly_once(ids)
    assert got.order_violations == 0


@pytest.mark.parametrize("layout", ["per run", "one dir before per-run dirs"])
def test_adopted_records_go_before_those_put_after_the_adoption(
    layout: str, proxy: FaultProxy, new_stream: Callable[[], str], kinesis: Any, tmp_path: Path
) -> None:
    stream = new_stream()
    proxy.unreachable = True
    cfg = dataclasses.replace(FAST, max_buffer_records=100)
    dead = tmp_path / "run-a" if layout == "per run" else tmp_path
    first = KinesisProducer(client_for(proxy.url), dead, cfg)
    ids = put_many(first, stream, 600)
    assert not first.close(1)
    proxy.unreachable = False
    with KinesisProducer(
        client_for(proxy.url), tmp_path / "run-b", FAST, adopt_from=tmp_path
    ) as second:
        ids |= put_many(second, stream, 400, start=600)
        assert second.flush(20)
        stats = second.stats()
    got = read_stream(kinesis, stream)
    got.assert_exactly_once(ids)
    assert got.order_violations == 0
    assert stats.adopted_dirs == 1 and stats.adopted_files >= 2
    assert not list(dead.glob("spill-*.bin")) and not (dead / ".lock").exists()
    assert dead.exists() == (layout != "per run")
    assert not list((tmp_path / "run-b").glob("spill-*.bin"))
