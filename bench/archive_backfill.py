"""Bulk history from the archive: DAYS days (default 30) of one busy symbol (agg_trades + trades
+ klines_1m) from the simulator's archive, end to end into bronze on the embedded moto server,
against
(a) the time REST needs for the same records at Binance's weight limit (6000/min), computed
    from the pages and weights our client sends for each hour, and
(b) bare unzip + gzip of the same archive bytes (zip member inflated, gzip at bronze's level),
and, for reference, (c) the floor the output format sets: gzip (bronze's level) + SHA-256 (the
content fingerprint) of the JSONL that bronze holds for the same hours (more bytes than the
CSV), in the same run; the REST weight spent (the simulator's weight counter) and the
pipeline's peak RSS. Not a test::

    python bench/archive_backfill.py [--days 30] [--trades-per-hour 125000] [--data DIR]
                                     [--parallel] [--phases]

The pipeline is the assets' data path without Dagster: ``HistorySource`` (auto mode, REST on
the simulator) per day, ``BronzeStore.write_hour`` into moto over HTTP, and the trades step
bounding each hour by its aggTrades' coverage in bronze (a HEAD) as the trades asset does.
Setup (not timed): the simulator (its own process) generates the archive files, mirrored to
disk with their CHECKSUM files (``--data`` keeps them for the next run) and served by a static
HTTP server, so the timed run measures our download, verification, parsing, normalization and
bronze write, not the simulator's generation. moto keeps every object in a spooled temp file
(a busy month is ~4 GB of gzip JSONL). CPU seconds of the pipeline's process (all its threads)
are the figure that does not depend on what else the machine runs. ``--phases`` adds a CPU
breakdown of one day by phase; ``--parallel`` a second pass with two daily runs at once (the
``binance`` pool's 2 slots).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from ingest_pipeline.aws import aws_client
from ingest_pipeline.binance.archive import ArchiveClient, daily_file
from ingest_pipeline.binance.archive_csv import parse_hours
from ingest_pipeline.binance.history import HistorySource
from ingest_pipeline.binance.rest import (
    MAX_PAGE,
    WEIGHT_AGG_TRADES,
    WEIGHT_HISTORICAL_TRADES,
    WEIGHT_KLINES,
    BinanceRestClient,
)
from ingest_pipeline.records import AGG_TRADES, TRADES, klines_type
from ingest_pipeline.settings import Settings, load_settings
from ingest_pipeline.standins.moto_server import EmbeddedAWS, free_port
from ingest_pipeline.storage.bronze import (
    DEFAULT_GZIP_LEVEL,
    BronzeStore,
    encode_with_fingerprint,
    prepare_records,
)
from ingest_pipeline.timeutil import HOUR_MS, parse_hour

SYMBOL = "BUSYUSDT"
FIRST_DAY = parse_hour("2024-12-01-00:00")
KLINES_1M = klines_type("1m")
TYPES = (AGG_TRADES, TRADES, KLINES_1M)
WEIGHT_LIMIT = 6000
# Paths of the simulator's REST history endpoints: any weight there is weight spent on history.
HISTORY_PATHS = ("/api/v3/aggTrades", "/api/v3/historicalTrades", "/api/v3/klines")

SIMULATOR = """
import sys
from ingest_pipeline.standins.simulator.basics import SymbolSpec, default_universe
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
busy = SymbolSpec("BUSYUSDT", "BUSY", "USDT", "0.01", "0.00001", 40_000.0, int(sys.argv[2]))
cfg = SimulatorConfig(symbols=[busy, *default_universe()[:1]])
SimulatorServer(cfg, port=int(sys.argv[1])).run_forever()
"""


def day_ms(day: int) -> int:
    return FIRST_DAY + day * 24 * HOUR_MS


def wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def mirror(sim_url: str, root: Path, days: int) -> list[Path]:
    """Every file of the run in ``root`` in the archive's layout; downloaded from the simulator
    unless a previous run left it there with its CHECKSUM."""
    client = ArchiveClient(sim_url, read_timeout_s=300)
    paths = []
    for d in range(days):
        for data_type in TYPES:
            f = daily_file(SYMBOL, data_type, day_ms(d))
            dest, checksum = root / f.path, root / (f.path + ".CHECKSUM")
            if not checksum.exists():
                got = client.fetch(f)
                assert got is not None, f.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(got.path, dest)
                checksum.write_text(f"{got.sha256}  {f.name}\n")
            paths.append(dest)
        print(f"  mirrored day {d + 1}/{days}", file=sys.stderr, flush=True)
    return paths


def rest_weight(hour_counts: dict[str, list[int]]) -> tuple[int, int]:
    """(requests, weight) our REST client sends for the same hours (see rest.py's pagers)."""
    requests_ = weight = 0
    for n in hour_counts[AGG_TRADES]:
        pages = n // MAX_PAGE + 1  # time-bounded first page, then fromId pages to a short one
        requests_ += pages
        weight += pages * WEIGHT_AGG_TRADES
    for n in hour_counts[TRADES]:
        pages = math.ceil(n / MAX_PAGE)
        requests_ += pages
        weight += pages * WEIGHT_HISTORICAL_TRADES
    for n in hour_counts[KLINES_1M]:
        pages = max(1, math.ceil(n / MAX_PAGE))
        requests_ += pages
        weight += pages * WEIGHT_KLINES
    return requests_, weight


def peak_rss_mib() -> float:
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1024


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def end_to_end(settings: Settings, archive_url: str, sim_url: str, days: list[int]) -> dict:
    """The timed pipeline over some days, in its own process so that its peak RSS is its own."""
    s3 = aws_client("s3", settings)
    store = BronzeStore(s3, settings.bucket, settings.bronze_prefix)
    counts: dict[str, list[int]] = {t: [] for t in TYPES}
    sources: Counter[str] = Counter()
    archive_bytes = 0
    c0, t0 = cpu_s(), time.perf_counter()
    for n, day in enumerate(days):
        hours = [day_ms(day) + i * HOUR_MS for i in range(24)]
        # One run per day and symbol, as a backfill cuts them: its own work dir and source.
        with tempfile.TemporaryDirectory(prefix="archive-run-") as work:
            archive = ArchiveClient(archive_url, read_timeout_s=120, work_dir=work)
            source = HistorySource(BinanceRestClient(sim_url), archive, "auto")
            steps = (
                (AGG_TRADES, source.agg_trades(SYMBOL, hours)),
                # The trades asset bounds each hour by its aggTrades in bronze (a HEAD).
                (TRADES, source.trades(SYMBOL, hours, trade_bounds(store))),
                (KLINES_1M, source.klines(SYMBOL, "1m", hours)),
            )
            for data_type, fetches in steps:
                for got in fetches:
                    assert not got.fetched.rejects, got.fetched.rejects[:1]
                    store.write_hour(SYMBOL, data_type, got.hour, got.fetched.records)
                    counts[data_type].append(len(got.fetched.records))
                    sources[got.source] += 1
            source.close()
            archive_bytes += archive.stats.bytes
        print(
            f"  bronze day {n + 1}/{len(days)}: {time.perf_counter() - t0:.0f} s", file=sys.stderr
        )
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": cpu_s() - c0,
        "counts": counts,
        "sources": dict(sources),
        "archive_bytes": archive_bytes,
        "peak_rss_mib": peak_rss_mib(),
    }


