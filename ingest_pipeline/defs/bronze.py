"""Bronze assets: one per symbol and REST data type, hourly partitions, keys ``bronze/S/type``.

``agg_trades``, ``trades`` and ``klines_<interval>`` are history: any closed hour can be
fetched (and re-fetched) at any time, from Binance's public archive where it holds the hour
(one file per symbol, type and day, downloaded once per run) and from REST otherwise
(``history_source``). Both give the same records; each hour's metadata says which one it came
from. ``depth_snapshot`` is the live book: Binance serves no past books, so only the hour in
progress can be captured, and a run over past hours skips it.
"""

import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from ingest_pipeline import quality
from ingest_pipeline.binance.archive import DAY_MS, ArchiveClient
from ingest_pipeline.binance.history import (
    Fetched,
    HistorySource,
    HourFetch,
    fetch_depth_snapshot,
)
from ingest_pipeline.binance.rest import BinanceRestClient
from ingest_pipeline.defs.checks import (
    Check,
    check_results,
    check_specs,
    hour_partition_key,
    overall_result,
)
from ingest_pipeline.defs.partitions import hourly_partitions, partition_hours
from ingest_pipeline.defs.resources import BinanceRestResource, BronzeResource
from ingest_pipeline.records import AGG_TRADES, DEPTH_SNAPSHOT, TRADES, Record, klines_type
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import BronzeStore, WriteResult
from ingest_pipeline.symbols import asset_key_part
from ingest_pipeline.timeutil import HOUR_MS, floor_hour, from_ms, now_ms

BRONZE_GROUP = "bronze"
# The concurrency pool shared by everything that calls Binance (limit in dagster.yaml).
BINANCE_POOL = "binance"
# A month's backfill becomes ~30 runs of a day each instead of 720 single-hour runs. The policy
# is marked beta; DESIGN.md chose it knowingly, so its warning would only be noise.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=24)
DEPTH_SNAPSHOT_LIMIT = 1000


def bronze_key(symbol: str, data_type: str) -> dg.AssetKey:
    return dg.AssetKey(["bronze", asset_key_part(symbol), data_type])


class UpstreamMissing(Exception):
    """A partition needs another bronze object of the same hour that does not exist yet."""


# Fetches a run's hours in order: (source, store, symbol, hours) -> one HourFetch per hour.
HoursFetcher = Callable[[HistorySource, BronzeStore, str, list[int]], Iterator[HourFetch]]


@dataclass
class HourData:
    """What a check sees of one hour: the records as fetched (before dedup) and the store."""

    symbol: str
    data_type: str
    hour: int
    records: list[Record]
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
    # Name of the id in the record key, shown as first_<id_name> / last_<id_name>.
    id_name: str
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
    return quality.check_trades_match_agg_trades(d.records, d.other(AGG_TRADES) or [])


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
    def aggs_of(hour: int) -> list[Record]:
        aggs = store.read_hour(symbol, AGG_TRADES, hour)
        if aggs is None:
            raise UpstreamMissing(
                f"{symbol} trades for {from_ms(hour):%Y-%m-%d %H}h need that hour's agg_trades, "
                "which are not in bronze yet: materialize agg_trades first"
            )
        return aggs

    return source.trades(symbol, hours, aggs_of)


def history_types(settings: Settings) -> list[BronzeType]:
    types = [
        BronzeType(
            AGG_TRADES,
            "Every aggregate trade in the hour (the archive's aggTrades file, else "
            "`GET /api/v3/aggTrades`): MarketTrade records with the first/last individual trade "
            "ids they cover.",
            lambda src, _s, sym, hours: src.agg_trades(sym, hours),
            "trade_id",
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
            "trade_id",
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
                "open_time",
                # Read after agg_trades so the check can compare the klines with the trades.
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


def _hour_row(hour_ms: int, result: WriteResult, rejected: int, source: str) -> dict[str, Any]:
    return {
        "hour": f"{from_ms(hour_ms):%Y-%m-%d %H:00}",
        "source": source,
        "records": result.records,
        "first_id": result.first_key[-1] if result.first_key else None,
        "last_id": result.last_key[-1] if result.last_key else None,
        "bytes": result.bytes,
        "action": result.action,
        "rejected": rejected,
        "uri": result.uri,
    }


PREVIEW_ROWS = 5


def _md_table(rows: Sequence[dict[str, Any]]) -> str:
    def cell(v: Any) -> str:
        text = str(v)
        # Book levels would make a preview unreadable: show their size only.
        if isinstance(v, list):
            text = f"[{len(v)} levels]"
        return text.replace("|", "\\|")

    header = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    return header + "".join("| " + " | ".join(map(cell, r.values())) + " |\n" for r in rows)


def _metadata(
    rows: list[dict[str, Any]],
    id_name: str,
    changes: dict[str, int],
    preview: Sequence[Record] = (),
) -> dict[str, Any]:
    """Per-partition metadata for a one-hour run; totals plus a per-hour table for a range.

    A ranged (backfill) run records one materialization per partition with the same
    metadata, so the table is what tells the hours apart there.
    """
    total = sum(r["records"] for r in rows)
    meta: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(total),
        "records": dg.MetadataValue.int(total),
        "bytes": dg.MetadataValue.int(sum(r["bytes"] for r in rows)),
        "rejected": dg.MetadataValue.int(sum(r["rejected"] for r in rows)),
    }
    if len(rows) == 1:
        row = rows[0]
        if row["first_id"] is not None:
            meta[f"first_{id_name}"] = dg.MetadataValue.int(row["first_id"])
            meta[f"last_{id_name}"] = dg.MetadataValue.int(row["last_id"])
        meta["s3_uri"] = dg.MetadataValue.path(row["uri"])
        meta["write_action"] = dg.MetadataValue.text(row["action"])
        if changes:
            meta["changes"] = dg.MetadataValue.json(changes)
    else:
        meta["hours"] = dg.MetadataValue.md(_md_table(rows))
    if preview:
        meta["preview"] = dg.MetadataValue.md(_md_table(preview[:PREVIEW_ROWS]))
    return meta


def _land_hour(
    context: dg.AssetExecutionContext,
    bronze: BronzeResource,
    store: BronzeStore,
    symbol: str,
    data_type: str,
    hour: int,
    fetched: Fetched,
    source: str = "rest",
) -> tuple[dict[str, Any], WriteResult]:
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
    context.log.info(f"{result.uri}: {result.records} records, {result.bytes} B, {result.action}")
    return _hour_row(hour, result, len(fetched.rejects), source), result


def _asset_metadata(symbol: str, data_type: str, settings: Settings) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "data_type": data_type,
        "s3_layout": f"s3://{settings.bucket}/{settings.bronze_prefix}/{symbol}/{data_type}/"
        "yyyy=YYYY/mm=MM/dd=DD/hh=HH/",
    }


