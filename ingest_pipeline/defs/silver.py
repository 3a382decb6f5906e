"""Silver assets: feature tables per symbol, hourly partitions, keys ``silver/S/table``.

Tables (SPEC §3-§4; columns and their time semantics in ``features.spec``):

- ``trade_features`` from bronze ``agg_trades``; an hour without aggTrades but with archived
  ``trade`` records (the stream archive, the real capture) uses those: both are MarketTrades.
  Holds the ``fwd_ret_*`` labels.
- ``book_features`` from the archived ``bba`` and ``depth_delta`` plus ``depth_snapshot``
  (book rebuilt from snapshot + diffs). Holds the ``fwd_mid_move_*`` labels.
- ``kline_features`` from ``klines_1m``.
- ``training_set``: the three joined on ``ts``; ``complete`` is the AND of theirs.

One multi-asset per symbol computes them (``can_subset``: a run does what was selected). Why
one step: an hour without input writes nothing and is not materialized (the table's output is
skipped, as the depth snapshot asset does), and Dagster skips every *other* step downstream of
a skipped output, so a training set in its own step would vanish with an empty book hour.

Time: every table reads the previous hour for warm-up and, when it holds labels, the next hour.
Dagster allows one dependency per upstream key, so those two needs are one time-window mapping
per input, ``start_offset=-1, end_offset=1`` (``-1, 0`` for inputs that only warm up: klines
and depth snapshots), with ``allow_nonexistent_upstream_partitions`` so that the first and the
newest hours still map. A neighbour hour that is not in bronze is simply absent, and so is any
part of an hour its bronze object does not cover (``coverage``): the rows that needed it are
flagged incomplete (values null), never invented.

Hours of a run (one, or a backfill's range): Dagster would file one output as a
materialization of *every* hour of the range, empty ones included, so a run yields one
materialization per hour that has rows itself (with that hour's metadata), then the hours'
check evaluations (``defs/checks.py``), and fails at the end if a blocking check failed.

Automation (see :func:`silver_condition` and :func:`build_silver_sensors`): each table is
requested once the bronze inputs of its hour *and* of the next hour (labels) have landed with
their blocking checks passed, and again when any input is updated (a late warm-up hour, a
re-run). The conditions are evaluated in the code server (``use_user_code_server``), the only
place a custom condition can run.

This module wires (a step runs ``silver_run.py``, imported by the step alone: it brings pandas
and pyarrow, which the definitions, imported by every run process, do without); the rest is in
the core: which bronze hours each table reads and waits for
(``storage/silver_inputs.py``), one hour of a table computed (``storage/silver_hours.py``), the
quality rules (``features/quality.py``), the numbers and preview of an hour
(``features/summary.py``).
"""

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg

from ingest_pipeline.defs.bronze import BACKFILL_POLICY, bronze_key
from ingest_pipeline.defs.catalog import catalog_fields, symbol_key_part, with_code_references
from ingest_pipeline.defs.checks import Check, check_specs
from ingest_pipeline.defs.partitions import hourly_partitions
from ingest_pipeline.defs.resources import BoundedS3Resource, BronzeResource, s3_resource
from ingest_pipeline.defs.silver_automation import silver_condition
from ingest_pipeline.features.quality import (
    check_bid_mid_ask,
    check_complete_rows,
    check_complete_share,
    check_grid,
    check_obi,
    check_spread,
    check_ts_increasing,
    on_frame,
)
from ingest_pipeline.features.spec import (
    BOOK_TABLE,
    DEFAULT_SPEC,
    KLINE_TABLE,
    TRADE_TABLE,
    TRAINING_TABLE,
    FeatureSpec,
    table_columns,
)
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.silver_inputs import silver_tables, source_tables

if TYPE_CHECKING:
    from ingest_pipeline.storage.silver import SilverStore

LAYER = "silver"
# An automation sensor evaluated in the code server may target at most 500 assets and checks
# with a condition (Dagster's MAX_ENTITIES, enforced when the sensor ticks), and its tick must
# answer within the sensor call's timeout (60 s unless DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS says
# otherwise). A tick costs ~0.1 s per symbol with two years of hourly partitions (measured on
# the 2-core machine): symbols are split into groups of at most 50, one sensor per group,
# 200 assets each, a few seconds a tick.
MAX_SENSOR_ENTITIES = 500
SYMBOLS_PER_SENSOR = 50


def silver_asset_key(symbol: str, table: str, settings: Settings | None = None) -> dg.AssetKey:
    """``[silver, symbol, table]``; the symbol as its key part (alias) from ``settings``."""
    return dg.AssetKey([LAYER, symbol_key_part(symbol, settings), table])


