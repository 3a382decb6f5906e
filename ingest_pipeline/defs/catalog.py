"""What the Dagster catalog says about an asset besides its data: group, tags, owners, where it
lives, its columns, its code, and whether each hour arrived in time. One place, so that bronze,
the stream archive and silver read alike in the UI.

Telling symbols apart in the lineage graph: a node is labelled with the *last* part of its key
only (Dagster 1.13, no option), so N symbols draw N towers of identical ``agg_trades`` nodes.
Keys stay ``[layer, symbol, data_type]`` (DESIGN.md: they mirror the S3 layout, and the silver
automation, jobs and tests address them so); the symbol shows instead through a hierarchical
group per symbol, ``bronze/<SYMBOL>``: the graph draws a ``bronze`` box holding one labelled box
per symbol, and ``group:"bronze/*"`` still selects the whole layer. Tags ``layer``, ``symbol``
and ``data_type`` filter the graph and the catalog (``tag:symbol=BTCUSDT``).

Dagster tag values and group names allow ``[A-Za-z0-9_.-]`` only: the ``symbol`` tag and the
group hold the symbol's key part (its configured alias for a symbol such as 币安人生USDT), the
``symbol`` metadata entry the real symbol.
"""

import typing
from collections.abc import Sequence
from typing import Any

import dagster as dg

from ingest_pipeline.records import datatype
from ingest_pipeline.settings import Settings
from ingest_pipeline.symbols import asset_key_part

# Who answers for the data: shown on every asset, and selectable (`owner:"team:market_data"`).
OWNERS = ("team:market_data",)
LAYER_TAG, SYMBOL_TAG, DATA_TYPE_TAG = "layer", "symbol", "data_type"
# Each hour is due by half past the next hour: the schedules start at HH:05, a run takes minutes.
FRESHNESS_DEADLINE_CRON = "30 * * * *"
FRESHNESS_SENSOR = "hourly_freshness_checks"


def symbol_key_part(symbol: str, settings: Settings | None = None) -> str:
    """The symbol as an asset key part: its alias from ``settings``, else its safe spelling."""
    return settings.key_part(symbol) if settings else asset_key_part(symbol)


def layer_group(layer: str, settings: Settings, symbol: str) -> str:
    return f"{layer}/{settings.key_part(symbol)}"


def catalog_fields(
    layer: str, settings: Settings, symbol: str, data_type: str, uri_prefix: str
) -> dict[str, Any]:
    """``group_name``, ``tags``, ``owners`` and ``metadata`` of one asset (``AssetSpec`` or
    ``@asset`` keyword arguments). ``uri_prefix``: where the asset's objects live, one per
    hour below it; each materialization names its own object."""
    return {
        "group_name": layer_group(layer, settings, symbol),
        "tags": {
            LAYER_TAG: layer,
            SYMBOL_TAG: settings.key_part(symbol),
            DATA_TYPE_TAG: data_type,
        },
        "owners": list(OWNERS),
        "metadata": {
            "symbol": dg.MetadataValue.text(symbol),
            # Text, not a path: the UI renders a path value as an empty link.
            "dagster/uri": dg.MetadataValue.text(uri_prefix),
        },
    }


# --- bronze column schemas, from the registry of records.py -----------------------------------

_TYPE_NAMES = {int: "int64", float: "float64", bool: "bool", str: "string"}
_TIME_NOTE = "epoch ms, UTC"
_COLUMN_DOCS = {
    "symbol": "Binance symbol",
    "event_ts": f"exchange time: trade time T, depth diff E; bookTicker has none, so its receive "
    f"time ({_TIME_NOTE}); places the record in its hour",
    "ingest_ts": f"when our process received the record ({_TIME_NOTE})",
    "source": "rest (REST API), archive (data.binance.vision) or sbe (the WebSocket stream)",
    "trade_id": "trade id (aggTrades: the aggregate trade id a)",
    "first_trade_id": "first individual trade id the aggregate covers (f)",
    "last_trade_id": "last individual trade id the aggregate covers (l)",
    "price": "price, quote asset per base asset",
    "qty": "quantity, base asset",
    "is_buyer_maker": "the buyer was the maker (the trade hit the bid)",
    "update_id": "order book update id of the best bid/ask",
    "first_update_id": "first update id of the diff (U)",
    "final_update_id": "final update id of the diff (u)",
    "last_update_id": "update id of the book snapshot (lastUpdateId)",
    "bids": "[price, size] decimal strings as Binance sent them, best first; size 0 removes",
    "asks": "[price, size] decimal strings as Binance sent them, best first; size 0 removes",
    "gap": "true on the first diff after a break in the symbol's diff chain (resync needed)",
    "timestamp": f"Binance server time of the snapshot ({_TIME_NOTE}); places it in its hour",
    "open_time": f"kline open time ({_TIME_NOTE}); places it in its hour",
    "close_time": f"kline close time ({_TIME_NOTE})",
    "interval": "kline interval, e.g. 1m",
    "trade_count": "number of trades in the kline",
}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return "list<[price, size]>"
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def record_schema(data_type: str) -> dg.TableSchema:
    """The columns of a bronze data type's records (``dagster/column_schema``)."""
    kind = datatype(data_type)
    columns = []
    for name, tp in kind.fields().items():
        columns.append(
            dg.TableColumn(
                name,
                _type_name(tp),
                description=_COLUMN_DOCS.get(name, ""),
                constraints=dg.TableColumnConstraints(nullable=name in kind.optional),
            )
        )
    return dg.TableSchema(columns=columns)


# --- code references and freshness ---------------------------------------------------------


def with_code_references(assets: Sequence[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """Each asset with a link to the code that builds it (for a factory: the decorated function
    inside the factory). ``dg.link_code_references_to_git`` would turn the local paths into
    repository links once the project has a public repository URL."""
    return list(dg.with_source_code_references(assets))  # type: ignore[arg-type]


def hourly_freshness(
    assets: Sequence[dg.AssetsDefinition], settings: Settings
) -> tuple[list[dg.AssetChecksDefinition], dg.SensorDefinition]:
    """One ``freshness_check`` per asset: after each deadline tick (HH:30), the hour that closed
    before it must be materialized (for the live-book asset, whose partitions include the hour
    in progress: that hour). A stopped schedule or a run that keeps failing turns it red within
    the hour, whatever the rest of the asset's history looks like. Run by its sensor."""
    checks = list(
        dg.build_time_partition_freshness_checks(
            assets=assets,
            deadline_cron=FRESHNESS_DEADLINE_CRON,
            severity=dg.AssetCheckSeverity.ERROR,
        )
    )
    status = (
        dg.DefaultSensorStatus.RUNNING
        if settings.freshness_sensor_status == "RUNNING"
        else dg.DefaultSensorStatus.STOPPED
    )
    sensor = dg.build_sensor_for_freshness_checks(
        freshness_checks=checks,
        name=FRESHNESS_SENSOR,
        minimum_interval_seconds=300,
        default_status=status,
    )
    return checks, sensor
