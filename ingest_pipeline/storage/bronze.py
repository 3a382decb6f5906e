"""Bronze objects (SPEC §3): deterministic keys, sorted and deduplicated gzip JSONL, one PUT.

Idempotence rests on a content fingerprint kept in the object's metadata: the SHA-256 of the
records without ``ingest_ts``. A re-run whose records have the same fingerprint (and the same
coverage) leaves the stored object alone (same bytes, first ``ingest_ts`` kept); one that
differs replaces the object in a single PUT and reports what changed.

Coverage is data: an object also says which spans of its hour its source covered, in the
``coverage`` metadata entry (read with a HEAD, without the body): a JSON list of
``[start, end)`` offsets in ms from the start of the hour, in the clock the records are placed
by (trade time, diff ``E``, BBA receive time). No entry means the whole hour (REST history
always covers it); a capture that ends at 00:05:05 writes ``[[0,305000]]``; streamer downtime
not filled, or a source cut short, leaves the corresponding holes. At most
``MAX_COVERAGE_SPANS`` spans are kept (S3 metadata is limited to 2 KB): beyond that the
shortest covered spans are dropped, i.e. counted as not covered - never the other way round.

An ``agg_trades`` object also says which individual trades its aggTrades cover
(:class:`TradeCoverage`: the first ``f``, the last ``l`` and ``sum(l - f + 1)``), so that the
hour's trades can be bounded and counted with a HEAD instead of decoding the whole object.
Objects written before these entries existed are decoded instead (a re-run with the same
records leaves such an object as it is, entries and all).
"""

from __future__ import annotations

import gzip
import hashlib
import operator
import re
import sys
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import orjson

from ingest_pipeline.encoded import EncodedRecords, int_column
from ingest_pipeline.records import (
    AGG_TRADES,
    Record,
    id_field,
    kline_interval,
    record_key,
    time_field,
)
from ingest_pipeline.spans import Span, Spans, clip
from ingest_pipeline.storage.s3objects import get_bytes_or_none, head_or_none
from ingest_pipeline.symbols import check_symbol
from ingest_pipeline.timeutil import HOUR_MS, from_ms

# ~10k records per chunk: big enough to amortize the compressor calls, small enough that the
# per-record orjson buffers of one chunk stay a few tens of MB.
CHUNK_RECORDS = 10_000
# Level 3 compresses ~7x faster than naive line-by-line writing at a size close to level 6.
DEFAULT_GZIP_LEVEL = 3
FINGERPRINT_META = "content-sha256"
RECORDS_META = "records"
COVERAGE_META = "coverage"
MAX_COVERAGE_SPANS = 100
TRADES_COVERED_META = "trades-covered"
FIRST_TRADE_ID_META = "first-trade-id"
LAST_TRADE_ID_META = "last-trade-id"
_IGNORED_IN_FINGERPRINT = "ingest_ts"
# ingest_ts is an integer and no other field can hold this text (symbols are alphanumeric,
# prices and sizes are numbers or numeric strings), so masking it in the JSON is exact.
_INGEST_TS = re.compile(rb'"ingest_ts":\d+')
_INGEST_TS_KEY = b'"ingest_ts":'
_INGEST_TS_ZERO = b'"ingest_ts":0'


def hour_path(symbol: str, data_type: str, hour_ms: int) -> str:
    """``{symbol}/{data_type}/yyyy=YYYY/mm=MM/dd=DD/hh=HH/{data_type}-{symbol}-{YYYYMMDDHH}.jsonl.gz``."""
    check_symbol(symbol)
    if hour_ms % HOUR_MS:
        raise ValueError(f"{hour_ms} is not the start of an hour")
    t = from_ms(hour_ms)
    return (
        f"{symbol}/{data_type}/yyyy={t:%Y}/mm={t:%m}/dd={t:%d}/hh={t:%H}/"
        f"{data_type}-{symbol}-{t:%Y%m%d%H}.jsonl.gz"
    )


