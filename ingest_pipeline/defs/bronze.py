"""Bronze assets: one per symbol and REST data type, hourly partitions, keys ``bronze/S/type``.

``agg_trades``, ``trades`` and ``klines_<interval>`` are history: any closed hour can be
fetched (and re-fetched) at any time, from Binance's public archive where it holds the hour
(one file per symbol, type and day, downloaded once per run) and from REST otherwise
(``history_source``). Both give the same records; each hour's metadata says which one it came
from. ``depth_snapshot`` is the live book: Binance serves no past books, so only the hour in
progress can be captured, and a run over past hours skips it.

What a run records, one hour or a backfill's range alike (see ``defs/checks.py``):

- one materialization per hour, with *that hour's* figures only (row count, object URI and
  size, id and time range, preview, source), attached with ``add_asset_metadata(partition_key=)``;
  the run's ``MaterializeResult`` carries nothing, since Dagster copies its metadata onto every
  hour of the range;
- then one evaluation per hour and check, naming the hour's materialization, so that the check's
  partition view, counters and the hour's panel agree.

An asset that needs another bronze object of the same hours (``trades`` and ``klines`` read the
hour's ``agg_trades``) refuses the run before it writes anything when one is missing. Expected
conditions (a missing upstream hour, a symbol Binance does not list, Binance or the archive
unavailable after every retry) fail the step with a one-line ``dg.Failure``.
"""

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from ingest_pipeline import quality
from ingest_pipeline.binance.archive import ArchiveError
from ingest_pipeline.binance.history import (
    Fetched,
    HistorySource,
    HourFetch,
    fetch_depth_snapshot,
)
from ingest_pipeline.binance.rest import BinanceAPIError, BinanceUnavailable
from ingest_pipeline.defs.catalog import (
    catalog_fields,
    record_schema,
    symbol_key_part,
    with_code_references,
)
from ingest_pipeline.defs.checks import Check, check_specs, hour_evaluations, hour_partition_key
from ingest_pipeline.defs.history_source import history_source
from ingest_pipeline.defs.partitions import hourly_partitions, partition_hours
from ingest_pipeline.defs.resources import BinanceRestResource, BronzeResource
from ingest_pipeline.encoded import int_column
from ingest_pipeline.preview import human_size, preview_table
from ingest_pipeline.records import (
    AGG_TRADES,
    DEPTH_SNAPSHOT,
    TRADES,
    Record,
    id_field,
    klines_type,
    time_field,
)
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import BronzeStore, TradeCoverage, WriteResult
from ingest_pipeline.timeutil import HOUR_MS, floor_hour, from_ms, iso_ms, now_ms

LAYER = "bronze"
# The concurrency pool shared by everything that calls Binance (limit in dagster.yaml).
BINANCE_POOL = "binance"
# A month's backfill becomes ~30 runs of a day each instead of 720 single-hour runs.
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=24)
DEPTH_SNAPSHOT_LIMIT = 1000
# Binance's answer to a symbol it does not list (GET /api/v3/exchangeInfo?symbol=...).
INVALID_SYMBOL_CODE = -1121


def bronze_key(symbol: str, data_type: str, settings: Settings | None = None) -> dg.AssetKey:
    """``[bronze, symbol, data_type]``; the symbol as its key part (alias) from ``settings``."""
    return dg.AssetKey([LAYER, symbol_key_part(symbol, settings), data_type])


def _hours_text(hours: Sequence[int]) -> str:
    shown = ", ".join(f"{from_ms(h):%Y-%m-%d %H}h" for h in hours[:5])
    return shown + (f" and {len(hours) - 5} more" if len(hours) > 5 else "")


def upstream_missing(
    symbol: str, data_type: str, upstream: str, hours: Sequence[int]
) -> dg.Failure:
    return dg.Failure(
        description=f"{symbol} {data_type} needs the {upstream} of {_hours_text(hours)}, not in "
        f"bronze yet: materialize {upstream} for those hours first (nothing was written)",
    )


def require_upstream(
    store: BronzeStore, symbol: str, data_type: str, upstream: Sequence[str], hours: Sequence[int]
) -> None:
    """Refuse the run before anything is fetched or written when an upstream hour is missing."""
    for up in upstream:
        missing = [h for h in hours if store.head(symbol, up, h) is None]
        if missing:
            raise upstream_missing(symbol, data_type, up, missing)