def trade_bounds(store: BronzeStore) -> Callable[[int], tuple[int, int] | None]:
    def bounds_of(hour: int) -> tuple[int, int] | None:
        coverage = store.trade_coverage(SYMBOL, hour)
        assert coverage is not None, hour
        return coverage.bounds

    return bounds_of


def pipeline(settings: Settings, archive_url: str, sim_url: str, days: int, workers: int) -> dict:
    """Days split over ``workers`` processes, as a backfill runs that many daily runs at once;
    wall time of the whole, CPU summed, the highest peak RSS."""
    t0 = time.perf_counter()
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                settings.aws_endpoint_url or "",
                archive_url,
                sim_url,
                ",".join(str(d) for d in range(w, days, workers)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for w in range(min(workers, days))
    ]
    results = []
    for child in children:
        out, _ = child.communicate()
        assert child.returncode == 0, out
        results.append(json.loads(out.strip().splitlines()[-1]))
    merged: dict[str, Any] = {
        "seconds": time.perf_counter() - t0,
        "counts": {t: [n for r in results for n in r["counts"][t]] for t in TYPES},
        "sources": sum((Counter(r["sources"]) for r in results), Counter()),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
    }
    for key in ("archive_bytes", "cpu_seconds"):
        merged[key] = sum(r[key] for r in results)
    return merged