def prepare_records(
    records: Iterable[Record], data_type: str, hour_ms: int, symbol: str
) -> tuple[Sequence[Record], int]:
    """Sort by record key and drop duplicate keys (the first seen wins).

    Returns the records and the number of duplicates dropped. A record of another symbol (or
    kline interval) or outside ``[hour, hour + 1h)`` is a caller bug, not data to hide: it
    raises ``ValueError``. Within one object the key's other parts are constant, so its id
    field alone orders and identifies the records.
    """
    if isinstance(records, EncodedRecords):
        if _in_order(records, data_type, hour_ms, symbol):
            return records, 0
        records = records.decoded()
    records = list(records)
    if not records:
        return records, 0
    tfield = time_field(data_type)
    times = list(map(operator.itemgetter(tfield), records))
    if min(times) < hour_ms or max(times) >= hour_ms + HOUR_MS:
        bad = next(r for r in records if not hour_ms <= r[tfield] < hour_ms + HOUR_MS)
        raise ValueError(
            f"{data_type} record {record_key(data_type)(bad)} has {tfield}={bad[tfield]} "
            f"outside the hour [{hour_ms}, {hour_ms + HOUR_MS})"
        )
    strays = set(map(operator.itemgetter("symbol"), records)) - {symbol}
    interval = kline_interval(data_type)
    if interval is not None:
        strays |= set(map(operator.itemgetter("interval"), records)) - {interval}
    if strays:
        raise ValueError(f"{data_type} object of {symbol} given records of {sorted(strays)}")
    ids = list(map(operator.itemgetter(id_field(data_type)), records))
    # REST pages arrive in key order: checking is far cheaper than sorting a million records.
    if all(map(operator.lt, ids, islice(ids, 1, None))):
        return records, 0
    unique: dict[Any, Record] = {}
    for i, r in zip(ids, records, strict=True):
        unique.setdefault(i, r)
    return [unique[i] for i in sorted(unique)], len(records) - len(unique)


def _in_order(records: EncodedRecords, data_type: str, hour_ms: int, symbol: str) -> bool:
    """Whether JSON-line records are already what ``prepare_records`` would return: ids
    strictly increasing, times inside the hour, one symbol (by construction, asserted)."""
    if records.symbol != symbol or kline_interval(data_type) is not None:
        return False
    ids = int_column(records, id_field(data_type))
    times = int_column(records, time_field(data_type))
    return not len(records) or bool(
        times.min() >= hour_ms and times.max() < hour_ms + HOUR_MS and np.all(ids[1:] > ids[:-1])
    )


def encode_jsonl_gz(records: Sequence[Record], level: int = DEFAULT_GZIP_LEVEL) -> bytes:
    """Gzip JSONL with a zero header timestamp, so equal records always give equal bytes."""
    return encode_with_fingerprint(records, level)[0]


def _jsonl(records: Sequence[Record]) -> bytes:
    """JSON lines of flat records, serialized as one array and split at the record joints.

    One ``orjson.dumps`` per record costs ~10x more (each result carries its own buffer). The
    joints of a compact array of objects are exactly ``},{``; when a string value also holds
    that text (a dead-letter's raw payload can), the count says so and each record is
    serialized alone instead.
    """
    inner = orjson.dumps(list(records))[1:-1]
    if inner.count(b"},{") == len(records) - 1:
        return inner.replace(b"},{", b"}\n{") + b"\n"
    return b"\n".join(map(orjson.dumps, records)) + b"\n"


def _ingest_ts_zeroed(chunk: bytes, records: Sequence[Record]) -> bytes:
    """The JSONL ``chunk`` of ``records`` with every ``ingest_ts`` value zeroed.

    An archive file's records share one ``ingest_ts`` (the download's receive time): then, when
    the key occurs once per record and nowhere else, one plain replace of that value gives
    exactly what the regex gives, for about half its cost (measured on a day of trades).
    """
    values = {r.get(_IGNORED_IN_FINGERPRINT) for r in records}
    if len(values) == 1:
        (value,) = values
        # The regex zeroes digits only: a negative or non-integer value takes the regex.
        if type(value) is int and value >= 0 and chunk.count(_INGEST_TS_KEY) == len(records):
            return chunk.replace(_INGEST_TS_KEY + b"%d" % value, _INGEST_TS_ZERO)
    return _INGEST_TS.sub(_INGEST_TS_ZERO, chunk)


