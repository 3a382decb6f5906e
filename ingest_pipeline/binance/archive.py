"""Binance's public data archive (``data.binance.vision``): layout, download, verify, parse.

Binance publishes the spot history it serves over REST as zipped CSV files, one per symbol, type
and day (``daily/``, about a day after the day ends) or month (``monthly/``, early in the next
month), each with a ``.CHECKSUM`` file beside it (``<sha256 hex>  <file name>``). Spot CSVs have
no header row (some futures files gained one: detected, never assumed) and their timestamps are
milliseconds up to 2024-12-31, microseconds from 2025-01-01; records keep milliseconds.

Two halves: pure functions (paths, checksum lines, CSV -> Arrow batches -> records split by
hour) and :class:`ArchiveClient`, the only part that does I/O (streamed download to a temp
file, timeouts, bounded retries with backoff, checksum verification).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import requests

from ingest_pipeline.binance.rest import read_ahead
from ingest_pipeline.records import AGG_TRADES, KLINES_PREFIX, SOURCE_REST, TRADES, Record
from ingest_pipeline.symbols import check_symbol
from ingest_pipeline.timeutil import HOUR_MS

log = logging.getLogger(__name__)

DAILY = "daily"
MONTHLY = "monthly"
DAY_MS = 24 * HOUR_MS
# Archive timestamps at or above this are microseconds: in milliseconds it is the year 5138,
# in microseconds 1973, so the unit of every value is unambiguous.
MICROS_THRESHOLD = 10**14
# Binance's own marker of an aggTrade it could not reconstruct: price 0, qty 0, f = l = -1.
INVALID_AGG_REASON = "aggTrade row marked invalid by Binance (p=0, q=0, f=-1, l=-1)"
# Arrow's CSV reader block: ~8 MiB of text is ~120k trade rows, a few tens of MB as records.
CSV_BLOCK_BYTES = 8 << 20

_INT = pa.int64()
_FLOAT = pa.float64()
_BOOL = pa.bool_()
# Column names and Arrow types of each spot file kind, in file order.
COLUMNS: dict[str, tuple[tuple[str, pa.DataType], ...]] = {
    "aggTrades": (
        ("a", _INT), ("p", _FLOAT), ("q", _FLOAT), ("f", _INT), ("l", _INT), ("T", _INT),
        ("m", _BOOL), ("M", _BOOL),
    ),
    "trades": (
        ("id", _INT), ("price", _FLOAT), ("qty", _FLOAT), ("quoteQty", _FLOAT), ("time", _INT),
        ("isBuyerMaker", _BOOL), ("isBestMatch", _BOOL),
    ),
    "klines": (
        ("openTime", _INT), ("open", _FLOAT), ("high", _FLOAT), ("low", _FLOAT),
        ("close", _FLOAT), ("volume", _FLOAT), ("closeTime", _INT), ("quoteVolume", _FLOAT),
        ("numTrades", _INT), ("takerBuyBase", _FLOAT), ("takerBuyQuote", _FLOAT),
        ("ignore", pa.string()),
    ),
}  # fmt: skip
# Columns holding epoch times (converted to ms) and the one that places a row in an hour.
_TIME_COLUMNS = {"aggTrades": ("T",), "trades": ("time",), "klines": ("openTime", "closeTime")}
HOUR_COLUMN = {"aggTrades": "T", "trades": "time", "klines": "openTime"}
_ID_COLUMN = {"aggTrades": "a", "trades": "id", "klines": "openTime"}


class ArchiveError(Exception):
    """Base of the archive's errors: the file cannot be trusted or fetched."""


class ArchiveUnavailable(ArchiveError):
    """Retries exhausted on timeouts, connection errors or 5xx answers."""


class ArchiveChecksumError(ArchiveError):
    """The file never matched its published checksum (corrupt, or replaced while we read)."""


class ArchiveFormatError(ArchiveError):
    """The zip or CSV is not what Binance documents (wrong members, columns, values, order)."""


# ----------------------------------------------------------------------------------------------
# Layout


def file_kind(data_type: str) -> tuple[str, str | None]:
    """Archive kind and kline interval of a bronze data type (``klines_1m`` -> klines, 1m)."""
    if data_type == AGG_TRADES:
        return "aggTrades", None
    if data_type == TRADES:
        return "trades", None
    if data_type.startswith(KLINES_PREFIX):
        return "klines", data_type[len(KLINES_PREFIX) :]
    raise ValueError(f"the archive holds no {data_type!r}")