@contextlib.contextmanager
def expected_failures(what: str) -> Iterator[None]:
    """Conditions a run can meet in normal operation become a one-line ``dg.Failure``."""
    try:
        yield
    except BinanceAPIError as exc:
        unlisted = exc.code == INVALID_SYMBOL_CODE
        raise dg.Failure(
            description=f"{what}: Binance does not list this symbol ({exc.msg})"
            if unlisted
            else f"{what}: Binance refused {exc.path}: HTTP {exc.status}, code {exc.code}: "
            f"{exc.msg}",
            allow_retries=False,
        ) from None
    except BinanceUnavailable as exc:
        raise dg.Failure(description=f"{what}: Binance REST unavailable: {exc}") from None
    except ArchiveError as exc:
        raise dg.Failure(description=f"{what}: Binance archive: {exc}") from None


# Fetches a run's hours in order: (source, store, symbol, hours) -> one HourFetch per hour.
HoursFetcher = Callable[[HistorySource, BronzeStore, str, list[int]], Iterator[HourFetch]]


@dataclass
class HourData:
    """What a check sees of one hour: the records as fetched (before dedup) and the store."""

    symbol: str
    data_type: str
    hour: int
    records: Sequence[Record]
    store: BronzeStore
    # The previous hour's records when this run wrote them, so checks need not read them back.
    previous: list[Record] | None = None

    def previous_hour(self) -> list[Record] | None:
        if self.previous is None:
            self.previous = self.store.read_hour(self.symbol, self.data_type, self.hour - HOUR_MS)
        return self.previous

    def other(self, data_type: str) -> list[Record] | None:
        return self.store.read_hour(self.symbol, data_type, self.hour)


@dataclass(frozen=True)
class BronzeType:
    data_type: str
    description: str
    fetch: HoursFetcher
    upstream: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()


def _klines_rule(interval: str) -> Callable[[HourData], quality.Verdict]:
    def rule(d: HourData) -> quality.Verdict:
        aggs = d.other(AGG_TRADES)
        if aggs is None:
            return quality.Verdict(False, "the hour's agg_trades are not in bronze to compare")
        return quality.check_klines(d.records, aggs, interval, d.hour)

    return rule


def _trades_rule(d: HourData) -> quality.Verdict:
    coverage = d.store.trade_coverage(d.symbol, d.hour) or TradeCoverage(0, 0)
    return quality.check_trades_match_agg_trades(d.records, coverage.covered, coverage.aggs)


TRADE_ID_CHECKS = (
    Check(
        "ids_contiguous",
        "Trade ids of the hour form one contiguous range (gaps listed with their ranges).",
        lambda d: quality.check_contiguous_ids(d.records, "trade_id"),
        blocking=True,
    ),
    Check(
        "no_duplicates",
        "Binance returned no trade id twice.",
        lambda d: quality.check_no_duplicates(d.records, "trade_id"),
    ),
    Check(
        "event_ts_in_hour",
        "Every record's event_ts falls in [hour, hour + 1h).",
        lambda d: quality.check_in_hour(d.records, "event_ts", d.hour),
        blocking=True,
    ),
    Check(
        "price_qty_positive",
        "Every price and quantity is > 0.",
        lambda d: quality.check_positive_price_qty(d.records, "trade_id"),
    ),
)


def _fetch_trades(
    source: HistorySource, store: BronzeStore, symbol: str, hours: list[int]
) -> Iterator[HourFetch]:
    def bounds_of(hour: int) -> tuple[int, int] | None:
        coverage = store.trade_coverage(symbol, hour)
        if coverage is None:  # checked before the run fetched anything; deleted since
            raise upstream_missing(symbol, TRADES, AGG_TRADES, [hour])
        return coverage.bounds

    return source.trades(symbol, hours, bounds_of)