def encode_with_fingerprint(
    records: Sequence[Record], level: int = DEFAULT_GZIP_LEVEL
) -> tuple[bytes, str]:
    """The gzip JSONL body and the content fingerprint of ``records``, in one serialization.

    The fingerprint is the SHA-256 of the JSONL with every ``ingest_ts`` value zeroed: equal
    for two fetches of the same records, whatever their receive times.
    """
    # wbits=31 selects the gzip container; zlib writes mtime 0, unlike GzipFile's default.
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    if isinstance(records, EncodedRecords):
        # Already JSON lines: deflate on a second thread while this one hashes (both release
        # the GIL).
        def deflate() -> bytes:
            return b"".join([*map(compressor.compress, records.jsonl), compressor.flush()])

        with ThreadPoolExecutor(max_workers=1) as pool:
            body = pool.submit(deflate)
            masked = hashlib.sha256()
            for chunk in records.masked:
                masked.update(chunk)
            return body.result(), masked.hexdigest()
    digest = hashlib.sha256()
    parts: list[bytes] = []
    # zlib releases the GIL while it deflates: compressing chunk i on a second thread while
    # this one serializes and hashes chunk i+1 hides most of the serialization cost. The
    # deflating thread needs the GIL back for a moment per chunk, and orjson and re never give
    # it up: with the default 5 ms switch interval that wait costs ~40% of the write. A short
    # interval while we encode gets the overlap back (measured: 1.36 s -> 1.00 s per 1M
    # records, bare gzip of the same bytes 0.77 s).
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: deque[Future[bytes]] = deque()
            for i in range(0, len(records), CHUNK_RECORDS):
                part = records[i : i + CHUNK_RECORDS]
                chunk = _jsonl(part)
                digest.update(_ingest_ts_zeroed(chunk, part))
                pending.append(pool.submit(compressor.compress, chunk))
                if len(pending) > 2:
                    parts.append(pending.popleft().result())
            parts.extend(f.result() for f in pending)
    finally:
        sys.setswitchinterval(switch_interval)
    parts.append(compressor.flush())
    return b"".join(parts), digest.hexdigest()


def encode_coverage(spans: Iterable[Sequence[int]] | None, hour_ms: int) -> str | None:
    """The ``coverage`` metadata value of an hour's object (None: the whole hour)."""
    if spans is None:
        return None
    covered = clip(spans, hour_ms, hour_ms + HOUR_MS)
    if covered == ((hour_ms, hour_ms + HOUR_MS),):
        return None
    if len(covered) > MAX_COVERAGE_SPANS:
        longest = sorted(covered, key=lambda sp: (sp[0] - sp[1], sp[0]))[:MAX_COVERAGE_SPANS]
        covered = tuple(sorted(longest))
    return orjson.dumps([[a - hour_ms, b - hour_ms] for a, b in covered]).decode()


def decode_coverage(metadata: dict[str, str], hour_ms: int) -> Spans:
    """Covered spans (epoch ms) of an object from its S3 metadata."""
    value = metadata.get(COVERAGE_META)
    if value is None:
        return ((hour_ms, hour_ms + HOUR_MS),)
    return clip(
        ((hour_ms + a, hour_ms + b) for a, b in orjson.loads(value)), hour_ms, hour_ms + HOUR_MS
    )