def bare_unzip_gzip(paths: list[Path]) -> tuple[float, float, int]:
    """(wall, CPU) seconds to inflate every zip member and gzip it at bronze's level, and the
    CSV bytes inflated."""
    t0, c0 = time.perf_counter(), cpu_s()
    csv_bytes = 0
    for path in paths:
        with zipfile.ZipFile(path) as z, z.open(z.infolist()[0]) as member:
            comp = zlib.compressobj(DEFAULT_GZIP_LEVEL, zlib.DEFLATED, 31)
            while chunk := member.read(8 << 20):
                csv_bytes += len(chunk)
                comp.compress(chunk)
            comp.flush()
    return time.perf_counter() - t0, cpu_s() - c0, csv_bytes


def format_floor(settings: Settings) -> tuple[float, int]:
    """(CPU seconds, JSONL bytes) of gzip + SHA-256 over every bronze object's JSONL: what any
    writer of this format pays whatever it reads. Reading the objects back is not timed."""
    s3 = aws_client("s3", settings)
    cpu = 0.0
    jsonl_bytes = 0
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=settings.bucket, Prefix=f"{settings.bronze_prefix}/{SYMBOL}/"
    )
    for page in pages:
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=settings.bucket, Key=obj["Key"])["Body"].read()
            jsonl = zlib.decompress(body, 47)
            del body
            jsonl_bytes += len(jsonl)
            c0 = cpu_s()
            zlib.compress(jsonl, DEFAULT_GZIP_LEVEL, wbits=31)
            hashlib.sha256(jsonl).digest()
            cpu += cpu_s() - c0
    return cpu, jsonl_bytes


def phases(settings: Settings, archive_url: str) -> dict[str, float]:
    """CPU seconds of day 0's aggTrades and trades files by phase, each phase run alone."""
    s3 = aws_client("s3", settings)
    out: Counter[str] = Counter()

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        c = cpu_s()
        yield
        out[name] += cpu_s() - c

    for data_type in (AGG_TRADES, TRADES):
        f = daily_file(SYMBOL, data_type, day_ms(0))
        with tempfile.TemporaryDirectory() as work:
            client = ArchiveClient(archive_url, read_timeout_s=120, work_dir=work)
            with timed("download + checksum"):
                got = client.fetch(f)
            assert got is not None
            with timed("unzip"), zipfile.ZipFile(got.path) as z, z.open(z.infolist()[0]) as m:
                while m.read(8 << 20):
                    pass
            with timed("unzip + JSON lines"):
                hours = list(parse_hours(got.path, data_type, SYMBOL, 1))
        for h in hours:
            with timed("prepare (order check)"):
                ordered, _ = prepare_records(h.records, data_type, h.hour, SYMBOL)
            with timed("fingerprint + gzip"):
                body, _ = encode_with_fingerprint(ordered)
            jsonl = zlib.decompress(body, 47)
            with timed("  of which gzip alone"):
                zlib.compress(jsonl, DEFAULT_GZIP_LEVEL, wbits=31)
            with timed("  of which sha256 alone"):
                hashlib.sha256(jsonl).digest()
            out["(JSONL MB)"] += len(jsonl) / 1e6
            with timed("S3 put"):
                s3.put_object(
                    Bucket=settings.bucket,
                    Key=f"phases/{data_type}/{h.hour}",
                    Body=body,
                    ChecksumAlgorithm="CRC32",
                )
        del hours
    out["CSV -> JSON lines by hour (compiled writer)"] = (
        out.pop("unzip + JSON lines") - out["unzip"]
    )
    return dict(out)