def build_history_asset(symbol: str, kind: BronzeType, settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        key=bronze_key(symbol, kind.data_type),
        deps=[bronze_key(symbol, u) for u in kind.upstream],
        group_name=BRONZE_GROUP,
        kinds={"s3", "binance"},
        partitions_def=hourly_partitions(settings),
        backfill_policy=BACKFILL_POLICY,
        pool=BINANCE_POOL,
        description=f"{symbol}: {kind.description} Gzip JSONL, one object per hour.",
        metadata=_asset_metadata(symbol, kind.data_type, settings),
        check_specs=check_specs(
            bronze_key(symbol, kind.data_type), kind.checks, hourly_partitions(settings)
        ),
    )
    def _asset(
        context: dg.AssetExecutionContext, binance: BinanceRestResource, bronze: BronzeResource
    ) -> dg.MaterializeResult:
        client = binance.get_client()
        # Checks the symbol is listed (and adopts Binance's announced weight limit).
        client.exchange_info(symbol)
        store = bronze.get_store()
        hours = list(partition_hours(context))
        source = history_source(context, settings, client, hours)
        rows, changes = [], {}
        verdicts: dict[str, list[tuple[int, quality.Verdict]]] = {c.name: [] for c in kind.checks}
        previous: list[Record] = []
        by_source: dict[str, int] = {}
        for got in kind.fetch(source, store, symbol, hours):
            hour = got.hour
            row, result = _land_hour(
                context, bronze, store, symbol, kind.data_type, hour, got.fetched, got.source
            )
            rows.append(row)
            changes = result.changes or changes
            data = HourData(
                symbol, kind.data_type, hour, got.fetched.records, store, previous or None
            )
            for check in kind.checks:
                verdicts[check.name].append((hour, check.rule(data)))
            previous = got.fetched.records
            by_source[got.source] = by_source.get(got.source, 0) + 1
            if len(hours) > 1:
                # A ranged run records one materialization per hour: each gets its own figures.
                context.add_asset_metadata(
                    {**_metadata([row], kind.id_name, result.changes), **_source_metadata(got)},
                    partition_key=hour_partition_key(hour),
                )
        landed = [r["hour"] for r in rows]
        if len(landed) != len(hours):
            raise RuntimeError(f"{symbol} {kind.data_type}: landed {landed} of {len(hours)} hours")
        meta = _metadata(rows, kind.id_name, changes, previous)
        meta["hours_by_source"] = dg.MetadataValue.json(by_source)
        if len(hours) == 1:
            meta.update(_source_metadata(got))
        return dg.MaterializeResult(
            metadata=meta,
            check_results=check_results(
                context, bronze_key(symbol, kind.data_type), kind.checks, verdicts
            ),
        )

    return _asset


# Verified archive files of a run live here (one folder per run), so that the run's assets share
# a download (agg_trades reads the day's 1m klines as its trade-count reference; klines_1m lands
# them). Each asset deletes its own files once landed; what a failed run leaves is swept later.
ARCHIVE_WORK_ROOT = Path(tempfile.gettempdir()) / "ingest-pipeline-archive"
ARCHIVE_WORK_TTL_S = 24 * 3600


