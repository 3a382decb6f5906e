"""Archive files into records: the SPEC records of each hour of a CSV.

Spot CSVs have no header row (some futures files gained one: detected, never assumed) and
their timestamps are milliseconds up to 2024-12-31, microseconds from 2025-01-01; records keep
milliseconds. Records are shaped exactly as the REST normalizers shape them, so an hour from
either source is the same bronze object. Pure apart from reading the local zip.

Two paths, one result. aggTrades and trades blocks go through the compiled writer
(``_archive_rows.c``), which turns CSV text straight into bronze's JSON lines
(``EncodedRecords``) and takes only rows it can write exactly; a block with any other row, and
every klines file, goes through Arrow's CSV reader into dicts, which reject or refuse what
deserves it. ``test_archive_writer.py`` holds the two to the same bronze bytes.
"""

from __future__ import annotations

import io
import logging
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv

from ingest_pipeline.binance import _archive_rows
from ingest_pipeline.binance.archive import ArchiveFormatError, file_kind
from ingest_pipeline.binance.rest import read_ahead
from ingest_pipeline.encoded import EncodedRecords
from ingest_pipeline.records import AGG_TRADES, KLINES, SOURCE_REST, TRADES, Record, datatype
from ingest_pipeline.timeutil import HOUR_MS

log = logging.getLogger(__name__)

# Archive timestamps at or above this are microseconds: in milliseconds it is the year 5138,
# in microseconds 1973, so the unit of every value is unambiguous.
MICROS_THRESHOLD = 10**14
# Binance's own marker of an aggTrade it could not reconstruct: price 0, qty 0, f = l = -1.
INVALID_AGG_REASON = "aggTrade row marked invalid by Binance (p=0, q=0, f=-1, l=-1)"
# Arrow's CSV reader block: ~8 MiB of text is ~120k trade rows, a few tens of MB as records.
CSV_BLOCK_BYTES = 8 << 20
# The compiled writer's block: its output buffers (~2.5x the block, twice) stay below glibc's
# mmap threshold and are reused, where fresh mapped pages cost ~1.7x its time (measured).
WRITER_BLOCK_BYTES = 2 << 20

_INT = pa.int64()
_FLOAT = pa.float64()
_BOOL = pa.bool_()
# Column names and Arrow types of the spot archive file of each data type (the registry's name),
# in file order: the archive's wire format.
COLUMNS: dict[str, tuple[tuple[str, pa.DataType], ...]] = {
    AGG_TRADES: (
        ("a", _INT), ("p", _FLOAT), ("q", _FLOAT), ("f", _INT), ("l", _INT), ("T", _INT),
        ("m", _BOOL), ("M", _BOOL),
    ),
    TRADES: (
        ("id", _INT), ("price", _FLOAT), ("qty", _FLOAT), ("quoteQty", _FLOAT), ("time", _INT),
        ("isBuyerMaker", _BOOL), ("isBestMatch", _BOOL),
    ),
    KLINES: (
        ("openTime", _INT), ("open", _FLOAT), ("high", _FLOAT), ("low", _FLOAT),
        ("close", _FLOAT), ("volume", _FLOAT), ("closeTime", _INT), ("quoteVolume", _FLOAT),
        ("numTrades", _INT), ("takerBuyBase", _FLOAT), ("takerBuyQuote", _FLOAT),
        ("ignore", pa.string()),
    ),
}  # fmt: skip


# aggTrades and trades, the bulk of every day, go through the compiled writer
# (``_archive_rows.c``): CSV text -> bronze's JSON lines, no dict per row. Its kind numbers.
_WRITER_KINDS = {AGG_TRADES: 0, TRADES: 1}


