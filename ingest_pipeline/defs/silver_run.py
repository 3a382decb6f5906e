"""What a silver step runs: the tables of one symbol for the hours of a run, written, checked
and recorded (the wiring, the checks and the automation are in ``defs/silver.py``, which imports
this module in the step only: it brings pandas, pyarrow and the feature code)."""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from ingest_pipeline import quality
from ingest_pipeline.defs.checks import Check, hour_evaluations, hour_partition_key
from ingest_pipeline.defs.partitions import partition_hours
from ingest_pipeline.defs.resources import BronzeResource
from ingest_pipeline.defs.silver import (
    TABLE_CHECKS,
    TRAINING_CHECKS,
    SilverResource,
    silver_asset_key,
)
from ingest_pipeline.features.quality import HourFrame
from ingest_pipeline.features.spec import TRAINING_TABLE, FeatureSpec, table_columns
from ingest_pipeline.features.summary import hour_numbers, null_counts, preview_markdown
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.silver import SilverStore
from ingest_pipeline.storage.silver_hours import SourceHour, source_hour, training_hour
from ingest_pipeline.storage.silver_inputs import BronzeHours, SourceTable
from ingest_pipeline.timeutil import from_ms


def _float_meta(v: float) -> dg.MetadataValue:
    # NaN is not JSON: leave the point out of the plot rather than store an invalid value.
    return dg.MetadataValue.float(v) if np.isfinite(v) else dg.MetadataValue.null()


def _hour_metadata(
    table: str, frame: pd.DataFrame, spec: FeatureSpec, extra: Mapping[str, Any]
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(len(frame)),
        "null_counts": dg.MetadataValue.json(null_counts(frame)),
        "preview": dg.MetadataValue.md(preview_markdown(frame)),
    }
    for name, v in hour_numbers(table, frame, spec).items():
        meta[name] = dg.MetadataValue.int(v) if isinstance(v, int) else _float_meta(v)
    meta.update(extra)
    return meta


def _source_metadata(h: SourceHour) -> dict[str, Any]:
    """What a source table's hour was computed from, as materialization metadata."""
    meta: dict[str, Any] = {
        "previous_hour_in_bronze": dg.MetadataValue.bool(h.previous_in_bronze),
    }
    if h.next_in_bronze is not None:
        meta["next_hour_in_bronze"] = dg.MetadataValue.bool(h.next_in_bronze)
    if h.trade_source is not None:
        meta["trade_source"] = dg.MetadataValue.text(h.trade_source)
    if h.book_sync is not None:
        meta["book_sync"] = dg.MetadataValue.json(h.book_sync)
    return meta


@dataclass
class HourOutcome:
    """One table's hour as computed by a run: what was written and what the checks said."""

    table: str
    hour: int
    frame: pd.DataFrame
    uri: str | None
    metadata: dict[str, Any]
    verdicts: dict[str, quality.Verdict]

    def blocked(self) -> list[str]:
        """Blocking checks that failed (an hour without rows was not checked)."""
        return [
            c.name
            for c in TABLE_CHECKS[self.table]
            if c.blocking and c.name in self.verdicts and not self.verdicts[c.name].passed
        ]


def _outcome(
    table: str,
    hour: int,
    frame: pd.DataFrame,
    store: SilverStore,
    symbol: str,
    spec: FeatureSpec,
    extra: dict[str, Any],
    input_coverage: Mapping[str, float],
    log: Any,
) -> HourOutcome:
    """Write one table's hour (nothing when it has no rows) and apply the table's checks."""
    written = store.write_hour(symbol, hour, frame, table, spec, columns=table_columns(table, spec))
    uri = written.uri if written.rows else None
    if uri is None:
        log.info(f"{symbol} {table} {from_ms(hour):%Y-%m-%d %H}h: no input, nothing written")
        return HourOutcome(table, hour, frame, None, {}, {})
    extra["dagster/uri"] = dg.MetadataValue.text(uri)
    if input_coverage:
        extra["input_coverage"] = dg.MetadataValue.json(input_coverage)
    data = HourFrame(frame, hour, spec, input_coverage)
    verdicts = {c.name: c.rule(data) for c in TABLE_CHECKS[table]}
    log.info(
        f"{symbol} {table} {from_ms(hour):%Y-%m-%d %H}h: {len(frame)} rows, "
        f"{int(frame['complete'].sum())} complete, {uri}"
    )
    metadata = _hour_metadata(table, frame, spec, extra)
    return HourOutcome(table, hour, frame, uri, metadata, verdicts)