def history_source(
    context: dg.AssetExecutionContext,
    settings: Settings,
    client: BinanceRestClient,
    hours: Sequence[int],
) -> HistorySource:
    """The run's source of history hours, as ``settings.history_source`` says."""
    if settings.history_source == "rest":
        return HistorySource(client, None, "rest")
    if len(hours) > 1 and (hours[0] % DAY_MS or (hours[-1] + HOUR_MS) % DAY_MS):
        # Dagster cuts a backfill into runs of 24 partitions from the range's first hour: a
        # range starting at 00:00 gives one run per UTC day. Any other start still works, each
        # run downloading the (at most two) day files its hours touch.
        context.log.info(
            f"run range {from_ms(hours[0]):%Y-%m-%d %H}h..{from_ms(hours[-1]):%Y-%m-%d %H}h "
            "is not a whole UTC day: the archive's day files are read for their hours only"
        )
    _sweep_work_dirs()
    archive = ArchiveClient(settings.archive_url, work_dir=ARCHIVE_WORK_ROOT / context.run.run_id)
    return HistorySource(client, archive, settings.history_source)


def _sweep_work_dirs() -> None:
    if not ARCHIVE_WORK_ROOT.is_dir():
        return
    cutoff = time.time() - ARCHIVE_WORK_TTL_S
    for path in ARCHIVE_WORK_ROOT.iterdir():
        try:
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


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


def skippable_asset(
    key: dg.AssetKey,
    *,
    kinds: set[str],
    partitions: dg.PartitionsDefinition,
    description: str,
    metadata: dict[str, Any],
    checks: Sequence[Check],
    pool: str | None = None,
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """A bronze asset whose run may end without a materialization or a check result.

    A multi_asset only for ``can_subset=True``, which makes its outputs (the checks' included)
    optional: a run over hours that cannot be fetched (past books, open hours) skips them.
    """
    return dg.multi_asset(
        specs=[
            dg.AssetSpec(
                key,
                group_name=BRONZE_GROUP,
                kinds=kinds,
                partitions_def=partitions,
                skippable=True,
                description=description,
                metadata=metadata,
            )
        ],
        name=key.to_python_identifier(),
        partitions_def=partitions,
        backfill_policy=BACKFILL_POLICY,
        pool=pool,
        can_subset=True,
        check_specs=check_specs(key, checks, partitions),
    )


def build_depth_snapshot_asset(symbol: str, settings: Settings) -> dg.AssetsDefinition:
    partitions = hourly_partitions(settings, end_offset=1)
    key = bronze_key(symbol, DEPTH_SNAPSHOT)

    @skippable_asset(
        key,
        kinds={"s3", "binance"},
        partitions=partitions,
        description=(
            f"{symbol}: the live order book (`GET /api/v3/depth`, {DEPTH_SNAPSHOT_LIMIT} levels) "
            "with Binance's server time. Binance serves no past books: only the hour in "
            "progress can be captured; runs over past hours skip it without failing."
        ),
        metadata=_asset_metadata(symbol, DEPTH_SNAPSHOT, settings),
        checks=[BOOK_CHECK],
        pool=BINANCE_POOL,
    )
    def _asset(
        context: dg.AssetExecutionContext, binance: BinanceRestResource, bronze: BronzeResource
    ) -> Iterator[dg.MaterializeResult]:
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
        client.exchange_info(symbol)
        fetched = fetch_depth_snapshot(client, symbol, DEPTH_SNAPSHOT_LIMIT)
        snapshot_hours = {floor_hour(r["timestamp"]) for r in fetched.records}
        if snapshot_hours - {current}:
            context.log.info(f"{symbol} depth snapshot taken after the hour ended: skipped")
            return
        store = bronze.get_store()
        # Captures accumulate: every snapshot of the hour is a resync point for a book rebuild.
        captured = fetched.records
        fetched.records = (store.read_hour(symbol, DEPTH_SNAPSHOT, current) or []) + captured
        row, result = _land_hour(context, bronze, store, symbol, DEPTH_SNAPSHOT, current, fetched)
        meta = _metadata([row], "update_id", result.changes, captured)
        for name in ("first_update_id", "last_update_id"):
            meta.pop(name, None)
        if fetched.records:
            snap = fetched.records[-1]
            meta["last_update_id"] = dg.MetadataValue.int(snap["last_update_id"])
            meta["server_time"] = dg.MetadataValue.timestamp(snap["timestamp"] / 1000)
            meta["levels"] = dg.MetadataValue.json(
                {"bids": len(snap["bids"]), "asks": len(snap["asks"])}
            )
        data = HourData(symbol, DEPTH_SNAPSHOT, current, captured, store)
        verdicts = [(current, BOOK_CHECK.rule(data))]
        yield dg.MaterializeResult(
            asset_key=key, metadata=meta, check_results=[overall_result(BOOK_CHECK, verdicts)]
        )

    return _asset


def build_bronze_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    assets = []
    for symbol in settings.symbols:
        assets += [build_history_asset(symbol, kind, settings) for kind in history_types(settings)]
        assets.append(build_depth_snapshot_asset(symbol, settings))
    return assets


def build_agg_trades_asset(symbol: str, settings: Settings) -> dg.AssetsDefinition:
    return build_history_asset(symbol, history_types(settings)[0], settings)