def child() -> None:
    endpoint, archive_url, sim_url, days = sys.argv[2:6]
    settings = dataclasses.replace(load_settings("local", environ={}), aws_endpoint_url=endpoint)
    print(json.dumps(end_to_end(settings, archive_url, sim_url, [int(d) for d in days.split(",")])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--trades-per-hour", type=int, default=125_000)
    ap.add_argument("--data", type=Path, help="keep the mirrored archive here (reused next run)")
    ap.add_argument("--parallel", action="store_true", help="also two daily runs at once")
    ap.add_argument("--phases", action="store_true", help="also a CPU breakdown of day 0")
    args = ap.parse_args()
    days = args.days
    sim_port, mirror_port = free_port(), free_port()
    sim_url, mirror_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{mirror_port}"
    root = args.data or Path(tempfile.mkdtemp(prefix="archive-bench-"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SIMULATOR, str(sim_port), str(args.trades_per_hour)],
            stdout=subprocess.DEVNULL,
        )
    ]
    # moto spools every object over 1 byte to a temp file instead of holding it in memory.
    os.environ["MOTO_S3_DEFAULT_KEY_BUFFER_SIZE"] = "1"
    aws = EmbeddedAWS(load_settings("local", environ={}))
    try:
        wait_up(f"{sim_url}/api/v3/ping")
        t = time.perf_counter()
        paths = mirror(sim_url, root, days)
        print(f"setup: {days} days mirrored in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "http.server",
                    str(mirror_port),
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    str(root),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        )
        wait_up(mirror_url)
        settings = aws.start().settings
        before = requests.get(f"{sim_url}/_sim/stats", timeout=5).json()
        result = pipeline(settings, mirror_url, sim_url, days, 1)
        after = requests.get(f"{sim_url}/_sim/stats", timeout=5).json()
        parallel = pipeline(settings, mirror_url, sim_url, days, 2) if args.parallel else None
        bare_s, bare_cpu, csv_bytes = bare_unzip_gzip(paths)
        floor_cpu, jsonl_bytes = format_floor(settings)
        phase_cpu = phases(settings, mirror_url) if args.phases else None
    finally:
        aws.stop()
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        if args.data is None:
            shutil.rmtree(root, ignore_errors=True)

    history_requests = {
        p: after["by_path"].get(p, 0) - before["by_path"].get(p, 0) for p in HISTORY_PATHS
    }
    counts = result["counts"]
    n_req, weight = rest_weight(counts)
    rest_s = weight / WEIGHT_LIMIT * 60
    records = {t: sum(c) for t, c in counts.items()}
    ours, cpu = result["seconds"], result["cpu_seconds"]
    lines = [
        f"{days} days of {SYMBOL} ({args.trades_per_hour:,} trades/h):",
        f"  records: {records}; hours by source: {dict(result['sources'])}",
        f"  archive {result['archive_bytes'] / 1e6:,.0f} MB downloaded, "
        f"{sum(len(c) for c in counts.values())} hourly objects in bronze (moto)",
        f"  ours, archive -> bronze:      {ours:8.1f} s wall, {cpu:7.1f} s CPU "
        f"({cpu / days:.1f} s/day), peak RSS {result['peak_rss_mib']:.0f} MiB",
        f"  (a) REST at 6000 weight/min:  {rest_s:8.1f} s  ({n_req:,} requests, {weight:,} weight)",
        f"  (b) bare unzip + gzip:        {bare_s:8.1f} s wall, {bare_cpu:7.1f} s CPU",
        f"  (c) gzip + SHA-256 of bronze's JSONL:         {floor_cpu:7.1f} s CPU "
        f"(JSONL {jsonl_bytes / 1e6:,.0f} MB = {jsonl_bytes / csv_bytes:.2f}x the CSV's "
        f"{csv_bytes / 1e6:,.0f} MB)",
        f"  (a)/ours: {rest_s / ours:.0f}x on wall, {rest_s / cpu:.0f}x on CPU;  "
        f"ours/(b): {ours / bare_s:.2f} on wall, {cpu / bare_cpu:.2f} on CPU;  "
        f"(c)/(b): {floor_cpu / bare_cpu:.2f} on CPU",
        f"  REST weight spent during the run: {after['weight'] - before['weight']} "
        f"(history requests {history_requests})",
    ]
    if parallel is not None:
        lines.append(
            f"  two daily runs at once: {parallel['seconds']:.1f} s wall, "
            f"{parallel['cpu_seconds']:.1f} s CPU, (a)/that {rest_s / parallel['seconds']:.0f}x, "
            f"peak RSS per run {parallel['peak_rss_mib']:.0f} MiB"
        )
    if phase_cpu is not None:
        lines.append("  CPU by phase, day 0 aggTrades + trades (each phase alone):")
        lines += [f"    {k:28} {v:7.2f}" for k, v in phase_cpu.items()]
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child()
    else:
        main()
    os._exit(0)