@dataclass(frozen=True)
class ArchiveFile:
    """One archive file: a symbol's data type over one UTC day or calendar month."""

    symbol: str
    data_type: str
    period: str  # DAILY or MONTHLY
    start_ms: int
    end_ms: int

    @property
    def kind(self) -> str:
        return file_kind(self.data_type)[0]

    @property
    def interval(self) -> str | None:
        return file_kind(self.data_type)[1]

    @property
    def label(self) -> str:
        t = datetime.fromtimestamp(self.start_ms / 1000, UTC)
        return f"{t:%Y-%m-%d}" if self.period == DAILY else f"{t:%Y-%m}"

    @property
    def name(self) -> str:
        # The archive writes 1M klines as 1mo, for case-insensitive file systems.
        stem = "1mo" if self.interval == "1M" else self.interval or self.kind
        return f"{self.symbol}-{stem}-{self.label}.zip"

    @property
    def path(self) -> str:
        """URL path under the base URL (symbol percent-encoded, as for REST)."""
        sym = quote(check_symbol(self.symbol), safe="")
        interval = (
            "" if self.interval is None else f"{'1mo' if self.interval == '1M' else self.interval}/"
        )
        name = quote(self.name, safe="")
        return f"data/spot/{self.period}/{self.kind}/{sym}/{interval}{name}"

    def hours(self) -> range:
        return range(self.start_ms, self.end_ms, HOUR_MS)


def day_start(ms: int) -> int:
    return ms - ms % DAY_MS


def month_bounds(ms: int) -> tuple[int, int]:
    t = datetime.fromtimestamp(ms / 1000, UTC)
    start = datetime(t.year, t.month, 1, tzinfo=UTC)
    end = datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def daily_file(symbol: str, data_type: str, ms: int) -> ArchiveFile:
    start = day_start(ms)
    return ArchiveFile(symbol, data_type, DAILY, start, start + DAY_MS)


def monthly_file(symbol: str, data_type: str, ms: int) -> ArchiveFile:
    start, end = month_bounds(ms)
    return ArchiveFile(symbol, data_type, MONTHLY, start, end)


_CHECKSUM_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")


def parse_checksum(text: str, expected_name: str) -> str:
    """The SHA-256 (lower-case hex) of ``<hex>  <file name>``; the name must be the file's."""
    match = _CHECKSUM_LINE.match(text.strip())
    if match is None:
        raise ArchiveFormatError(f"CHECKSUM of {expected_name}: unreadable line {text[:120]!r}")
    if match.group(2) != expected_name:
        raise ArchiveFormatError(
            f"CHECKSUM of {expected_name} names another file: {match.group(2)!r}"
        )
    return match.group(1).lower()


# ----------------------------------------------------------------------------------------------
# Parsing (pure: a local zip in, Arrow batches and records out)


def _has_header(first_line: bytes) -> bool:
    # Every spot column starts with a digit or a sign; a header starts with a name.
    first = first_line.split(b",", 1)[0].strip().lstrip(b"\xef\xbb\xbf")
    return bool(first) and not first.lstrip(b"-").isdigit()


def read_batches(
    source: IO[bytes], kind: str, block_bytes: int = CSV_BLOCK_BYTES
) -> Iterator[pa.RecordBatch]:
    """Stream one archive CSV as Arrow batches with the kind's column names and types.

    ``source`` must support ``peek`` (a ``zipfile`` member does): the first line decides
    whether a header row is skipped. Any row Arrow cannot convert raises ArchiveFormatError.
    """
    columns = COLUMNS[kind]
    head = source.peek(4096)[:4096]  # type: ignore[attr-defined]
    first_line = head.split(b"\n", 1)[0]
    if not first_line.strip():
        return
    header = _has_header(first_line)
    if header:
        log.info("archive %s CSV has a header row %r: skipped", kind, first_line[:120])
    try:
        yield from _batches(source, kind, columns, header, block_bytes)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ArchiveFormatError(f"{kind} CSV: {exc}") from exc


