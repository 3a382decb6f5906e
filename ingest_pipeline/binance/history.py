"""History hour by hour, normalized: the I/O edge between the Binance clients and records.

The ``fetch_*`` functions take one hour from REST; :class:`HistorySource` chooses per hour
between Binance's public archive (one file per symbol, type and day or month) and REST. Each
returns every record of its slice plus every payload that could not become a record (with its
reason), so a caller can land the one and dead-letter the other.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from ingest_pipeline.binance.archive import (
    DAY_MS,
    MONTHLY,
    ArchiveClient,
    ArchiveError,
    ArchiveFile,
    ArchiveFormatError,
    Download,
    daily_file,
    day_start,
    month_bounds,
    monthly_file,
)
from ingest_pipeline.binance.archive_csv import HourRecords, parse_hours
from ingest_pipeline.binance.normalize import (
    agg_trade_from_rest,
    depth_snapshot_from_rest,
    kline_from_rest,
    normalize_page,
    trade_from_rest,
)
from ingest_pipeline.binance.rest import BinanceRestClient, Page, read_ahead
from ingest_pipeline.encoded import int_column
from ingest_pipeline.records import (
    AGG_TRADES,
    KLINE_WIDTH_MS,
    TRADES,
    MalformedPayload,
    Record,
    klines_type,
)
from ingest_pipeline.settings import HISTORY_SOURCES
from ingest_pipeline.timeutil import HOUR_MS, now_ms

log = logging.getLogger(__name__)


@dataclass
class Fetched:
    # A list, or an archive hour's JSON lines (``EncodedRecords``).
    records: Sequence[Record] = field(default_factory=list)
    # {"reason": ..., "raw": ...} for each payload that could not become a record.
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def add_pages(
        self, pages: Iterable[Page], fn: Callable[..., Mapping[str, Any]], **kwargs: Any
    ) -> None:
        for page in pages:
            good, bad = normalize_page(fn, page.items, ingest_ts=page.received_ms, **kwargs)
            assert isinstance(self.records, list), "pages add to REST's records only"
            self.records.extend(good)
            self.rejects.extend({"reason": r.reason, "raw": r.raw} for r in bad)


def fetch_agg_trades(client: BinanceRestClient, symbol: str, hour_ms: int) -> Fetched:
    out = Fetched()
    out.add_pages(
        read_ahead(client.agg_trades_hour(symbol, hour_ms)), agg_trade_from_rest, symbol=symbol
    )
    return out


def fetch_trades(client: BinanceRestClient, symbol: str, first_id: int, last_id: int) -> Fetched:
    """The individual trades ``first_id..last_id`` (an hour's range comes from its aggTrades)."""
    out = Fetched()
    out.add_pages(
        read_ahead(client.historical_trades_range(symbol, first_id, last_id)),
        trade_from_rest,
        symbol=symbol,
    )
    return out


def fetch_klines(client: BinanceRestClient, symbol: str, interval: str, hour_ms: int) -> Fetched:
    out = Fetched()
    out.add_pages(
        client.klines(symbol, interval, hour_ms, hour_ms + HOUR_MS),
        kline_from_rest,
        symbol=symbol,
        interval=interval,
    )
    return out


def fetch_depth_snapshot(client: BinanceRestClient, symbol: str, limit: int) -> Fetched:
    """The live book, stamped with Binance's clock (local receive time + measured offset)."""
    time_page = client.get("/api/v3/time", {}, 1)
    offset = int(time_page.items["serverTime"]) - time_page.received_ms
    page = client.depth(symbol, limit)
    out = Fetched()
    try:
        out.records = [
            cast(
                Record,
                depth_snapshot_from_rest(
                    page.items, symbol, page.received_ms + offset, page.received_ms
                ),
            )
        ]
    except MalformedPayload as exc:
        out.rejects.append({"reason": exc.reason, "raw": exc.raw})
    return out


# ----------------------------------------------------------------------------------------------
# Source choice: Binance's public archive where it holds the hours, REST for the rest.

# Per-hour marker of where an hour's records came from (asset metadata, not the records: both
# sources give the same records, so the marker stays out of bronze and its fingerprint).
FROM_ARCHIVE = "archive"
FROM_REST = "rest"
MINUTE_MS = 60_000
# Binance publishes a daily file about a day after the day ends, sometimes days later: a file
# missing for less than this is routine (logged at INFO), one missing longer a defect (WARNING).
PUBLICATION_LAG_MS = 3 * 24 * HOUR_MS
# The archive's 1m klines count each minute's trades: the reference a trades file is held to.
REFERENCE_KLINES = klines_type("1m")


@dataclass
class HourFetch:
    """One hour's records and where they came from (and why, when not from the archive)."""

    hour: int
    fetched: Fetched
    source: str
    reason: str
    archive_file: str | None = None
    # Rows of the archive hour Binance marked invalid (aggTrades p=0 q=0 f=-1 l=-1).
    invalid_marked: int = 0


@dataclass(frozen=True)
class FilePlan:
    """Hours served by one archive file, or (``file`` None) by REST with the reason."""

    file: ArchiveFile | None
    hours: tuple[int, ...]
    reason: str = ""


def plan_files(
    symbol: str, data_type: str, hours: Iterable[int], now_ms: int, monthly: bool = True
) -> list[FilePlan]:
    """Split hours into archive files: a month when every hour of a closed month is asked,
    else a day per closed UTC day; hours of a day not over yet can only come from REST.

    One file per symbol, type and day (or month), whatever the number of its hours asked.
    """
    ordered = sorted(set(hours))
    plans: list[FilePlan] = []
    i = 0
    while i < len(ordered):
        h = ordered[i]
        m0, m1 = month_bounds(h)
        month_hours = [x for x in ordered[i:] if x < m1]
        if monthly and m1 <= now_ms and len(month_hours) == (m1 - m0) // HOUR_MS:
            plans.append(FilePlan(monthly_file(symbol, data_type, h), tuple(month_hours)))
            i += len(month_hours)
            continue
        d0 = day_start(h)
        day_hours = tuple(x for x in ordered[i:] if x < d0 + DAY_MS)
        if d0 + DAY_MS <= now_ms:
            plans.append(FilePlan(daily_file(symbol, data_type, h), day_hours))
        else:
            plans.append(FilePlan(None, day_hours, "the UTC day is not over: not archived yet"))
        i += len(day_hours)
    return plans


def expected_kline_opens(interval: str, hour: int) -> list[int]:
    """Open times of the ``interval`` klines that open inside ``[hour, hour + 1h)``."""
    if interval == "1M":
        start = month_bounds(hour)[0]
        return [start] if start == hour else []
    width = KLINE_WIDTH_MS[interval]
    offset = WEEK_OFFSET_MS if interval == "1w" else 0
    first = hour + (-(hour - offset)) % width
    return list(range(first, hour + HOUR_MS, width))


# Binance weeks open on Monday 00:00 UTC; 1970-01-01 was a Thursday.
WEEK_OFFSET_MS = 4 * DAY_MS


def check_agg_hour(records: Sequence[Record], reference_count: int | None) -> str | None:
    """Why an archive hour of aggTrades cannot be trusted, or None: ids must be contiguous,
    each aggregate must start where the previous one ended, and the trades they cover must be
    as many as Binance's 1m klines count in the hour (a cut file fails here)."""
    if reference_count is None:
        return "no trade count to hold the hour against (1m klines unavailable)"
    # Whole columns at C speed (a day is ~2M aggTrades).
    ids, firsts, lasts = (
        int_column(records, k) for k in ("trade_id", "first_trade_id", "last_trade_id")
    )
    jumps = np.flatnonzero((ids[1:] != ids[:-1] + 1) | (firsts[1:] != lasts[:-1] + 1))
    if jumps.size:
        i = int(jumps[0]) + 1
        return f"ids jump from aggTrade {ids[i - 1]} (l={lasts[i - 1]}) to {ids[i]} (f={firsts[i]})"
    covered = int((lasts - firsts + 1).sum())
    if covered != reference_count:
        return (
            f"the file covers {covered} trades, Binance's 1m klines count {reference_count}: "
            "truncated or padded"
        )
    return None


def check_trade_hour(records: Sequence[Record], bounds: tuple[int, int] | None) -> str | None:
    """Why an archive hour of trades cannot be trusted, or None: its ids must be exactly the
    range ``bounds`` = ``(first f, last l)`` of the hour's aggTrades (None: no aggTrade)."""
    if bounds is None:
        return None if not records else f"{len(records)} trades in an hour without aggTrades"
    first, last = bounds
    ids = int_column(records, "trade_id")
    if len(ids) != last - first + 1 or not np.array_equal(ids, np.arange(first, last + 1)):
        return f"{len(ids)} trades in the file, the hour's aggTrades cover ids {first}..{last}"
    return None


def check_kline_hour(records: Sequence[Record], interval: str, hour: int) -> str | None:
    opens = [k["open_time"] for k in records]
    expected = expected_kline_opens(interval, hour)
    if opens != expected:
        return f"{len(opens)} {interval} klines in the file, {len(expected)} expected"
    return None


class HistorySource:
    """History hour by hour from the archive where it can be trusted, else from REST.

    ``mode`` is ``auto`` (archive first, REST for the hours it cannot serve), ``rest`` (REST
    only) or ``archive`` (archive only: an hour it cannot serve raises ArchiveError).
    """

    def __init__(
        self,
        rest: BinanceRestClient,
        archive: ArchiveClient | None,
        mode: str = "auto",
        now: Callable[[], int] = now_ms,
        monthly: bool = True,
    ) -> None:
        if mode not in HISTORY_SOURCES:
            raise ValueError(f"history source {mode!r} is not one of {HISTORY_SOURCES}")
        if mode != "rest" and archive is None:
            raise ValueError(f"history source {mode!r} needs an archive client")
        self.rest = rest
        self.archive = archive
        self.mode = mode
        self.now = now
        self.monthly = monthly
        self._counts: dict[ArchiveFile, dict[int, int]] = {}
        # Reference files downloaded for their counts, until a klines_1m landing uses them.
        self._kept: dict[ArchiveFile, Download] = {}

    def close(self) -> None:
        """Delete the reference files no landing has used (a run's other steps may want them
        from the archive client's work dir: Dagster assets leave them for the klines asset)."""
        assert self.archive is not None or not self._kept
        for download in self._kept.values():
            self.archive.release(download)  # type: ignore[union-attr]
        self._kept.clear()

    # --- per data type ------------------------------------------------------------------

    def agg_trades(self, symbol: str, hours: Iterable[int]) -> Iterator[HourFetch]:
        def rest(h: int) -> Fetched:
            return fetch_agg_trades(self.rest, symbol, h)

        def check(f: ArchiveFile, h: int, records: Sequence[Record]) -> str | None:
            problem = check_agg_hour(records, self._trade_count(symbol, f, h))
            if problem is None and not records and self.mode == "auto":
                # Both files say no trade: ask REST before believing an empty hour.
                probe = self.rest.agg_trades_page(
                    symbol, startTime=h, endTime=h + HOUR_MS - 1, limit=1
                )
                if probe.items:
                    problem = "the hour is empty in the file, but REST has trades in it"
            return problem

        return self._hours(symbol, AGG_TRADES, hours, check, rest)

    def trades(
        self,
        symbol: str,
        hours: Iterable[int],
        bounds_of: Callable[[int], tuple[int, int] | None],
    ) -> Iterator[HourFetch]:
        """``bounds_of(hour)``: the first ``f`` and last ``l`` of the hour's aggTrades in
        bronze (None: the hour has none), the range of its trade ids."""
        bounds: dict[int, tuple[int, int] | None] = {}

        def hour_bounds(h: int) -> tuple[int, int] | None:
            if h not in bounds:
                bounds[h] = bounds_of(h)
            return bounds[h]

        def rest(h: int) -> Fetched:
            b = hour_bounds(h)
            return Fetched() if b is None else fetch_trades(self.rest, symbol, *b)

        def check(f: ArchiveFile, h: int, records: Sequence[Record]) -> str | None:
            return check_trade_hour(records, hour_bounds(h))

        return self._hours(symbol, TRADES, hours, check, rest)

    def klines(self, symbol: str, interval: str, hours: Iterable[int]) -> Iterator[HourFetch]:
        def rest(h: int) -> Fetched:
            return fetch_klines(self.rest, symbol, interval, h)

        def check(f: ArchiveFile, h: int, records: Sequence[Record]) -> str | None:
            return check_kline_hour(records, interval, h)

        return self._hours(symbol, klines_type(interval), hours, check, rest)

    # --- engine -------------------------------------------------------------------------

    def _hours(
        self,
        symbol: str,
        data_type: str,
        hours: Iterable[int],
        check: Callable[[ArchiveFile, int, Sequence[Record]], str | None],
        rest: Callable[[int], Fetched],
    ) -> Iterator[HourFetch]:
        hours = sorted(set(hours))
        if self.mode == "rest":
            for h in hours:
                yield HourFetch(h, rest(h), FROM_REST, "history_source is rest")
            return
        for plan in plan_files(symbol, data_type, hours, self.now(), self.monthly):
            if plan.file is None:
                yield from self._fallback(plan.hours, rest, plan.reason, expected=True)
            else:
                yield from self._from_file(plan.file, plan.hours, check, rest)

    def _fallback(
        self,
        hours: Iterable[int],
        rest: Callable[[int], Fetched],
        reason: str,
        expected: bool = False,
    ) -> Iterator[HourFetch]:
        """REST for ``hours``; ``expected``: the archive cannot have them yet (the day is not
        over, or not long enough for Binance to publish it), which is routine, not a warning."""
        hours = list(hours)
        if not hours:
            return
        if self.mode == "archive":
            raise ArchiveError(f"{reason}; history_source is archive, so REST may not fill in")
        log.log(
            logging.INFO if expected else logging.WARNING,
            "%d hour(s) from REST: %s",
            len(hours),
            reason,
        )
        for h in hours:
            yield HourFetch(h, rest(h), FROM_REST, reason)

    def _from_file(
        self,
        f: ArchiveFile,
        hours: Sequence[int],
        check: Callable[[ArchiveFile, int, Sequence[Record]], str | None],
        rest: Callable[[int], Fetched],
    ) -> Iterator[HourFetch]:
        assert self.archive is not None
        try:
            download = self._kept.pop(f, None) or self.archive.fetch(f)
        except ArchiveError as exc:
            yield from self._fallback(hours, rest, f"archive {f.name}: {exc}")
            return
        if download is None:
            if f.period == MONTHLY:
                # Not published yet (or never): the month's daily files may be.
                for day in range(f.start_ms, f.end_ms, DAY_MS):
                    day_hours = [h for h in hours if day <= h < day + DAY_MS]
                    yield from self._from_file(
                        daily_file(f.symbol, f.data_type, day), day_hours, check, rest
                    )
                return
            ended_ago = self.now() - f.end_ms
            unpublished = ended_ago < PUBLICATION_LAG_MS
            reason = (
                f"{f.name} is not published yet (its period ended {ended_ago // HOUR_MS} h ago)"
                if unpublished
                else f"{f.name} is not in the archive"
            )
            yield from self._fallback(hours, rest, reason, expected=unpublished)
            return
        pending = deque(hours)

        def judged(h: int, part: HourRecords) -> HourFetch:
            problem = (
                f"{len(part.rejects)} row(s) rejected ({part.invalid_marked} marked invalid "
                "by Binance)"
                if part.rejects
                else check(f, h, part.records)
            )
            if problem is None:
                return HourFetch(
                    h, Fetched(part.records), FROM_ARCHIVE, f.name, f.path, part.invalid_marked
                )
            reason = f"{f.name}: {problem}"
            if self.mode == "archive":
                raise ArchiveError(f"{reason}; history_source is archive, so REST may not fill in")
            log.warning("%s %dh from REST: %s", f.symbol, h, reason)
            fetched = rest(h)
            # The archive's unusable rows are dead-lettered with the hour, as REST's would be.
            fetched.rejects.extend(
                {"reason": f"{f.name}: {r['reason']}", "raw": r["raw"]} for r in part.rejects
            )
            return HourFetch(h, fetched, FROM_REST, reason, f.path, part.invalid_marked)

        try:
            for part in parse_hours(download.path, f.data_type, f.symbol, download.received_ms):
                while pending and pending[0] < part.hour:
                    h = pending.popleft()
                    yield judged(h, HourRecords(h))
                if pending and pending[0] == part.hour:
                    pending.popleft()
                    yield judged(part.hour, part)
                if not pending:
                    break
            while pending:
                h = pending.popleft()
                yield judged(h, HourRecords(h))
        except ArchiveFormatError as exc:
            yield from self._fallback(list(pending), rest, f"{f.name}: {exc}")
        finally:
            self.archive.release(download)

    def _trade_count(self, symbol: str, f: ArchiveFile, hour: int) -> int | None:
        """Trades in ``hour`` by Binance's 1m klines: the archive's (same period as ``f``) when
        the hour has all 60 of them, else REST's (auto mode only)."""
        ref = ArchiveFile(symbol, REFERENCE_KLINES, f.period, f.start_ms, f.end_ms)
        if ref not in self._counts:
            self._counts[ref] = self._archive_counts(ref)
        count = self._counts[ref].get(hour)
        if count is None and self.mode == "auto":
            fetched = fetch_klines(self.rest, symbol, "1m", hour)
            if check_kline_hour(fetched.records, "1m", hour) is None:
                count = sum(k["trade_count"] for k in fetched.records)
        return count

    def _archive_counts(self, ref: ArchiveFile) -> dict[int, int]:
        assert self.archive is not None
        try:
            download = self.archive.fetch(ref)
        except ArchiveError as exc:
            log.warning("archive %s unusable as a trade count reference: %s", ref.name, exc)
            return {}
        if download is None:
            return {}
        self._kept[ref] = download
        counts: dict[int, int] = {}
        try:
            # Kept on disk: the run's klines asset lands the same file without downloading it.
            for part in parse_hours(download.path, REFERENCE_KLINES, ref.symbol, 0):
                if not part.rejects and check_kline_hour(part.records, "1m", part.hour) is None:
                    counts[part.hour] = sum(k["trade_count"] for k in part.records)
        except ArchiveFormatError as exc:
            log.warning("archive %s unusable as a trade count reference: %s", ref.name, exc)
        return counts