@dataclass(frozen=True)
class TradeCoverage:
    """The individual trades an hour's aggTrades cover: ids ``first..last`` (the first
    aggTrade's ``f``, the last one's ``l``, by aggTrade id; None for an hour without aggTrades)
    and ``covered = sum(l - f + 1)`` over its ``aggs`` aggTrades."""

    aggs: int
    covered: int
    first: int | None = None
    last: int | None = None

    @classmethod
    def of(cls, aggs: Sequence[Record]) -> TradeCoverage:
        """Of aggTrades ordered by id (as a bronze object holds them)."""
        if not aggs:
            return cls(0, 0)
        firsts = int_column(aggs, "first_trade_id")
        lasts = int_column(aggs, "last_trade_id")
        covered = int((lasts - firsts + 1).sum())
        return cls(len(aggs), covered, int(firsts[0]), int(lasts[-1]))

    @property
    def bounds(self) -> tuple[int, int] | None:
        """``(first, last)`` trade id, or None for an hour without aggTrades."""
        return None if self.first is None or self.last is None else (self.first, self.last)

    def metadata(self) -> dict[str, str]:
        meta = {TRADES_COVERED_META: str(self.covered)}
        if self.bounds is not None:
            meta[FIRST_TRADE_ID_META], meta[LAST_TRADE_ID_META] = map(str, self.bounds)
        return meta

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> TradeCoverage | None:
        """From an object's S3 metadata; None when it predates these entries."""
        if TRADES_COVERED_META not in metadata or RECORDS_META not in metadata:
            return None
        first, last = metadata.get(FIRST_TRADE_ID_META), metadata.get(LAST_TRADE_ID_META)
        return cls(
            int(metadata[RECORDS_META]),
            int(metadata[TRADES_COVERED_META]),
            None if first is None else int(first),
            None if last is None else int(last),
        )


def decode_jsonl_gz(data: bytes) -> list[Record]:
    return [orjson.loads(line) for line in gzip.decompress(data).splitlines() if line]


def diff_records(old: Sequence[Record], new: Sequence[Record], data_type: str) -> dict[str, int]:
    """Counts of keys added, removed and changed (ignoring ``ingest_ts``) from old to new."""
    key = record_key(data_type)

    def strip(r: Record) -> Record:
        return {k: v for k, v in r.items() if k != _IGNORED_IN_FINGERPRINT}

    old_by_key = {key(r): strip(r) for r in old}
    new_by_key = {key(r): strip(r) for r in new}
    common = old_by_key.keys() & new_by_key.keys()
    return {
        "added": len(new_by_key.keys() - old_by_key.keys()),
        "removed": len(old_by_key.keys() - new_by_key.keys()),
        "changed": sum(old_by_key[k] != new_by_key[k] for k in common),
    }


@dataclass(frozen=True)
class WriteResult:
    bucket: str
    key: str
    records: int
    duplicates_dropped: int
    bytes: int
    fingerprint: str
    # "created", "unchanged" (the stored object was left as it was) or "replaced".
    action: str
    changes: dict[str, int] = field(default_factory=dict)
    first_key: Any = None
    last_key: Any = None
    # Covered spans of the hour (epoch ms): the whole hour unless the writer said otherwise.
    coverage: Spans = ()

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def partial(self) -> bool:
        return len(self.coverage) != 1 or self.coverage[0][1] - self.coverage[0][0] != HOUR_MS


