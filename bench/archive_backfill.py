"""Bulk history from the archive: DAYS days of one busy symbol (agg_trades + trades + klines_1m)
from the simulator's archive, end to end into bronze, against
(a) the time REST needs for the same records at Binance's weight limit (6000/min), computed
    from the pages and weights our client sends for each hour, and
(b) bare unzip + gzip of the same archive bytes (zip member inflated, gzip level of bronze),
in the same run. Not a test: ``python bench/archive_backfill.py [DAYS] [TRADES_PER_HOUR]``.

Setup (not timed): the simulator (its own process) generates the archive files once; they are
mirrored to disk with their CHECKSUM files and served by a plain static HTTP server, so the
timed run measures our download, verification, parsing, normalization and bronze write, not
the simulator's generation. Bronze objects go through the real write path (sort/dedup checks,
JSON, gzip, fingerprint) into an S3 stand-in that keeps only sizes: 30 busy days are ~4 GB of
gzip JSONL, more than an in-memory emulator should hold. Peak RSS of the timed run is read
from its own process (VmHWM).
"""

from __future__ import annotations

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
from pathlib import Path
from typing import Any

from ingest_pipeline.binance.archive import ArchiveClient, daily_file
from ingest_pipeline.binance.history import HistorySource
from ingest_pipeline.binance.rest import (
    MAX_PAGE,
    WEIGHT_AGG_TRADES,
    WEIGHT_HISTORICAL_TRADES,
    WEIGHT_KLINES,
    BinanceRestClient,
)
from ingest_pipeline.records import AGG_TRADES, TRADES, klines_type
from ingest_pipeline.standins.moto_server import free_port
from ingest_pipeline.storage.bronze import DEFAULT_GZIP_LEVEL, BronzeStore
from ingest_pipeline.timeutil import HOUR_MS, parse_hour

SYMBOL = "BUSYUSDT"
FIRST_DAY = parse_hour("2024-12-01-00:00")
TYPES = (AGG_TRADES, TRADES, klines_type("1m"))
WEIGHT_LIMIT = 6000

SIMULATOR = """
import sys
from ingest_pipeline.standins.simulator.basics import SymbolSpec, default_universe
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
busy = SymbolSpec("BUSYUSDT", "BUSY", "USDT", "0.01", "0.00001", 40_000.0, int(sys.argv[2]))
cfg = SimulatorConfig(symbols=[busy, *default_universe()[:1]])
SimulatorServer(cfg, port=int(sys.argv[1])).run_forever()
"""


class SizeOnlyS3:
    """The few S3 calls BronzeStore makes, keeping object sizes only (no object exists twice)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.objects = 0

    def head_object(self, **_: Any) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "404"}, "ResponseMetadata": {}}, "HeadObject")

    def put_object(self, Body: bytes, **_: Any) -> dict[str, Any]:
        self.bytes += len(Body)
        self.objects += 1
        return {}


def wait_up(url: str, timeout: float = 60) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def mirror(sim_url: str, root: Path, days: int) -> list[Path]:
    """Download every file once from the simulator into ``root`` in the archive's layout."""
    client = ArchiveClient(sim_url, read_timeout_s=300)
    paths = []
    for d in range(days):
        for data_type in TYPES:
            f = daily_file(SYMBOL, data_type, FIRST_DAY + d * 24 * HOUR_MS)
            got = client.fetch(f)
            assert got is not None, f.path
            dest = root / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(got.path, dest)
            (root / (f.path + ".CHECKSUM")).write_text(f"{got.sha256}  {f.name}\n")
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
    for n in hour_counts[klines_type("1m")]:
        pages = max(1, math.ceil(n / MAX_PAGE))
        requests_ += pages
        weight += pages * WEIGHT_KLINES
    return requests_, weight


def end_to_end(archive_url: str, sim_url: str, day_numbers: list[int]) -> dict[str, Any]:
    """The timed pipeline over some days, in its own process so that its peak RSS is its own."""
    s3 = SizeOnlyS3()
    store = BronzeStore(s3, "bench", "bronze")
    archive = ArchiveClient(archive_url, read_timeout_s=120)
    source = HistorySource(BinanceRestClient(sim_url), archive, "auto")
    counts: dict[str, list[int]] = {t: [] for t in TYPES}
    sources: dict[str, int] = {}
    # The trades of an hour are bounded by its aggTrades: keep the last day's ids only.
    bounds: dict[int, list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    for n, day in enumerate(day_numbers):
        day_hours = [FIRST_DAY + (day * 24 + i) * HOUR_MS for i in range(24)]
        bounds.clear()
        for got in source.agg_trades(SYMBOL, day_hours):
            store.write_hour(SYMBOL, AGG_TRADES, got.hour, got.fetched.records)
            counts[AGG_TRADES].append(len(got.fetched.records))
            recs = got.fetched.records
            bounds[got.hour] = [recs[0], recs[-1]] if recs else []
            sources[got.source] = sources.get(got.source, 0) + 1
        for got in source.trades(SYMBOL, day_hours, bounds.__getitem__):
            store.write_hour(SYMBOL, TRADES, got.hour, got.fetched.records)
            counts[TRADES].append(len(got.fetched.records))
            sources[got.source] = sources.get(got.source, 0) + 1
        for got in source.klines(SYMBOL, "1m", day_hours):
            store.write_hour(SYMBOL, klines_type("1m"), got.hour, got.fetched.records)
            counts[klines_type("1m")].append(len(got.fetched.records))
            sources[got.source] = sources.get(got.source, 0) + 1
        print(f"  bronze day {n + 1}/{len(day_numbers)}: {time.perf_counter() - t0:.1f} s")
    source.close()
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    status = Path("/proc/self/status").read_text().splitlines()
    hwm_kib = int(next(line for line in status if line.startswith("VmHWM")).split()[1])
    return {
        "seconds": seconds,
        # CPU of this process (all its threads): what the work costs, whatever else the
        # machine runs at the same time.
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "counts": counts,
        "sources": sources,
        "bronze_bytes": s3.bytes,
        "objects": s3.objects,
        "archive_bytes": archive.stats.bytes,
        "peak_rss_mib": hwm_kib / 1024,
    }


def pipeline(archive_url: str, sim_url: str, days: int, workers: int) -> dict[str, Any]:
    """Days split over ``workers`` processes, as a backfill runs that many daily runs at once
    (the ``binance`` pool's 2 slots); wall time of the whole, the highest peak RSS."""
    t0 = time.perf_counter()
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
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
        "sources": {},
        "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
    }
    for key in ("bronze_bytes", "objects", "archive_bytes", "cpu_seconds"):
        merged[key] = sum(r[key] for r in results)
    for r in results:
        for k, v in r["sources"].items():
            merged["sources"][k] = merged["sources"].get(k, 0) + v
    return merged