def _blocked(outcomes: Sequence[HourOutcome]) -> list[str]:
    return [f"{o.table} {from_ms(o.hour):%Y-%m-%d %H}h {c}" for o in outcomes for c in o.blocked()]


def _report(
    context: dg.AssetExecutionContext,
    key: dg.AssetKey,
    checks: Sequence[Check],
    outcomes: list[HourOutcome],
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """Record what a run made of one table: a materialization per hour with rows (with that
    hour's metadata), then their check evaluations; an hour without rows is not materialized."""
    made = [o for o in outcomes if o.uri is not None]
    for o in made:
        yield dg.AssetMaterialization(
            key, partition=hour_partition_key(o.hour), metadata=o.metadata
        )
    # The multi-asset fails at its end, once the training set has left out the blocked hours.
    verdicts = {o.hour: o.verdicts for o in made}
    yield from hour_evaluations(context, key, checks, verdicts, fail_on_blocking=False)
    skipped = len(outcomes) - len(made)
    context.log.info(
        f"{'/'.join(key.path)}: {len(made)} hour(s) materialized"
        + (f", {skipped} without input skipped" if skipped else "")
    )


def run_symbol_silver(
    context: dg.AssetExecutionContext,
    bronze: BronzeResource,
    silver: SilverResource,
    symbol: str,
    settings: Settings,
    spec: FeatureSpec,
    sources: Sequence[SourceTable],
    training_key: dg.AssetKey,
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """The body of a symbol's silver multi-asset: the selected tables, hour by hour."""
    selected = context.selected_asset_keys
    hours = list(partition_hours(context))
    b = BronzeHours(bronze.get_store(), symbol)
    store = silver.get_store()
    done: dict[str, dict[int, HourOutcome]] = {}
    blocked: list[str] = []
    for source in sources:
        key = silver_asset_key(symbol, source.table, settings)
        if key not in selected:
            continue
        outcomes = []
        for hour in hours:
            h = source_hour(source, b, hour, symbol, spec)
            outcomes.append(
                _outcome(
                    source.table,
                    hour,
                    h.frame,
                    store,
                    symbol,
                    spec,
                    _source_metadata(h),
                    h.coverage,
                    context.log,
                )  # fmt: skip
            )
        done[source.table] = {o.hour: o for o in outcomes}
        blocked += _blocked(outcomes)
        yield from _report(context, key, TABLE_CHECKS[source.table], outcomes)
    if training_key in selected:
        outcomes = []
        for hour in hours:
            stopped = [
                table
                for table, by_hour in done.items()
                if (o := by_hour.get(hour)) is not None and o.blocked()
            ]
            if stopped:
                context.log.warning(
                    f"{symbol} training_set {from_ms(hour):%Y-%m-%d %H}h not joined: "
                    f"{', '.join(stopped)} failed a blocking check"
                )
                continue
            computed = {t: by_hour[hour].frame for t, by_hour in done.items() if hour in by_hour}
            frame, present = training_hour(store, symbol, hour, computed, spec)
            extra = {"tables_present": dg.MetadataValue.json(present)}
            outcomes.append(
                _outcome(TRAINING_TABLE, hour, frame, store, symbol, spec, extra, {}, context.log)
            )
        blocked += _blocked(outcomes)
        yield from _report(context, training_key, TRAINING_CHECKS, outcomes)
    if blocked:
        # Dagster would fail the step for the blocking evaluations too; this says which.
        raise dg.Failure(
            description=f"{len(blocked)} blocking check(s) failed: {'; '.join(blocked[:10])}"
        )