class BronzeStore:
    """Reads and writes bronze objects in one bucket under one prefix."""

    def __init__(
        self, s3_client: Any, bucket: str, prefix: str, gzip_level: int = DEFAULT_GZIP_LEVEL
    ) -> None:
        self._s3 = s3_client
        self.bucket = bucket
        self.prefix = prefix
        self.gzip_level = gzip_level

    def key(self, symbol: str, data_type: str, hour_ms: int) -> str:
        return f"{self.prefix}/{hour_path(symbol, data_type, hour_ms)}"

    def head(self, symbol: str, data_type: str, hour_ms: int) -> dict[str, Any] | None:
        return head_or_none(self._s3, self.bucket, self.key(symbol, data_type, hour_ms))

    def read_hour(self, symbol: str, data_type: str, hour_ms: int) -> list[Record] | None:
        """The records of one bronze object, or None when it does not exist."""
        body = get_bytes_or_none(self._s3, self.bucket, self.key(symbol, data_type, hour_ms))
        return None if body is None else decode_jsonl_gz(body)

    def coverage(self, symbol: str, data_type: str, hour_ms: int) -> Spans | None:
        """The covered spans of an object (one HEAD), or None when it does not exist."""
        head = self.head(symbol, data_type, hour_ms)
        return None if head is None else decode_coverage(head.get("Metadata", {}), hour_ms)

    def trade_coverage(self, symbol: str, hour_ms: int) -> TradeCoverage | None:
        """What the hour's ``agg_trades`` object covers (one HEAD; an object written before
        the entries existed is read and decoded), or None when it does not exist."""
        head = self.head(symbol, AGG_TRADES, hour_ms)
        if head is None:
            return None
        known = TradeCoverage.from_metadata(head.get("Metadata", {}))
        if known is not None:
            return known
        aggs = self.read_hour(symbol, AGG_TRADES, hour_ms)
        return None if aggs is None else TradeCoverage.of(aggs)

    def write_hour(
        self,
        symbol: str,
        data_type: str,
        hour_ms: int,
        records: Iterable[Record],
        coverage: Iterable[Span] | None = None,
    ) -> WriteResult:
        """Write one hour's records as one object, idempotently (see the module docstring).
        ``coverage``: the spans of the hour the source covered (None: all of it)."""
        key = self.key(symbol, data_type, hour_ms)
        ordered, duplicates = prepare_records(records, data_type, hour_ms, symbol)
        body, fingerprint = encode_with_fingerprint(ordered, self.gzip_level)
        covered = encode_coverage(coverage, hour_ms)
        metadata = {FINGERPRINT_META: fingerprint, RECORDS_META: str(len(ordered))}
        if covered is not None:
            metadata[COVERAGE_META] = covered
        if data_type == AGG_TRADES:
            metadata.update(TradeCoverage.of(ordered).metadata())
        rkey = record_key(data_type)
        bounds: dict[str, Any] = {
            "first_key": rkey(ordered[0]) if ordered else None,
            "last_key": rkey(ordered[-1]) if ordered else None,
            "coverage": decode_coverage(metadata, hour_ms),
        }
        existing = self.head(symbol, data_type, hour_ms)
        stored = existing.get("Metadata", {}) if existing is not None else {}
        if (
            existing is not None
            and stored.get(FINGERPRINT_META) == fingerprint
            and stored.get(COVERAGE_META) == covered
        ):
            return WriteResult(
                self.bucket,
                key,
                len(ordered),
                duplicates,
                existing["ContentLength"],
                fingerprint,
                "unchanged",
                **bounds,
            )
        changes: dict[str, int] = {}
        if existing is not None:
            old = self.read_hour(symbol, data_type, hour_ms) or []
            changes = diff_records(old, ordered, data_type)
        # One PUT with a checksum: S3 stores the whole object or nothing, never a partial one.
        # CRC32 (S3's default) catches a damaged transfer as well as SHA-256 at a fraction of
        # the CPU; the content's identity is the fingerprint, not this checksum.
        self._s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            # No Content-Encoding: HTTP clients would inflate the body and break `.gz` readers.
            ContentType="application/gzip",
            ChecksumAlgorithm="CRC32",
            Metadata=metadata,
        )
        return WriteResult(
            self.bucket,
            key,
            len(ordered),
            duplicates,
            len(body),
            fingerprint,
            "replaced" if existing is not None else "created",
            changes,
            **bounds,
        )


def write_rejects(
    s3_client: Any,
    bucket: str,
    prefix: str,
    symbol: str,
    data_type: str,
    hour_ms: int,
    rejects: Sequence[dict[str, Any]],
) -> str:
    """Keep malformed payloads aside (dead-letter) with their reasons; returns the S3 URI.

    Same layout as bronze under ``prefix``, so a person finds the rejects of an hour next to it.
    """
    key = f"{prefix}/{hour_path(symbol, data_type, hour_ms)}"
    s3_client.put_object(
        Bucket=bucket,
        Key=key,
        Body=encode_jsonl_gz(rejects),
        ContentType="application/gzip",
        Metadata={RECORDS_META: str(len(rejects))},
    )
    return f"s3://{bucket}/{key}"
