"""Bronze assets: one per symbol and REST data type, hourly partitions, keys ``bronze/S/type``."""

from __future__ import annotations

from typing import Any

import dagster as dg

from ingest_pipeline.binance.history import fetch_agg_trades
from ingest_pipeline.defs.partitions import hourly_partitions, partition_hours
from ingest_pipeline.defs.resources import BinanceRestResource, BronzeResource
from ingest_pipeline.records import AGG_TRADES
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import WriteResult
from ingest_pipeline.symbols import asset_key_part
from ingest_pipeline.timeutil import from_ms

BRONZE_GROUP = "bronze"
# The concurrency pool shared by everything that calls Binance (limit in dagster.yaml).
BINANCE_POOL = "binance"
# A month's backfill becomes ~30 runs of a day each instead of 720 single-hour runs.
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=24)


def bronze_key(symbol: str, data_type: str) -> dg.AssetKey:
    return dg.AssetKey(["bronze", asset_key_part(symbol), data_type])


def _hour_row(hour_ms: int, result: WriteResult, rejected: int) -> dict[str, Any]:
    return {
        "hour": f"{from_ms(hour_ms):%Y-%m-%d %H:00}",
        "records": result.records,
        "first_id": result.first_key[1] if result.first_key else None,
        "last_id": result.last_key[1] if result.last_key else None,
        "bytes": result.bytes,
        "action": result.action,
        "rejected": rejected,
        "uri": result.uri,
    }


def _metadata(rows: list[dict[str, Any]], changes: dict[str, int]) -> dict[str, Any]:
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
        meta.update(
            first_trade_id=dg.MetadataValue.int(row["first_id"] if row["first_id"] else -1),
            last_trade_id=dg.MetadataValue.int(row["last_id"] if row["last_id"] else -1),
            s3_uri=dg.MetadataValue.path(row["uri"]),
            write_action=dg.MetadataValue.text(row["action"]),
        )
        if changes:
            meta["changes"] = dg.MetadataValue.json(changes)
    else:
        header = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
        body = "".join("| " + " | ".join(str(v) for v in r.values()) + " |\n" for r in rows)
        meta["hours"] = dg.MetadataValue.md(header + body)
    return meta


def build_agg_trades_asset(symbol: str, settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        key=bronze_key(symbol, AGG_TRADES),
        group_name=BRONZE_GROUP,
        kinds={"s3", "binance"},
        partitions_def=hourly_partitions(settings),
        backfill_policy=BACKFILL_POLICY,
        pool=BINANCE_POOL,
        description=(
            f"Every aggregate trade of {symbol} in the hour (`GET /api/v3/aggTrades`), as "
            "MarketTrade records with first/last trade ids: gzip JSONL, one object per hour."
        ),
        metadata={
            "symbol": symbol,
            "data_type": AGG_TRADES,
            "s3_layout": f"s3://{settings.bucket}/{settings.bronze_prefix}/{symbol}/{AGG_TRADES}/"
            "yyyy=YYYY/mm=MM/dd=DD/hh=HH/",
        },
    )
    def _asset(
        context: dg.AssetExecutionContext, binance: BinanceRestResource, bronze: BronzeResource
    ) -> dg.MaterializeResult:
        client = binance.get_client()
        # Checks the symbol is listed (and adopts Binance's announced weight limit).
        client.exchange_info(symbol)
        store = bronze.get_store()
        rows, changes = [], {}
        for hour in partition_hours(context):
            fetched = fetch_agg_trades(client, symbol, hour)
            records, rejects = fetched.records, fetched.rejects
            if rejects:
                uri = bronze.write_rejects(symbol, AGG_TRADES, hour, rejects)
                context.log.warning(
                    f"{symbol} {from_ms(hour):%Y-%m-%d %H}h: {len(rejects)} malformed aggTrades "
                    f"kept aside at {uri}; first reason: {rejects[0]['reason']}"
                )
            result = store.write_hour(symbol, AGG_TRADES, hour, records)
            if result.changes:
                changes = result.changes
                context.log.warning(f"{result.uri} replaced: {result.changes}")
            context.log.info(
                f"{result.uri}: {result.records} aggTrades, {result.bytes} bytes, {result.action}"
            )
            rows.append(_hour_row(hour, result, len(rejects)))
        return dg.MaterializeResult(metadata=_metadata(rows, changes))

    return _asset


def build_bronze_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    return [build_agg_trades_asset(symbol, settings) for symbol in settings.symbols]