def history_types(settings: Settings) -> list[BronzeType]:
    types = [
        BronzeType(
            AGG_TRADES,
            "Every aggregate trade in the hour (the archive's aggTrades file, else "
            "`GET /api/v3/aggTrades`): MarketTrade records with the first/last individual trade "
            "ids they cover.",
            lambda src, _s, sym, hours: src.agg_trades(sym, hours),
            checks=(
                *TRADE_ID_CHECKS,
                Check(
                    "continues_previous_hour",
                    "The first aggTrade id is the previous hour's last id + 1 (when that hour "
                    "is in bronze).",
                    lambda d: quality.check_continues_previous_hour(
                        d.records, d.previous_hour(), "trade_id"
                    ),
                ),
            ),
        ),
        BronzeType(
            TRADES,
            "Every individual trade in the hour (the archive's trades file, else "
            "`GET /api/v3/historicalTrades`), over the id range `[first f, last l]` of the "
            "hour's aggTrades.",
            _fetch_trades,
            upstream=(AGG_TRADES,),
            checks=(
                Check(
                    "count_matches_agg_trades",
                    "Trade count == sum(l - f + 1) over the hour's aggTrades.",
                    _trades_rule,
                    blocking=True,
                ),
                TRADE_ID_CHECKS[0],
            ),
        ),
    ]
    for interval in settings.kline_intervals:
        types.append(
            BronzeType(
                klines_type(interval),
                f"The hour's {interval} klines (the archive's klines file, else "
                "`GET /api/v3/klines`), by open time.",
                lambda src, _s, sym, hours, i=interval: src.klines(sym, i, hours),
                # The check compares the klines with the hour's trades: no run without them.
                upstream=(AGG_TRADES,),
                checks=(
                    Check(
                        "consistent_with_trades",
                        f"Exactly one {interval} kline per step; low <= open, close <= high; "
                        "volume and trade count equal the sums of the hour's aggTrades.",
                        _klines_rule(interval),
                        blocking=True,
                    ),
                ),
            )
        )
    return types


# --- per-hour metadata ------------------------------------------------------------------------


def hour_metadata(
    data_type: str, result: WriteResult, records: Sequence[Record], rejected: int
) -> dict[str, Any]:
    """One hour's figures: the object as written, its id and time range, a preview."""
    meta: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(result.records),
        "dagster/uri": dg.MetadataValue.text(result.uri),
        # Both: the UI's overview shows dagster/size_bytes with units and plots it per hour;
        # the hour's metadata table shows it as a bare integer, hence the readable one too.
        "dagster/size_bytes": dg.MetadataValue.int(result.bytes),
        "size": dg.MetadataValue.text(human_size(result.bytes)),
        "write_action": dg.MetadataValue.text(result.action),
        "rejected": dg.MetadataValue.int(rejected),
    }
    ident, when = id_field(data_type), time_field(data_type)
    if result.first_key is not None and ident != when:
        meta[f"first_{ident}"] = dg.MetadataValue.int(result.first_key[-1])
        meta[f"last_{ident}"] = dg.MetadataValue.int(result.last_key[-1])
    if records:
        times = int_column(records, when)
        meta[f"first_{when}"] = dg.MetadataValue.text(iso_ms(int(times.min())))
        meta[f"last_{when}"] = dg.MetadataValue.text(iso_ms(int(times.max())))
    if result.changes:
        meta["changes"] = dg.MetadataValue.json(result.changes)
    meta["preview"] = dg.MetadataValue.md(preview_table(records, data_type))
    return meta


def _source_metadata(got: HourFetch) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "source": dg.MetadataValue.text(got.source),
        "source_detail": dg.MetadataValue.text(got.reason),
    }
    if got.archive_file:
        meta["archive_file"] = dg.MetadataValue.text(got.archive_file)
    if got.invalid_marked:
        meta["archive_rows_marked_invalid"] = dg.MetadataValue.int(got.invalid_marked)
    return meta


def land_hour(
    context: dg.AssetExecutionContext,
    bronze: BronzeResource,
    store: BronzeStore,
    symbol: str,
    data_type: str,
    hour: int,
    fetched: Fetched,
) -> WriteResult:
    """Write one hour (and dead-letter its malformed payloads), saying so in the run's log."""
    if fetched.rejects:
        uri = bronze.write_rejects(symbol, data_type, hour, fetched.rejects)
        context.log.warning(
            f"{symbol} {data_type} {from_ms(hour):%Y-%m-%d %H}h: {len(fetched.rejects)} "
            f"malformed payloads kept aside at {uri}; first reason: "
            f"{fetched.rejects[0]['reason']}"
        )
    result = store.write_hour(symbol, data_type, hour, fetched.records)
    if result.changes:
        context.log.warning(f"{result.uri} replaced, records changed: {result.changes}")
    context.log.info(
        f"{result.uri}: {result.records} records, {human_size(result.bytes)}, {result.action}"
    )
    return result