def _plain_text(number: str) -> bytes:
    """A decimal as the writer writes it: plain digits, at least one on each side of '.'."""
    text = format(Decimal(number), "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.rstrip('0') or '0'}".encode()


def _plain_exponents() -> tuple[int, int]:
    """The decimal exponents (of d.ddd x 10^e) whose floats the installed orjson writes as
    plain digits, as the writer does: it must write exactly what orjson writes, and orjson's
    choice of where scientific notation starts has changed between versions. (1, 0) when
    orjson writes no plain digits at all: the writer then takes no row."""
    plain = {
        e
        for e in range(-12, 24)
        if all(orjson.dumps(float(f"{m}e{e}")) == _plain_text(f"{m}e{e}") for m in ("1", "1.25"))
    }
    if 0 not in plain:
        return 1, 0
    low = high = 0
    while low - 1 in plain:
        low -= 1
    while high + 1 in plain:
        high += 1
    return low, high


PLAIN_EXPONENTS = _plain_exponents()


def _has_header(first_line: bytes) -> bool:
    # Every spot column starts with a digit or a sign; a header starts with a name.
    first = first_line.split(b",", 1)[0].strip().lstrip(b"\xef\xbb\xbf")
    return bool(first) and not first.lstrip(b"-").isdigit()


def _header(source: IO[bytes], kind: str) -> bool | None:
    """Whether the CSV opens with a header row (None: it opens with a blank line, no rows).
    ``source`` must support ``peek`` (a ``zipfile`` member does)."""
    head = source.peek(4096)[:4096]  # type: ignore[attr-defined]
    first_line = head.split(b"\n", 1)[0]
    if not first_line.strip():
        return None
    header = _has_header(first_line)
    if header:
        log.info("archive %s CSV has a header row %r: skipped", kind, first_line[:120])
    return header


def read_batches(
    source: IO[bytes], data_type: str, block_bytes: int = CSV_BLOCK_BYTES
) -> Iterator[pa.RecordBatch]:
    """Stream one archive CSV of ``data_type`` as Arrow batches with its column names and types.

    ``source`` must support ``peek`` (a ``zipfile`` member does): the first line decides
    whether a header row is skipped. Any row Arrow cannot convert raises ArchiveFormatError.
    """
    kind, _ = file_kind(data_type)
    columns = COLUMNS[datatype(data_type).name]
    header = _header(source, kind)
    if header is None:
        return
    yield from _batches(source, kind, columns, header, block_bytes)


def _batches(
    source: IO[bytes],
    kind: str,
    columns: tuple[tuple[str, pa.DataType], ...],
    header: bool,
    block_bytes: int,
) -> Iterator[pa.RecordBatch]:
    """Arrow batches of a CSV without its header; a row Arrow cannot convert raises
    ArchiveFormatError, wherever it is (Arrow parses the first block on open)."""
    try:
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
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ArchiveFormatError(f"{kind} CSV: {exc}") from exc


def to_ms(values: np.ndarray) -> np.ndarray:
    """Epoch times in ms, whether each value was written in ms or in µs (floored to its ms)."""
    return np.where(values >= MICROS_THRESHOLD, values // 1000, values)


@dataclass
class HourPart:
    """Records (and rejected rows) of one hour found in one batch of an archive file."""

    hour: int
    records: Sequence[Record]
    rejects: list[dict[str, Any]] = field(default_factory=list)
    # Rows Binance itself marked invalid (aggTrades p=0 q=0 f=-1 l=-1), also in ``rejects``.
    invalid_marked: int = 0
    # Rows the compiled writer took instead (``records`` is then empty).
    written: Written | None = None


@dataclass
class Written:
    """The compiled writer's JSON lines of some rows of one hour: views into its block's
    buffers (``masked`` with ingest_ts zeroed) and the rows' int64 columns by record field."""

    jsonl: memoryview
    masked: memoryview
    columns: dict[str, np.ndarray]


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


def _split_by_hour(
    hours: np.ndarray, make: Callable[[int, int, int], HourPart]
) -> Iterator[HourPart]:
    """Cut rows ordered by hour into one part per hour; ``make(hour, i, j)`` builds rows
    i..j-1, which all fall in ``hour``."""
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
    records: Sequence[Record] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    invalid_marked: int = 0


class _HourBuilder:
    """Collects the parts of one hour; its records stay JSON lines unless a part is dicts."""

    def __init__(self, hour: int) -> None:
        self.hour = hour
        self.parts: list[Written | Sequence[Record]] = []
        self.rejects: list[dict[str, Any]] = []
        self.invalid_marked = 0

    def add(self, part: HourPart) -> None:
        if part.written is not None:
            self.parts.append(part.written)
        elif part.records:
            self.parts.append(part.records)
        self.rejects.extend(part.rejects)
        self.invalid_marked += part.invalid_marked

    def build(self, symbol: str) -> HourRecords:
        written = [p for p in self.parts if isinstance(p, Written)]
        if not written or len(written) < len(self.parts):
            records = [r for p in self.parts for r in _records_of(symbol, p)]
            return HourRecords(self.hour, records, self.rejects, self.invalid_marked)
        encoded = _encoded(symbol, written)
        return HourRecords(self.hour, encoded, self.rejects, self.invalid_marked)


def _encoded(symbol: str, parts: list[Written]) -> EncodedRecords:
    return EncodedRecords(
        symbol,
        [p.jsonl for p in parts],
        [p.masked for p in parts],
        {n: np.concatenate([p.columns[n] for p in parts]) for n in parts[0].columns},
    )


def _records_of(symbol: str, part: Written | Sequence[Record]) -> Sequence[Record]:
    # An hour that a declined block shares with written ones: all of it as dicts (rare).
    return _encoded(symbol, [part]).decoded() if isinstance(part, Written) else part


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
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise ArchiveFormatError(f"{zip_path}: not a zip file: {exc}") from exc
    with archive:
        members = [i for i in archive.infolist() if not i.is_dir()]
        if len(members) != 1 or not members[0].filename.endswith(".csv"):
            names = [i.filename for i in members]
            raise ArchiveFormatError(f"{zip_path}: expected one CSV, found {names}")
        current: _HourBuilder | None = None
        try:
            with archive.open(members[0]) as source:
                for part in _parts(source, data_type, symbol, ingest_ts, block_bytes):
                    if current is not None and part.hour < current.hour:
                        raise ArchiveFormatError("rows are not in time order")
                    if current is None or part.hour != current.hour:
                        if current is not None:
                            yield current.build(symbol)
                        current = _HourBuilder(part.hour)
                    current.add(part)
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise ArchiveFormatError(f"{zip_path}: unreadable member: {exc}") from exc
        if current is not None:
            yield current.build(symbol)


def _parts(
    source: IO[bytes], data_type: str, symbol: str, ingest_ts: int, block_bytes: int
) -> Iterator[HourPart]:
    name = datatype(data_type).name
    if name not in _WRITER_KINDS:
        _, interval = file_kind(data_type)
        # Inflating and parsing the next block (C++, without the GIL) overlaps with building
        # and writing the records of this one, as REST pages do.
        for batch in read_ahead(read_batches(source, data_type, block_bytes)):
            yield from kline_parts(batch, symbol, interval or "", ingest_ts)
        return
    kind, _ = file_kind(data_type)
    header = _header(source, kind)
    if header is None:
        return
    head = b'{"symbol":' + orjson.dumps(symbol) + b',"event_ts":'
    digits = b"%d" % ingest_ts
    make = agg_trade_parts if name == AGG_TRADES else trade_parts
    columns = COLUMNS[name]
    for block in read_ahead(_text_blocks(source, min(block_bytes, WRITER_BLOCK_BYTES), header)):
        written = _archive_rows.encode(_WRITER_KINDS[name], block, head, digits, *PLAIN_EXPONENTS)
        if written is not None:
            yield from _written_parts(written, len(digits))
            continue
        # A row the writer does not take: the whole block the general way, which rejects or
        # refuses what deserves it.
        for batch in _batches(
            io.BufferedReader(io.BytesIO(block)), kind, columns, False, block_bytes
        ):
            yield from make(batch, symbol, ingest_ts)


def _text_blocks(source: IO[bytes], block_bytes: int, skip_header: bool) -> Iterator[bytes]:
    """The CSV text in blocks of whole lines (the last one as the file ends it)."""
    carry = b""
    if skip_header:
        source.readline()
    while chunk := source.read(block_bytes):
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:
            carry += chunk
            continue
        yield carry + chunk[:cut]
        carry = chunk[cut:]
    if carry:
        yield carry


def _written_parts(output: tuple[Any, ...], digits: int) -> Iterator[HourPart]:
    """The compiled writer's output for one block, cut into hours."""
    jsonl, masked, ends_b, ts_b, ids_b, firsts_b, lasts_b = output
    ends, ts, ids = (np.frombuffer(b, np.int64) for b in (ends_b, ts_b, ids_b))
    firsts = None if firsts_b is None else np.frombuffer(firsts_b, np.int64)
    lasts = None if lasts_b is None else np.frombuffer(lasts_b, np.int64)
    # A masked line is the written one with ingest_ts's digits reduced to one "0".
    shrink = digits - 1
    whole, masked_whole = memoryview(jsonl), memoryview(masked)

    def make(hour: int, i: int, j: int) -> HourPart:
        start = int(ends[i - 1]) if i else 0
        end = int(ends[j - 1])
        columns = {"event_ts": ts[i:j], "trade_id": ids[i:j]}
        if firsts is not None and lasts is not None:
            columns["first_trade_id"] = firsts[i:j]
            columns["last_trade_id"] = lasts[i:j]
        written = Written(
            whole[start:end], masked_whole[start - i * shrink : end - j * shrink], columns
        )
        return HourPart(hour, [], written=written)

    return _split_by_hour(ts - ts % HOUR_MS, make)
