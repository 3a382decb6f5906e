"""Real Binance captures -> bronze, so silver can be built on real market data.

Reads the hftbacktest-format captures of ``data/binance-capture/`` (README there):
gzip text, one line per message, ``<local receive time, ns> <raw JSON>``, where the JSON is a
combined-stream message (``<symbol>@trade``, ``@bookTicker``, ``@depth@100ms``) or a bare REST
depth snapshot (the symbol is the file's: ``btcusdt_20240809.gz`` -> ``BTCUSDT``).

Records are normalized with :mod:`ingest_pipeline.binance.normalize` into the stream-archive
types (``trade``, ``bba``, ``depth_delta``) and ``depth_snapshot``, and placed in hours the way
every bronze writer places them (SPEC §2-§3): trades by trade time ``T``, depth diffs by
exchange time ``E``, BBAs by receive time (spot bookTicker has no exchange time), snapshots by
``timestamp``. The recorder kept no server time for the snapshot, so its ``timestamp`` is the
receive time (the recorder's clock runs ~1.27 s behind exchange time: a snapshot looks slightly
older than it is, which only delays the book sync by a diff or two).

The files of one symbol are one session split at midnight of the *receive* time, so a record
of one event hour can sit in either file: everything is grouped first, then each
(symbol, type, hour) is written as one bronze object through :class:`BronzeStore` (sorted,
deduplicated, idempotent). Malformed lines are counted and kept aside with their reason
(dead-letter), never dropped silently.

Coverage: a capture covers only the time it was recording. For each symbol and stream type the
covered span is ``[first record time, last record time + 1 ms)`` in that type's own clock, over
all files loaded (one session); each hour's object records its part of it (``coverage``
metadata, see ``storage.bronze``), and every hour of the span gets an object, an empty one
where the stream had nothing. The span is measured from the records themselves, so it can only
understate the session (a quiet start or end counts as not covered), never overstate it.
Snapshots are points in time and carry no coverage.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

from ingest_pipeline.binance.normalize import (
    CONTROL,
    SERVER_SHUTDOWN,
    depth_snapshot_from_rest,
    parse_ws_message,
)
from ingest_pipeline.records import (
    DEPTH_SNAPSHOT,
    REGISTRY,
    STREAMED,
    MalformedPayload,
    Record,
    time_field,
)
from ingest_pipeline.spans import Span, clip
from ingest_pipeline.storage.bronze import BronzeStore, WriteResult
from ingest_pipeline.timeutil import HOUR_MS, floor_hour

# The real captures kept in the repository (provenance and checksums in its README).
CAPTURES_DIR = Path(__file__).resolve().parents[1] / "data" / "binance-capture"

# A capture records what the streamer puts on Kinesis: the WebSocket streams and the depth
# snapshots taken beside them.
CAPTURE_TYPES = tuple(t.name for t in REGISTRY if t.route is not None)
# Stream types: recorded continuously, so the capture covers a span of their time.
STREAM_TYPES = tuple(t.name for t in STREAMED)
# hftbacktest captures: <symbol>_<YYYYMMDD>.gz
CAPTURE_FILE = re.compile(r"^([a-z0-9]+)_(\d{8})\.gz$")
_SNAPSHOT_PREFIX = b'{"lastUpdateId"'

# (symbol, data_type, hour_ms, rejects) -> where they were kept
RejectWriter = Callable[[str, str, int, Sequence[dict[str, Any]]], str]


def capture_files(path: Path, symbols: Iterable[str] | None = None) -> list[Path]:
    """The capture files under ``path`` (a file or a directory), optionally of some symbols."""
    wanted = {s.lower() for s in symbols} if symbols else None
    candidates = [path] if path.is_file() else sorted(path.iterdir())
    out = []
    for p in candidates:
        m = CAPTURE_FILE.match(p.name)
        if m and (wanted is None or m.group(1) in wanted):
            out.append(p)
    if not out:
        raise FileNotFoundError(f"no <symbol>_<YYYYMMDD>.gz capture files at {path}")
    return out


@dataclass
class ParsedCapture:
    """Records grouped by (symbol, data_type, hour) and rejected lines by (symbol, hour)."""

    records: dict[tuple[str, str, int], list[Record]] = field(
        default_factory=lambda: defaultdict(list)
    )
    rejects: dict[tuple[str, int], list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    lines: int = 0
    control: int = 0
    # (symbol, data_type) -> [first, last] record time of the stream types
    bounds: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def coverage(self, symbol: str, data_type: str) -> Span | None:
        """The covered span of a stream type, ``[first, last + 1)``; None for snapshots."""
        b = self.bounds.get((symbol, data_type))
        return None if b is None else (b[0], b[1] + 1)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with gzip.open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip(b"\n")
            if line:
                yield n, line


def parse_capture(paths: Sequence[Path]) -> ParsedCapture:
    """Normalize every line of ``paths`` and group the records by symbol, type and hour."""
    out = ParsedCapture()
    for path in paths:
        file_symbol = CAPTURE_FILE.match(path.name).group(1).upper()  # type: ignore[union-attr]
        for n, line in _lines(path):
            out.lines += 1
            ns, _, payload = line.partition(b" ")
            try:
                recv_ms = int(ns) // 1_000_000
            except ValueError:
                out.rejects[(file_symbol, 0)].append(
                    {
                        "reason": f"{path.name}:{n}: no receive time",
                        "raw": line.decode(errors="replace"),
                    }
                )
                continue
            try:
                if payload.startswith(_SNAPSHOT_PREFIX):
                    raw = orjson.loads(payload)
                    data_type = DEPTH_SNAPSHOT
                    record = cast(
                        Record, depth_snapshot_from_rest(raw, file_symbol, recv_ms, recv_ms)
                    )
                else:
                    data_type, record = parse_ws_message(payload, recv_ms)
            except (MalformedPayload, ValueError) as exc:
                reason = getattr(exc, "reason", str(exc))
                out.rejects[(file_symbol, floor_hour(recv_ms))].append(
                    {
                        "reason": f"{path.name}:{n}: {reason}",
                        "raw": payload.decode(errors="replace"),
                    }
                )
                continue
            if data_type in (CONTROL, SERVER_SHUTDOWN):
                out.control += 1
                continue
            if data_type not in CAPTURE_TYPES:
                out.rejects[(file_symbol, floor_hour(recv_ms))].append(
                    {"reason": f"{path.name}:{n}: unexpected type {data_type}", "raw": record}
                )
                continue
            t = record[time_field(data_type)]
            out.records[(record["symbol"], data_type, floor_hour(t))].append(record)
            if data_type in STREAM_TYPES:
                b = out.bounds.setdefault((record["symbol"], data_type), [t, t])
                b[0], b[1] = min(b[0], t), max(b[1], t)
    return out


def _every_covered_hour(parsed: ParsedCapture) -> dict[tuple[str, str, int], list[Record]]:
    """The records by object, plus an empty object for every hour of a stream's span that
    holds none of its records (covered, and nothing happened)."""
    out = dict(parsed.records)
    for (symbol, data_type), (first, last) in parsed.bounds.items():
        for hour in range(floor_hour(first), last + 1, HOUR_MS):
            out.setdefault((symbol, data_type, hour), [])
    return out


@dataclass
class LoadSummary:
    written: list[WriteResult]
    objects: dict[tuple[str, str, int], int]
    rejected: int
    lines: int
    rejects_at: list[str] = field(default_factory=list)

    def hours(self) -> list[int]:
        return sorted({h for _, _, h in self.objects})

    def counts(self) -> Counter[tuple[str, str]]:
        c: Counter[tuple[str, str]] = Counter()
        for (symbol, data_type, _), n in self.objects.items():
            c[(symbol, data_type)] += n
        return c


def load_capture(
    path: Path,
    store: BronzeStore,
    symbols: Iterable[str] | None = None,
    reject_writer: RejectWriter | None = None,
) -> LoadSummary:
    """Load the captures at ``path`` into bronze: one object per (symbol, type, hour)."""
    parsed = parse_capture(capture_files(path, symbols))
    written = []
    objects = {}
    for (symbol, data_type, hour), records in sorted(_every_covered_hour(parsed).items()):
        span = parsed.coverage(symbol, data_type)
        coverage = None if span is None else clip([span], hour, hour + HOUR_MS)
        result = store.write_hour(symbol, data_type, hour, records, coverage)
        written.append(result)
        objects[(symbol, data_type, hour)] = result.records
    rejected = sum(len(r) for r in parsed.rejects.values())
    at = []
    if reject_writer is not None:
        for (symbol, hour), rejects in sorted(parsed.rejects.items()):
            at.append(reject_writer(symbol, "capture", hour, rejects))
    return LoadSummary(written, objects, rejected, parsed.lines, at)