def _batches(
    source: IO[bytes],
    kind: str,
    columns: tuple[tuple[str, pa.DataType], ...],
    header: bool,
    block_bytes: int,
) -> Iterator[pa.RecordBatch]:
    # Arrow parses the first block on open: conversion errors can surface here too.
    reader = pacsv.open_csv(
        source,
        read_options=pacsv.ReadOptions(
            column_names=[name for name, _ in columns],
            skip_rows=1 if header else 0,
            block_size=block_bytes,
            use_threads=False,
        ),
        parse_options=pacsv.ParseOptions(newlines_in_values=False),
        convert_options=pacsv.ConvertOptions(
            column_types=dict(columns),
            true_values=["True", "true", "TRUE", "1"],
            false_values=["False", "false", "FALSE", "0"],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    for batch in reader:
        if batch.num_rows:
            yield batch


def to_ms(values: np.ndarray) -> np.ndarray:
    """Epoch times in ms, whether each value was written in ms or in µs (floored to its ms)."""
    return np.where(values >= MICROS_THRESHOLD, values // 1000, values)


@dataclass
class HourPart:
    """Records (and rejected rows) of one hour found in one batch of an archive file."""

    hour: int
    records: list[Record]
    rejects: list[dict[str, Any]] = field(default_factory=list)
    # Rows Binance itself marked invalid (aggTrades p=0 q=0 f=-1 l=-1), also in ``rejects``.
    invalid_marked: int = 0


def _raw_rows(batch: pa.RecordBatch, rows: np.ndarray) -> list[dict[str, Any]]:
    return batch.take(pa.array(rows)).to_pylist() if rows.size else []


def _hour_of_rows(ts: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Hour (epoch ms) of each row; a rejected row, whose time may be garbage, goes with the
    valid row before it (or after it, at the start), so it is dead-lettered with its hour."""
    if valid.all() or not valid.any():
        return ts - ts % HOUR_MS
    idx = np.where(valid, np.arange(ts.size), -1)
    before = np.maximum.accumulate(idx)
    before[before < 0] = int(np.flatnonzero(valid)[0])
    t = ts[before]
    return t - t % HOUR_MS


def _selection(rows: np.ndarray, ok: np.ndarray, i: int, j: int) -> slice | np.ndarray:
    # A slice when every row is valid (the usual case): no index array to gather through.
    return slice(i, j) if ok.all() else rows[ok]


def _split_by_hour(hours: np.ndarray, make: Callable[[int, int], HourPart]) -> Iterator[HourPart]:
    """Cut rows ordered by hour into one part per hour; ``make(i, j)`` builds rows i..j-1."""
    if hours.size and np.any(hours[1:] < hours[:-1]):
        raise ArchiveFormatError("rows are not in time order")
    cuts = np.flatnonzero(hours[1:] != hours[:-1]) + 1
    bounds = [0, *cuts.tolist(), hours.size]
    for i, j in zip(bounds, bounds[1:], strict=False):
        yield make(int(hours[i]), i, j)


def agg_trade_parts(batch: pa.RecordBatch, symbol: str, ingest_ts: int) -> Iterator[HourPart]:
    """One aggTrades batch -> records shaped exactly as ``agg_trade_from_rest`` makes them."""
    a = batch.column("a").to_numpy()
    p = batch.column("p").to_numpy()
    q = batch.column("q").to_numpy()
    f = batch.column("f").to_numpy()
    last = batch.column("l").to_numpy()
    ts = to_ms(batch.column("T").to_numpy())
    m = batch.column("m").to_numpy(zero_copy_only=False)
    marked = (p == 0) & (q == 0) & (f == -1) & (last == -1)
    valid = (
        (a >= 0) & (ts >= 0) & (f >= 0) & (f <= last)
        & (p > 0) & np.isfinite(p) & (q > 0) & np.isfinite(q)
    )  # fmt: skip

    def make(hour: int, i: int, j: int) -> HourPart:
        ok = valid[i:j]
        rows = np.arange(i, j)
        keep = _selection(rows, ok, i, j)
        part = HourPart(hour, [])
        if not ok.all():
            bad = rows[~ok]
            part.invalid_marked = int(marked[bad].sum())
            part.rejects = [
                {
                    "reason": INVALID_AGG_REASON
                    if marked[r]
                    else "archive aggTrade row out of range",
                    "raw": raw,
                }
                for r, raw in zip(bad.tolist(), _raw_rows(batch, bad), strict=True)
            ]
        part.records = [
            {
                "symbol": symbol,
                "event_ts": t,
                "ingest_ts": ingest_ts,
                "trade_id": ai,
                "price": pi,
                "qty": qi,
                "is_buyer_maker": mi,
                "source": SOURCE_REST,
                "first_trade_id": fi,
                "last_trade_id": li,
            }
            for ai, pi, qi, fi, li, t, mi in zip(
                a[keep].tolist(),
                p[keep].tolist(),
                q[keep].tolist(),
                f[keep].tolist(),
                last[keep].tolist(),
                ts[keep].tolist(),
                m[keep].tolist(),
                strict=True,
            )  # fmt: skip
        ]
        return part

    return _split_by_hour(_hour_of_rows(ts, valid), make)


def trade_parts(batch: pa.RecordBatch, symbol: str, ingest_ts: int) -> Iterator[HourPart]:
    """One trades batch -> records shaped exactly as ``trade_from_rest`` makes them."""
    ids = batch.column("id").to_numpy()
    p = batch.column("price").to_numpy()
    q = batch.column("qty").to_numpy()
    ts = to_ms(batch.column("time").to_numpy())
    m = batch.column("isBuyerMaker").to_numpy(zero_copy_only=False)
    valid = (ids >= 0) & (ts >= 0) & (p > 0) & np.isfinite(p) & (q > 0) & np.isfinite(q)

    def make(hour: int, i: int, j: int) -> HourPart:
        rows = np.arange(i, j)
        ok = valid[i:j]
        keep = _selection(rows, ok, i, j)
        part = HourPart(hour, [])
        if not ok.all():
            bad = rows[~ok]
            part.rejects = [
                {"reason": "archive trade row out of range", "raw": raw}
                for raw in _raw_rows(batch, bad)
            ]
        part.records = [
            {
                "symbol": symbol,
                "event_ts": t,
                "ingest_ts": ingest_ts,
                "trade_id": ti,
                "price": pi,
                "qty": qi,
                "is_buyer_maker": mi,
                "source": SOURCE_REST,
            }
            for ti, pi, qi, t, mi in zip(
                ids[keep].tolist(),
                p[keep].tolist(),
                q[keep].tolist(),
                ts[keep].tolist(),
                m[keep].tolist(),
                strict=True,
            )  # fmt: skip
        ]
        return part

    return _split_by_hour(_hour_of_rows(ts, valid), make)


def kline_parts(
    batch: pa.RecordBatch, symbol: str, interval: str, ingest_ts: int
) -> Iterator[HourPart]:
    """One klines batch -> records shaped exactly as ``kline_from_rest`` makes them."""
    open_t = to_ms(batch.column("openTime").to_numpy())
    close_t = to_ms(batch.column("closeTime").to_numpy())
    prices = [batch.column(c).to_numpy() for c in ("open", "high", "low", "close")]
    volumes = [
        batch.column(c).to_numpy()
        for c in ("volume", "quoteVolume", "takerBuyBase", "takerBuyQuote")
    ]
    n = batch.column("numTrades").to_numpy()
    valid = (open_t >= 0) & (open_t <= close_t) & (n >= 0)
    for x in prices:
        valid &= (x > 0) & np.isfinite(x)
    for x in volumes:
        valid &= (x >= 0) & np.isfinite(x)

    def make(hour: int, i: int, j: int) -> HourPart:
        rows = np.arange(i, j)
        ok = valid[i:j]
        keep = _selection(rows, ok, i, j)
        part = HourPart(hour, [])
        if not ok.all():
            bad = rows[~ok]
            part.rejects = [
                {"reason": "archive kline row out of range", "raw": raw}
                for raw in _raw_rows(batch, bad)
            ]
        o, h, lo, c = (x[keep].tolist() for x in prices)
        v, qv, tb, tq = (x[keep].tolist() for x in volumes)
        part.records = [
            {
                "open_time": ot,
                "close_time": ct,
                "open_price": oi,
                "high_price": hi,
                "low_price": li,
                "close_price": ci,
                "volume": vi,
                "quote_volume": qvi,
                "trade_count": ni,
                "taker_buy_base_volume": tbi,
                "taker_buy_quote_volume": tqi,
                "symbol": symbol,
                "interval": interval,
                "ingest_ts": ingest_ts,
            }
            for ot, ct, oi, hi, li, ci, vi, qvi, ni, tbi, tqi in zip(
                open_t[keep].tolist(),
                close_t[keep].tolist(),
                o,
                h,
                lo,
                c,
                v,
                qv,
                n[keep].tolist(),
                tb,
                tq,
                strict=True,
            )  # fmt: skip
        ]
        return part

    return _split_by_hour(_hour_of_rows(open_t, valid), make)


@dataclass
class HourRecords:
    """Everything one archive file holds for one hour."""

    hour: int
    records: list[Record] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    invalid_marked: int = 0


def parse_hours(
    zip_path: Path | str,
    data_type: str,
    symbol: str,
    ingest_ts: int,
    block_bytes: int = CSV_BLOCK_BYTES,
) -> Iterator[HourRecords]:
    """The hours of one archive file in time order, each as soon as the next one begins.

    Memory stays at about one hour of records plus one CSV block, whatever the file's size.
    Raises ArchiveFormatError where the file stops being readable (hours already yielded are
    complete).
    """
    kind, interval = file_kind(data_type)
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise ArchiveFormatError(f"{zip_path}: not a zip file: {exc}") from exc
    with archive:
        members = [i for i in archive.infolist() if not i.is_dir()]
        if len(members) != 1 or not members[0].filename.endswith(".csv"):
            names = [i.filename for i in members]
            raise ArchiveFormatError(f"{zip_path}: expected one CSV, found {names}")
        current: HourRecords | None = None
        try:
            with archive.open(members[0]) as source:
                # Inflating and parsing the next block (C++, without the GIL) overlaps with
                # building and writing the records of this one, as REST pages do.
                for batch in read_ahead(read_batches(source, kind, block_bytes)):
                    if kind == "aggTrades":
                        parts = agg_trade_parts(batch, symbol, ingest_ts)
                    elif kind == "trades":
                        parts = trade_parts(batch, symbol, ingest_ts)
                    else:
                        parts = kline_parts(batch, symbol, interval or "", ingest_ts)
                    for part in parts:
                        if current is not None and part.hour < current.hour:
                            raise ArchiveFormatError("rows are not in time order")
                        if current is None or part.hour != current.hour:
                            if current is not None:
                                yield current
                            current = HourRecords(part.hour)
                        current.records.extend(part.records)
                        current.rejects.extend(part.rejects)
                        current.invalid_marked += part.invalid_marked
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise ArchiveFormatError(f"{zip_path}: unreadable member: {exc}") from exc
        if current is not None:
            yield current


# ----------------------------------------------------------------------------------------------
# I/O


@dataclass(frozen=True)
class Download:
    """A verified archive file on local disk."""

    file: ArchiveFile
    path: Path
    sha256: str
    bytes: int
    received_ms: int


@dataclass
class ArchiveStats:
    requests: int = 0
    retries: int = 0
    downloads: int = 0
    bytes: int = 0
    not_found: int = 0
    checksum_mismatches: int = 0


class ArchiveClient:
    """Downloads archive files: streamed to disk, verified against their CHECKSUM file."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float = 3.05,
        read_timeout_s: float = 30.0,
        max_attempts: int = 5,
        checksum_attempts: int = 3,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 20.0,
        chunk_bytes: int = 1 << 20,
        work_dir: Path | str | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.max_attempts = max_attempts
        self.checksum_attempts = checksum_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.chunk_bytes = chunk_bytes
        # Verified files are kept here by path, so that steps of one run share a download.
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.stats = ArchiveStats()
        self._session = session or requests.Session()
        self._sleep = sleep
        self._rng = rng or random.Random()

    def url(self, f: ArchiveFile) -> str:
        return f"{self.base_url}/{f.path}"

    def _local(self, f: ArchiveFile) -> Path | None:
        return None if self.work_dir is None else self.work_dir / f.path

    def fetch(self, f: ArchiveFile) -> Download | None:
        """The verified file, or None when the archive does not hold it (HTTP 404).

        A file whose bytes do not match its CHECKSUM is fetched again (Binance may be replacing
        it) up to ``checksum_attempts`` times, then ArchiveChecksumError. Network trouble is
        retried with backoff up to ``max_attempts`` per request, then ArchiveUnavailable.
        """
        local = self._local(f)
        marker = local.with_name(local.name + ".sha256") if local is not None else None
        if local is not None and marker is not None and marker.exists() and local.exists():
            sha = marker.read_text().strip()
            return Download(f, local, sha, local.stat().st_size, int(marker.stat().st_mtime * 1000))
        problem = ""
        for attempt in range(self.checksum_attempts):
            # The zip first, then its CHECKSUM: a file replaced between the two reads shows up
            # as a mismatch and is read again, never accepted half old, half new.
            got = self._download(f, local)
            if got is None:
                self.stats.not_found += 1
                return None
            path, sha, size = got
            body = self._get_text(self.url(f) + ".CHECKSUM")
            if body is None:
                path.unlink(missing_ok=True)
                raise ArchiveChecksumError(f"{f.path}: no CHECKSUM published beside the file")
            try:
                expected = parse_checksum(body, f.name)
            except ArchiveFormatError:
                path.unlink(missing_ok=True)
                raise
            if sha == expected:
                self.stats.downloads += 1
                self.stats.bytes += size
                if local is not None and marker is not None:
                    path = Path(shutil.move(path, local))
                    marker.write_text(sha)
                return Download(f, path, sha, size, int(time.time() * 1000))
            path.unlink(missing_ok=True)
            self.stats.checksum_mismatches += 1
            problem = f"sha256 {sha} != published {expected}"
            log.warning("archive %s: %s (attempt %d)", f.path, problem, attempt + 1)
            self._backoff(attempt)
        raise ArchiveChecksumError(f"{f.path}: {problem} after {self.checksum_attempts} tries")

    def release(self, download: Download) -> None:
        """Delete the local copy (and its verification marker)."""
        download.path.unlink(missing_ok=True)
        download.path.with_name(download.path.name + ".sha256").unlink(missing_ok=True)

    def _backoff(self, attempt: int) -> None:
        # Full jitter, as the REST client: many workers retrying together spread out.
        self._sleep(self._rng.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**attempt)))

    def _request(self, url: str) -> requests.Response | None:
        """GET with retries; None on 404; the response is streamed (caller closes it)."""
        problem = "no attempt made"
        for attempt in range(self.max_attempts):
            if attempt:
                self.stats.retries += 1
            self.stats.requests += 1
            try:
                resp = self._session.get(url, timeout=self.timeout, stream=True)
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                self._backoff(attempt)
                continue
            if resp.status_code == 404:
                resp.close()
                return None
            if resp.status_code >= 500 or resp.status_code == 429:
                problem = f"HTTP {resp.status_code}"
                resp.close()
                self._backoff(attempt)
                continue
            if resp.status_code != 200:
                resp.close()
                raise ArchiveError(f"{url}: HTTP {resp.status_code}")
            return resp
        raise ArchiveUnavailable(f"{url}: gave up after {self.max_attempts} attempts: {problem}")

    def _get_text(self, url: str) -> str | None:
        for attempt in range(self.max_attempts):
            resp = self._request(url)
            if resp is None:
                return None
            try:
                return resp.content.decode("utf-8", errors="replace")
            except requests.RequestException as exc:
                log.warning("archive %s: %s", url, exc)
                self._backoff(attempt)
            finally:
                resp.close()
        raise ArchiveUnavailable(f"{url}: body never arrived whole")

    def _download(self, f: ArchiveFile, local: Path | None) -> tuple[Path, str, int] | None:
        """Stream the zip into a temp file beside its destination: (path, sha256, size)."""
        url = self.url(f)
        for attempt in range(self.max_attempts):
            resp = self._request(url)
            if resp is None:
                return None
            if local is not None:
                local.parent.mkdir(parents=True, exist_ok=True)
                directory: str | None = str(local.parent)
            else:
                directory = None
            digest = hashlib.sha256()
            size = 0
            tmp = tempfile.NamedTemporaryFile(
                dir=directory, prefix=".part-", suffix=".zip", delete=False
            )
            try:
                with tmp, resp:
                    for chunk in resp.iter_content(self.chunk_bytes):
                        digest.update(chunk)
                        tmp.write(chunk)
                        size += len(chunk)
                expected = resp.headers.get("Content-Length")
                if expected is not None and expected.isdigit() and int(expected) != size:
                    raise requests.ConnectionError(f"got {size} of {expected} bytes")
            except (requests.RequestException, OSError) as exc:
                # A body cut short (ChunkedEncodingError, a short Content-Length) is retried.
                Path(tmp.name).unlink(missing_ok=True)
                log.warning("archive %s: %s (attempt %d)", url, exc, attempt + 1)
                self.stats.retries += 1
                self._backoff(attempt)
                continue
            return Path(tmp.name), digest.hexdigest(), size
        raise ArchiveUnavailable(f"{url}: download never completed in {self.max_attempts} tries")