class SilverResource(dg.ConfigurableResource):
    """The silver layer: parquet feature tables in one bucket under one prefix."""

    s3: dg.ResourceDependency[BoundedS3Resource]
    bucket: str
    silver_prefix: str

    def get_store(self) -> "SilverStore":
        # Imported here (pandas, pyarrow): every run process imports the definitions.
        from ingest_pipeline.storage.silver import SilverStore

        return SilverStore(self.s3.get_client(), self.bucket, self.silver_prefix)


def build_silver_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The ``silver`` resource (the assets also need ``bronze`` from ``build_resources``)."""
    return {
        "silver": SilverResource(
            s3=s3_resource(settings), bucket=settings.bucket, silver_prefix=settings.silver_prefix
        )
    }


GRID_CHECKS = (
    Check(
        "one_row_per_step",
        "One row per grid step per symbol-hour: ts = h0 + k*step, k = 1..3600 (1 s grid).",
        on_frame(check_grid),
        blocking=True,
    ),
    Check("ts_strictly_increasing", "ts strictly increasing.", on_frame(check_ts_increasing), True),
    Check(
        "complete_rows_have_no_nan",
        "No NaN in rows flagged complete (vwap and the kline taker ratio are null by "
        "definition on zero volume).",
        on_frame(check_complete_rows),
        blocking=True,
    ),
    Check(
        "all_rows_complete",
        "Every row of the hour complete. Metadata: complete_share, complete_rows and "
        "input_covered_share (the least share of the hour any bronze input covered), to plot "
        "over partitions.",
        check_complete_share,
        severity=dg.AssetCheckSeverity.WARN,
    ),
)
BOOK_CHECKS = (
    Check("spread_non_negative", "spread >= 0 (BBA never crossed).", on_frame(check_spread), True),
    Check("obi_bounded", "|obi_1| <= 1.", on_frame(check_obi), True),
    Check(
        "bid_le_mid_le_ask",
        "bid <= mid <= ask and bid <= microprice <= ask (bid, ask = mid -/+ spread/2).",
        on_frame(check_bid_mid_ask),
        True,
    ),
)
TRAINING_CHECKS = GRID_CHECKS + (BOOK_CHECKS[2],)
TABLE_CHECKS: dict[str, tuple[Check, ...]] = {
    TRADE_TABLE: GRID_CHECKS,
    BOOK_TABLE: GRID_CHECKS + BOOK_CHECKS,
    KLINE_TABLE: GRID_CHECKS,
    TRAINING_TABLE: TRAINING_CHECKS,
}


# --------------------------------------------------------------------------------------------
# Automation sensors (the condition: silver_automation.py)


def _symbol_groups(symbols: Sequence[str], per_symbol: int) -> list[list[str]]:
    size = max(1, min(SYMBOLS_PER_SENSOR, MAX_SENSOR_ENTITIES // per_symbol))
    return [list(symbols[i : i + size]) for i in range(0, len(symbols), size)]


def build_silver_sensors(
    settings: Settings, spec: FeatureSpec = DEFAULT_SPEC, interval_seconds: int = 30
) -> list[dg.AutomationConditionSensorDefinition]:
    """The sensors that evaluate silver's automation conditions, in the code server.

    A sensor evaluated by the asset daemon only sees conditions it can deserialize; a custom
    condition class is shipped as a display snapshot only, so the daemon finds no condition on
    any silver asset, never ticks, and logs nothing. ``use_user_code_server=True`` evaluates
    them where the class lives, at the price of Dagster's limit of 500 targeted assets and
    checks with a condition per sensor, and of a 60 s limit per tick: one sensor per group of
    ``SYMBOLS_PER_SENSOR`` symbols keeps well under both. The first group's sensor keeps the
    name ``silver_automation`` whatever the number of symbols.
    """
    per_symbol = len(source_tables(settings, spec)) + 1
    sensors = []
    for i, group in enumerate(_symbol_groups(settings.symbols, per_symbol)):
        keys = [
            silver_asset_key(s, t, settings) for s in group for t in silver_tables(settings, spec)
        ]
        sensors.append(
            dg.AutomationConditionSensorDefinition(
                "silver_automation" if i == 0 else f"silver_automation_{i + 1}",
                target=dg.AssetSelection.assets(*keys),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=interval_seconds,
                use_user_code_server=True,
                description=f"Silver automation for {', '.join(group)}.",
            )
        )
    return sensors


# --------------------------------------------------------------------------------------------
# Metadata


def _column_schema(cols: Sequence[str], spec: FeatureSpec) -> dg.TableSchema:
    docs = spec.descriptions()
    names = ["ts", *cols, "complete"]
    types = {"ts": "int64", "complete": "bool"}
    return dg.TableSchema(
        columns=[dg.TableColumn(n, types.get(n, "float64"), description=docs[n]) for n in names]
    )


# --------------------------------------------------------------------------------------------
# Tables


def _hours_read(offsets: tuple[int, int]) -> dg.TimeWindowPartitionMapping:
    """The hours of an input a table reads, as (first, last) offsets from its own hour."""
    first, last = offsets
    return dg.TimeWindowPartitionMapping(
        start_offset=first, end_offset=last, allow_nonexistent_upstream_partitions=True
    )


def _catalog(
    symbol: str, table: str, cols: Sequence[str], settings: Settings, spec: FeatureSpec
) -> dict[str, Any]:
    """Group, tags, owners and definition metadata of one table's asset."""
    prefix = f"s3://{settings.bucket}/{settings.silver_prefix}/{table}/symbol={symbol}/"
    fields = catalog_fields(LAYER, settings, symbol, table, prefix)
    fields["metadata"].update(
        {
            "table": dg.MetadataValue.text(table),
            "s3_layout": dg.MetadataValue.text(prefix + "date=YYYY-MM-DD/hour=HH/part-0.parquet"),
            "dagster/column_schema": _column_schema(cols, spec),
        }
    )
    return fields


