"""Kinesis shard sizing from measured message rates (docs/deployment.md, "Kinesis shards").

Reads real Binance captures (``data/binance-capture/``: ``<receive ns> <raw JSON>``
per line), normalizes each WebSocket message the way the streamer does, and measures what the
producer would send to each stream: records per second and bytes per second (Kinesis counts the
data blob plus the partition key, here the symbol). Peaks are per-second maxima of the receive
time, all captured symbols together.

A shard takes at most 1 MiB/s or 1,000 records/s in (PutRecords). The streamer puts one
Kinesis record per message (no aggregation), so small messages hit the record limit first.

    .venv/bin/python deploy/shard_sizing.py [CAPTURE_DIR] [--symbols N]
"""

from __future__ import annotations

import argparse
import gzip
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from ingest_pipeline.binance.normalize import parse_ws_message
from ingest_pipeline.capture_loader import CAPTURES_DIR
from ingest_pipeline.records import BBA, DEPTH_DELTA, TRADE, MalformedPayload

SHARD_RECORDS_PER_S = 1000
SHARD_BYTES_PER_S = 1024 * 1024
# Provision for this fraction of a shard's limits: bursts inside a second and retries of
# failed entries must fit.
TARGET_UTILIZATION = 0.5
STREAM_TYPES = (TRADE, BBA, DEPTH_DELTA)
_SNAPSHOT_PREFIX = b'{"lastUpdateId"'


@dataclass(frozen=True)
class StreamRate:
    """What one Kinesis stream would receive, measured over a capture."""

    data_type: str
    symbols: int
    records: int
    payload_bytes: int  # data blob plus partition key, summed
    seconds: float
    p99_records_per_s: float
    peak_records_per_s: int
    peak_bytes_per_s: int

    @property
    def bytes_per_record(self) -> float:
        return self.payload_bytes / self.records if self.records else 0.0

    @property
    def mean_records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    def shards(self, symbols: int | None = None, utilization: float = TARGET_UTILIZATION) -> int:
        """Shards for ``symbols`` symbols like the captured ones (default: as captured)."""
        scale = (symbols or self.symbols) / self.symbols
        return shards_needed(
            self.peak_records_per_s * scale, self.peak_bytes_per_s * scale, utilization
        )


def shards_needed(
    records_per_s: float, bytes_per_s: float, utilization: float = TARGET_UTILIZATION
) -> int:
    """Shards so that both per-shard write limits hold at ``utilization`` of their value."""
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], got {utilization}")
    by_records = records_per_s / (SHARD_RECORDS_PER_S * utilization)
    by_bytes = bytes_per_s / (SHARD_BYTES_PER_S * utilization)
    return max(1, math.ceil(max(by_records, by_bytes)))


def capture_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.gz") if "_" in p.name)


def measure(paths: Iterable[Path]) -> dict[str, StreamRate]:
    """Per stream type: records, bytes and per-second rates of every file together."""
    per_second: dict[str, Counter[int]] = {t: Counter() for t in STREAM_TYPES}
    bytes_per_second: dict[str, Counter[int]] = {t: Counter() for t in STREAM_TYPES}
    span: dict[str, list[int]] = defaultdict(list)
    symbols: set[str] = set()
    for path in paths:
        symbols.add(path.name.split("_")[0])
        with gzip.open(path, "rb") as fh:
            for line in fh:
                ns, _, payload = line.rstrip(b"\n").partition(b" ")
                if not payload or payload.startswith(_SNAPSHOT_PREFIX):
                    continue  # REST snapshots do not go through Kinesis
                try:
                    recv_ns = int(ns)
                    data_type, record = parse_ws_message(payload, recv_ns // 1_000_000)
                except (MalformedPayload, ValueError):
                    continue
                if data_type not in per_second:
                    continue
                # What the producer sends: orjson of the record, partition key = symbol.
                size = len(orjson.dumps(record)) + len(record["symbol"])
                second = recv_ns // 1_000_000_000
                per_second[data_type][second] += 1
                bytes_per_second[data_type][second] += size
                span[data_type].append(second)
    rates = {}
    for t in STREAM_TYPES:
        counts = per_second[t]
        if not counts:
            continue
        seconds = max(counts) - min(counts) + 1
        # Seconds without a message count as zeros for the percentile.
        series = sorted(counts.values()) + [0] * (seconds - len(counts))
        series.sort()
        rates[t] = StreamRate(
            data_type=t,
            symbols=len(symbols),
            records=sum(counts.values()),
            payload_bytes=sum(bytes_per_second[t].values()),
            seconds=float(seconds),
            p99_records_per_s=float(series[min(len(series) - 1, int(0.99 * len(series)))]),
            peak_records_per_s=max(counts.values()),
            peak_bytes_per_s=max(bytes_per_second[t].values()),
        )
    return rates


def table(rates: dict[str, StreamRate], symbols: Sequence[int] = (2, 5, 50)) -> str:
    head = (
        "| stream | bytes/record | mean rec/s | p99 rec/s | peak rec/s | peak KiB/s | "
        + " | ".join(f"shards, {n} symbols" for n in symbols)
        + " |"
    )
    rule = "|" + "---|" * (6 + len(symbols))
    rows = [
        f"| {r.data_type} | {r.bytes_per_record:.0f} | {r.mean_records_per_s:.1f} | "
        f"{r.p99_records_per_s:.0f} | {r.peak_records_per_s} | {r.peak_bytes_per_s / 1024:.1f} | "
        + " | ".join(str(r.shards(n)) for n in symbols)
        + " |"
        for r in rates.values()
    ]
    return "\n".join([head, rule, *rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("capture_dir", nargs="?", type=Path, default=CAPTURES_DIR)
    parser.add_argument("--symbols", type=int, nargs="*", default=[2, 5, 50])
    args = parser.parse_args(argv)
    files = capture_files(args.capture_dir)
    if not files:
        print(f"no captures in {args.capture_dir}", file=sys.stderr)
        return 1
    rates = measure(files)
    span = max(r.seconds for r in rates.values())
    print(f"{len(files)} capture files, {span / 3600:.1f} h of receive time")
    print(table(rates, args.symbols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