def bare_unzip_gzip(paths: list[Path]) -> tuple[float, float]:
    """(wall, CPU) seconds to inflate every zip member and gzip it at bronze's level."""
    t0, c0 = time.perf_counter(), time.process_time()
    total = 0
    for path in paths:
        with zipfile.ZipFile(path) as z, z.open(z.infolist()[0]) as member:
            comp = zlib.compressobj(DEFAULT_GZIP_LEVEL, zlib.DEFLATED, 31)
            while chunk := member.read(8 << 20):
                total += len(comp.compress(chunk))
            total += len(comp.flush())
    return time.perf_counter() - t0, time.process_time() - c0


def main(days: int, trades_per_hour: int) -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        days = [int(d) for d in sys.argv[4].split(",")]
        print(json.dumps(end_to_end(sys.argv[2], sys.argv[3], days)))
        return
    sim_port, mirror_port = free_port(), free_port()
    sim_url, mirror_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{mirror_port}"
    root = Path(tempfile.mkdtemp(prefix="archive-bench-"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SIMULATOR, str(sim_port), str(trades_per_hour)],
            stdout=subprocess.DEVNULL,
        )
    ]
    try:
        wait_up(f"{sim_url}/api/v3/ping")
        t = time.perf_counter()
        paths = mirror(sim_url, root, days)
        setup_s = time.perf_counter() - t
        print(f"setup: simulator generated {days} days in {setup_s:.0f} s", file=sys.stderr)
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
        import requests

        weight_before = requests.get(f"{sim_url}/_sim/stats", timeout=5).json()["weight"]
        result = pipeline(mirror_url, sim_url, days, 1)
        parallel = pipeline(mirror_url, sim_url, days, 2) if days > 1 else result
        weight_after = requests.get(f"{sim_url}/_sim/stats", timeout=5).json()["weight"]
        weight_spent = weight_after - weight_before
        bare_s, bare_cpu = bare_unzip_gzip(paths)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)

    counts = result["counts"]
    n_req, weight = rest_weight(counts)
    rest_s = weight / WEIGHT_LIMIT * 60
    records = {t: sum(c) for t, c in counts.items()}
    ours = result["seconds"]
    cpu = result["cpu_seconds"]
    mb_in, mb_out = result["archive_bytes"] / 1e6, result["bronze_bytes"] / 1e6
    lines = [
        f"{days} days of {SYMBOL} ({trades_per_hour:,} trades/h):",
        f"  records: {records}; hours by source: {result['sources']}",
        f"  archive {mb_in:,.0f} MB -> bronze {mb_out:,.0f} MB in {result['objects']} objects",
        f"  ours, archive -> bronze:      {ours:8.1f} s  peak RSS {result['peak_rss_mib']:.0f} MiB",
        f"  (a) REST at 6000 weight/min:  {rest_s:8.1f} s  ({n_req:,} requests, {weight:,} weight)",
        f"  (b) bare unzip + gzip:        {bare_s:8.1f} s",
        f"  (a)/ours: {rest_s / ours:.0f}x   ours/(b): {ours / bare_s:.2f}   "
        f"REST weight spent: {weight_spent}",
        f"  CPU seconds (load-independent): ours {cpu:.1f}, (b) {bare_cpu:.1f}; "
        f"(a)/ours {rest_s / cpu:.0f}x, ours/(b) {cpu / bare_cpu:.2f}",
        f"  two daily runs at once (the binance pool's 2 slots): {parallel['seconds']:.1f} s, "
        f"(a)/that: {rest_s / parallel['seconds']:.0f}x, peak RSS per run "
        f"{parallel['peak_rss_mib']:.0f} MiB",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        main(0, 0)
    else:
        main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 30,
            int(sys.argv[2]) if len(sys.argv) > 2 else 125_000,
        )
    os._exit(0)