def build_symbol_silver(
    symbol: str, settings: Settings, spec: FeatureSpec = DEFAULT_SPEC
) -> dg.AssetsDefinition:
    """The silver tables of one symbol: one multi-asset, each table skippable."""
    partitions_def = hourly_partitions(settings)
    sources = source_tables(settings, spec)
    specs, all_checks = [], []
    for source in sources:
        key = silver_asset_key(symbol, source.table, settings)
        inputs = [(bronze_key(symbol, t, settings), _hours_read(h)) for t, h in source.inputs]
        required = [(bronze_key(symbol, t, settings), offs) for t, offs in source.required]
        optional = [(bronze_key(symbol, t, settings), offs) for t, offs in source.optional]
        cols = table_columns(source.table, spec)
        specs.append(
            dg.AssetSpec(
                key,
                deps=[dg.AssetDep(k, partition_mapping=m) for k, m in inputs],
                kinds={"s3", "parquet", "pandas"},
                partitions_def=partitions_def,
                skippable=True,
                automation_condition=silver_condition(required, optional),
                description=f"{symbol}: {source.description} Parquet (zstd), one object per "
                "hour; an hour without input writes nothing and is not materialized.",
                **_catalog(symbol, source.table, cols, settings, spec),
            )
        )
        all_checks += check_specs(key, TABLE_CHECKS[source.table], partitions_def)
    training_key = silver_asset_key(symbol, TRAINING_TABLE, settings)
    source_keys = [silver_asset_key(symbol, s.table, settings) for s in sources]
    trade_key = silver_asset_key(symbol, TRADE_TABLE, settings)
    specs.append(
        dg.AssetSpec(
            training_key,
            deps=source_keys,
            kinds={"s3", "parquet", "pandas"},
            partitions_def=partitions_def,
            skippable=True,
            automation_condition=silver_condition(
                [(trade_key, (0,))], [(k, (0,)) for k in source_keys if k != trade_key]
            ),
            description=(
                f"{symbol}: the training set, every feature and label column of the 1 s grid: "
                "trade, book and kline features joined on ts; complete when every table's row "
                "is. An hour whose tables failed a blocking check is not joined."
            ),
            **_catalog(symbol, TRAINING_TABLE, table_columns(TRAINING_TABLE, spec), settings, spec),
        )
    )
    all_checks += check_specs(training_key, TRAINING_CHECKS, partitions_def)

    @dg.multi_asset(
        name=f"silver_{settings.key_part(symbol)}",
        specs=specs,
        check_specs=all_checks,
        partitions_def=partitions_def,
        backfill_policy=BACKFILL_POLICY,
        can_subset=True,
    )
    def _silver(
        context: dg.AssetExecutionContext, bronze: BronzeResource, silver: SilverResource
    ) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
        # Imported here (pandas, pyarrow and the feature code): every run process imports the
        # definitions, only a silver step computes.
        from ingest_pipeline.defs.silver_run import run_symbol_silver

        yield from run_symbol_silver(
            context, bronze, silver, symbol, settings, spec, sources, training_key
        )

    return _silver


def build_silver_assets(
    settings: Settings, spec: FeatureSpec = DEFAULT_SPEC
) -> list[dg.AssetsDefinition]:
    """Per symbol: one multi-asset with the source tables and the training set joining them."""
    return with_code_references(
        [build_symbol_silver(symbol, settings, spec) for symbol in settings.symbols]
    )