def asset_definition_metadata(
    settings: Settings, symbol: str, data_type: str
) -> tuple[dict[str, Any], str]:
    """(catalog fields incl. metadata, the S3 prefix of the asset's objects)."""
    prefix = f"s3://{settings.bucket}/{settings.bronze_prefix}/{symbol}/{data_type}/"
    fields = catalog_fields(LAYER, settings, symbol, data_type, prefix)
    fields["metadata"]["s3_layout"] = dg.MetadataValue.text(prefix + "yyyy=YYYY/mm=MM/dd=DD/hh=HH/")
    fields["metadata"]["dagster/column_schema"] = record_schema(data_type)
    return fields, prefix


def bronze_asset(
    key: dg.AssetKey,
    settings: Settings,
    symbol: str,
    data_type: str,
    *,
    kinds: set[str],
    partitions: dg.PartitionsDefinition,
    description: str,
    checks: Sequence[Check],
    skippable: bool = False,
    deps: Sequence[dg.AssetKey] = (),
    metadata: dict[str, Any] | None = None,
    pool: str | None = None,
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """One bronze asset with its per-hour checks.

    A multi_asset for ``can_subset=True``, which makes the check outputs optional: the body
    reports each hour's evaluations itself (``defs/checks.py``). ``skippable``: a run may end
    without a materialization (past books, hours still open).
    """
    fields, _ = asset_definition_metadata(settings, symbol, data_type)
    fields["metadata"].update(metadata or {})
    return dg.multi_asset(
        specs=[
            dg.AssetSpec(
                key,
                deps=list(deps),
                kinds=kinds,
                partitions_def=partitions,
                skippable=skippable,
                description=description,
                **fields,
            )
        ],
        name=key.to_python_identifier(),
        partitions_def=partitions,
        backfill_policy=BACKFILL_POLICY,
        pool=pool,
        can_subset=True,
        check_specs=check_specs(key, checks, partitions),
    )


def _only_checks_selected(context: dg.AssetExecutionContext, key: dg.AssetKey) -> bool:
    if key in context.selected_asset_keys:
        return False
    context.log.info(
        f"{'/'.join(key.path)} not selected: its checks evaluate what a run lands, so a run "
        "of the checks alone has nothing to evaluate; materialize the asset instead"
    )
    return True


def build_history_asset(symbol: str, kind: BronzeType, settings: Settings) -> dg.AssetsDefinition:
    key = bronze_key(symbol, kind.data_type, settings)

    @bronze_asset(
        key,
        settings,
        symbol,
        kind.data_type,
        deps=[bronze_key(symbol, u, settings) for u in kind.upstream],
        kinds={"s3", "binance"},
        partitions=hourly_partitions(settings),
        pool=BINANCE_POOL,
        description=f"{symbol}: {kind.description} Gzip JSONL, one object per hour.",
        checks=kind.checks,
    )
    def _asset(
        context: dg.AssetExecutionContext, binance: BinanceRestResource, bronze: BronzeResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckEvaluation]:
        if _only_checks_selected(context, key):
            return
        hours = list(partition_hours(context))
        store = bronze.get_store()
        require_upstream(store, symbol, kind.data_type, kind.upstream, hours)
        client = binance.get_client()
        verdicts: dict[int, dict[str, quality.Verdict]] = {}
        by_source: dict[str, int] = {}
        with expected_failures(f"{symbol} {kind.data_type}"):
            # Checks the symbol is listed (and adopts Binance's announced weight limit).
            client.exchange_info(symbol)
            source = history_source(context, settings, client, hours)
            previous: list[Record] = []
            for got in kind.fetch(source, store, symbol, hours):
                hour, records = got.hour, got.fetched.records
                result = land_hour(
                    context, bronze, store, symbol, kind.data_type, hour, got.fetched
                )
                context.add_asset_metadata(
                    {
                        **hour_metadata(kind.data_type, result, records, len(got.fetched.rejects)),
                        **_source_metadata(got),
                    },
                    asset_key=key,
                    partition_key=hour_partition_key(hour),
                )
                data = HourData(symbol, kind.data_type, hour, records, store, previous or None)
                verdicts[hour] = {check.name: check.rule(data) for check in kind.checks}
                previous = records
                by_source[got.source] = by_source.get(got.source, 0) + 1
        if sorted(verdicts) != hours:
            landed = [f"{from_ms(h):%Y-%m-%d %H}h" for h in sorted(verdicts)]
            raise dg.Failure(
                description=f"{symbol} {kind.data_type}: the source delivered {landed}, not "
                f"the run's {len(hours)} hours"
            )
        if len(hours) > 1:
            context.log.info(
                f"{symbol} {kind.data_type}: {len(hours)} hours landed, by source {by_source}"
            )
        # No metadata here: Dagster would copy it onto every hour of a range.
        yield dg.MaterializeResult(asset_key=key)
        yield from hour_evaluations(context, key, kind.checks, verdicts)

    return _asset


BOOK_CHECK = Check(
    "book_valid",
    "Bids strictly descending, asks strictly ascending, best bid < best ask, no zero size.",
    lambda d: (
        quality.check_book(d.records[-1])
        if d.records
        else quality.Verdict(False, "no valid snapshot was captured")
    ),
    blocking=True,
)


def build_depth_snapshot_asset(symbol: str, settings: Settings) -> dg.AssetsDefinition:
    partitions = hourly_partitions(settings, end_offset=1)
    key = bronze_key(symbol, DEPTH_SNAPSHOT, settings)

    @bronze_asset(
        key,
        settings,
        symbol,
        DEPTH_SNAPSHOT,
        kinds={"s3", "binance"},
        partitions=partitions,
        description=(
            f"{symbol}: the live order book (`GET /api/v3/depth`, {DEPTH_SNAPSHOT_LIMIT} levels) "
            "with Binance's server time. Binance serves no past books: only the hour in "
            "progress can be captured; runs over past hours skip it without failing."
        ),
        checks=[BOOK_CHECK],
        skippable=True,
        pool=BINANCE_POOL,
    )
    def _asset(
        context: dg.AssetExecutionContext, binance: BinanceRestResource, bronze: BronzeResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckEvaluation]:
        if _only_checks_selected(context, key):
            return
        hours = list(partition_hours(context))
        current = floor_hour(now_ms())
        if hours != [current]:
            # A ranged run marks every partition of its range: it may only capture when its
            # range is exactly the hour in progress.
            context.log.info(
                f"{symbol} depth_snapshot skipped for {len(hours)} hour(s) from "
                f"{from_ms(hours[0]):%Y-%m-%d %H}h: Binance serves only the live book, "
                "which belongs to the hour in progress"
            )
            return
        client = binance.get_client()
        with expected_failures(f"{symbol} depth_snapshot"):
            client.exchange_info(symbol)
            fetched = fetch_depth_snapshot(client, symbol, DEPTH_SNAPSHOT_LIMIT)
        snapshot_hours = {floor_hour(r["timestamp"]) for r in fetched.records}
        if snapshot_hours - {current}:
            context.log.info(f"{symbol} depth snapshot taken after the hour ended: skipped")
            return
        store = bronze.get_store()
        # Captures accumulate: every snapshot of the hour is a resync point for a book rebuild.
        captured = fetched.records
        fetched.records = [*(store.read_hour(symbol, DEPTH_SNAPSHOT, current) or []), *captured]
        result = land_hour(context, bronze, store, symbol, DEPTH_SNAPSHOT, current, fetched)
        meta = hour_metadata(DEPTH_SNAPSHOT, result, fetched.records, len(fetched.rejects))
        if captured:
            snap = captured[-1]
            meta["captured_update_id"] = dg.MetadataValue.int(snap["last_update_id"])
            meta["captured_server_time"] = dg.MetadataValue.text(iso_ms(snap["timestamp"]))
            meta["bid_levels"] = dg.MetadataValue.int(len(snap["bids"]))
            meta["ask_levels"] = dg.MetadataValue.int(len(snap["asks"]))
        context.add_asset_metadata(meta, asset_key=key, partition_key=hour_partition_key(current))
        data = HourData(symbol, DEPTH_SNAPSHOT, current, captured, store)
        yield dg.MaterializeResult(asset_key=key)
        yield from hour_evaluations(
            context, key, [BOOK_CHECK], {current: {BOOK_CHECK.name: BOOK_CHECK.rule(data)}}
        )

    return _asset


def build_bronze_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    assets = []
    for symbol in settings.symbols:
        assets += [build_history_asset(symbol, kind, settings) for kind in history_types(settings)]
        assets.append(build_depth_snapshot_asset(symbol, settings))
    return with_code_references(assets)


def build_agg_trades_asset(symbol: str, settings: Settings) -> dg.AssetsDefinition:
    return build_history_asset(symbol, history_types(settings)[0], settings)
