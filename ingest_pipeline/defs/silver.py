"""Silver assets: feature tables per symbol, hourly partitions, keys ``silver/S/table``.

Tables (SPEC §3-§4; columns and their time semantics in ``features.spec``):

- ``trade_features`` from bronze ``agg_trades``; an hour without aggTrades but with archived
  ``trade`` records (the stream archive, the real capture) uses those: both are MarketTrades.
  Holds the ``fwd_ret_*`` labels.
- ``book_features`` from the archived ``bba`` and ``depth_delta`` plus ``depth_snapshot``
  (book rebuilt from snapshot + diffs). Holds the ``fwd_mid_move_*`` labels.
- ``kline_features`` from ``klines_1m``.
- ``training_set``: the three joined on ``ts``; ``complete`` is the AND of theirs.

Time: every table reads the previous hour for warm-up and, when it holds labels, the next hour.
Dagster allows one dependency per upstream key, so those two needs are one time-window mapping
per input, ``start_offset=-1, end_offset=1`` (``-1, 0`` for inputs that only warm up: klines
and depth snapshots), with ``allow_nonexistent_upstream_partitions`` so that the first and the
newest hours still map. A neighbour hour that is not in bronze is simply absent: the rows that
needed it are flagged incomplete (labels null), never invented.

Automation: each table carries a declarative automation condition (evaluated by the daemon):
it is requested once the bronze inputs of its hour *and* of the next hour (for labels) have
landed, and again when any input is updated (a late warm-up hour, a re-run). The previous hour
is not waited for: an hour whose warm-up never lands is computed with its first rows flagged.
A UI backfill that selects bronze and silver together carries silver along (the backfill
daemon follows the partition mappings).
"""

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from dagster_aws.s3 import S3Resource

from ingest_pipeline import quality
from ingest_pipeline.defs.bronze import BACKFILL_POLICY, bronze_key
from ingest_pipeline.defs.checks import Check, check_results, check_specs, hour_partition_key
from ingest_pipeline.defs.partitions import hourly_partitions, partition_hours
from ingest_pipeline.defs.resources import BronzeResource, s3_resource
from ingest_pipeline.features.offline import (
    BOOK_TABLE,
    KLINE_TABLE,
    SOURCE_TABLES,
    TRADE_TABLE,
    TRAINING_TABLE,
    SymbolInputs,
    hour_table,
    join_tables,
    table_columns,
)
from ingest_pipeline.features.spec import DEFAULT_SPEC, FeatureSpec, duration_suffix
from ingest_pipeline.records import (
    AGG_TRADES,
    BBA,
    DEPTH_DELTA,
    DEPTH_SNAPSHOT,
    TRADE,
    Record,
    klines_type,
)
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.storage.silver import SilverStore
from ingest_pipeline.symbols import asset_key_part
from ingest_pipeline.timeutil import HOUR_MS, from_ms

SILVER_GROUP = "silver"
PARTITION_FORMAT = "%Y-%m-%d-%H:%M"
PREVIEW_ROWS = 6
warnings.filterwarnings("ignore", message=".*AutomationCondition.*", category=dg.BetaWarning)
warnings.filterwarnings("ignore", message=".*allow_nonexistent_upstream_partitions.*")

# Warm-up only (previous hour + this one) and warm-up plus labels (+ the next hour).
WARMUP = dg.TimeWindowPartitionMapping(
    start_offset=-1, end_offset=0, allow_nonexistent_upstream_partitions=True
)
WARMUP_AND_LABELS = dg.TimeWindowPartitionMapping(
    start_offset=-1, end_offset=1, allow_nonexistent_upstream_partitions=True
)


def silver_asset_key(symbol: str, table: str) -> dg.AssetKey:
    return dg.AssetKey(["silver", asset_key_part(symbol), table])


class SilverResource(dg.ConfigurableResource):
    """The silver layer: parquet feature tables in one bucket under one prefix."""

    s3: dg.ResourceDependency[S3Resource]
    bucket: str
    silver_prefix: str

    def get_store(self) -> SilverStore:
        return SilverStore(self.s3.get_client(), self.bucket, self.silver_prefix)


def build_silver_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The ``silver`` resource (the assets also need ``bronze`` from ``build_resources``)."""
    return {
        "silver": SilverResource(
            s3=s3_resource(settings), bucket=settings.bucket, silver_prefix=settings.silver_prefix
        )
    }


# --------------------------------------------------------------------------------------------
# Reading one symbol's bronze hours


class BronzeHours:
    """Bronze objects of one symbol, read once per run (a ranged run reads each hour once,
    not three times). ``None``: the object does not exist; ``[]``: it exists and is empty."""

    def __init__(self, store: BronzeStore, symbol: str) -> None:
        self.store = store
        self.symbol = symbol
        self._cache: dict[tuple[str, int], list[Record] | None] = {}

    def read(self, data_type: str, hour: int) -> list[Record] | None:
        key = (data_type, hour)
        if key not in self._cache:
            self._cache[key] = self.store.read_hour(self.symbol, data_type, hour)
        return self._cache[key]


def _trade_source(b: BronzeHours, hour: int) -> tuple[str, list[Record] | None]:
    """aggTrades when the hour has any, else the archived ``trade`` records (SPEC §4)."""
    aggs = b.read(AGG_TRADES, hour)
    if aggs:
        return AGG_TRADES, aggs
    trades = b.read(TRADE, hour)
    if trades is not None:
        return TRADE, trades
    return AGG_TRADES, aggs


def _load_trades(b: BronzeHours, hour: int) -> SymbolInputs | None:
    _, records = _trade_source(b, hour)
    return None if records is None else SymbolInputs(trades=records)


def _load_book(b: BronzeHours, hour: int) -> SymbolInputs | None:
    bba, diffs, snaps = (b.read(t, hour) for t in (BBA, DEPTH_DELTA, DEPTH_SNAPSHOT))
    if bba is None and diffs is None:
        # A snapshot alone carries no BBA and no diff: it only helps as warm-up.
        return None if snaps is None else SymbolInputs(depth_snapshots=snaps)
    return SymbolInputs(bba=bba or [], depth_deltas=diffs or [], depth_snapshots=snaps or [])


def _load_klines(interval: str) -> Callable[[BronzeHours, int], SymbolInputs | None]:
    def load(b: BronzeHours, hour: int) -> SymbolInputs | None:
        records = b.read(klines_type(interval), hour)
        return None if records is None else SymbolInputs(klines=records)

    return load


# --------------------------------------------------------------------------------------------
# Checks (pure: a frame in, a verdict out)


@dataclass(frozen=True)
class HourFrame:
    """What a silver check sees: one symbol-hour of a table as written."""

    frame: pd.DataFrame
    hour: int
    spec: FeatureSpec = DEFAULT_SPEC


def _on_frame(
    fn: Callable[[pd.DataFrame, int, FeatureSpec], quality.Verdict],
) -> Callable[[HourFrame], quality.Verdict]:
    return lambda d: fn(d.frame, d.hour, d.spec)


def check_grid(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    """One row per grid step: ``ts = h0 + k*step``, k = 1..n (or no rows: no input)."""
    if frame.empty:
        return quality.Verdict(True, "no rows (no input in the hour)")
    expected = np.arange(hour + spec.step_ms, hour + HOUR_MS + 1, spec.step_ms, dtype=np.int64)
    ts = frame["ts"].to_numpy(np.int64)
    if len(ts) == len(expected) and bool(np.array_equal(ts, expected)):
        return quality.Verdict(True, f"{len(ts)} rows, one per {spec.step_ms} ms step")
    have = set(ts.tolist())
    missing = [int(t) for t in expected if t not in have]
    extra = sorted(have - set(expected.tolist()))
    dup = int(len(ts) - len(have))
    return quality.Verdict(
        False,
        f"{len(ts)} rows for {len(expected)} steps: {len(missing)} missing, {len(extra)} off "
        f"the grid, {dup} duplicated",
        {"missing": missing[:10], "off_grid": extra[:10], "duplicates": dup},
    )


def check_ts_increasing(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    ts = frame["ts"].to_numpy(np.int64)
    bad = np.flatnonzero(np.diff(ts) <= 0)
    if len(bad) == 0:
        return quality.Verdict(True, "ts strictly increasing")
    return quality.Verdict(
        False,
        f"ts not strictly increasing at {len(bad)} row(s)",
        {"first_rows": [int(i) + 1 for i in bad[:10]], "ts": [int(ts[i + 1]) for i in bad[:10]]},
    )


def _value_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("symbol", "ts", "complete")]


def check_complete_rows(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    """Rows flagged complete hold no NaN (columns null by definition excepted)."""
    if frame.empty:
        return quality.Verdict(True, "no rows")
    complete = frame["complete"].to_numpy(np.bool_)
    optional = spec.nullable_by_definition()
    bad: dict[str, int] = {}
    for c in _value_columns(frame):
        if c in optional:
            continue
        n = int(np.isnan(frame[c].to_numpy(np.float64))[complete].sum())
        if n:
            bad[c] = n
    if not bad:
        return quality.Verdict(True, f"{int(complete.sum())} complete rows, no NaN in them")
    return quality.Verdict(False, f"complete rows with NaN in {len(bad)} column(s)", bad)


def _violations(name: str, mask: np.ndarray, frame: pd.DataFrame, what: str) -> quality.Verdict:
    n = int(mask.sum())
    if n == 0:
        return quality.Verdict(True, f"{what}: holds on every row with a value")
    first = frame["ts"].to_numpy(np.int64)[mask][:10].tolist()
    return quality.Verdict(False, f"{what}: violated on {n} row(s)", {"first_ts": first})


def check_spread(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    if frame.empty:
        return quality.Verdict(True, "no rows")
    spread = frame["spread"].to_numpy(np.float64)
    return _violations("spread", spread < 0, frame, "spread >= 0")


def check_obi(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    if frame.empty:
        return quality.Verdict(True, "no rows")
    obi = frame["obi_1"].to_numpy(np.float64)
    return _violations("obi_1", np.abs(obi) > 1, frame, "|obi_1| <= 1")


def check_bid_mid_ask(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    """bid <= mid <= ask and bid <= microprice <= ask, with bid/ask = mid -/+ spread/2 (to a
    relative 1e-12: the three are recomputed from rounded columns)."""
    if frame.empty:
        return quality.Verdict(True, "no rows")
    mid = frame["mid"].to_numpy(np.float64)
    half = frame["spread"].to_numpy(np.float64) / 2
    micro = frame["microprice"].to_numpy(np.float64)
    bid, ask = mid - half, mid + half
    tol = np.abs(mid) * 1e-12
    with np.errstate(invalid="ignore"):
        bad = (bid > mid + tol) | (mid > ask + tol) | (micro < bid - tol) | (micro > ask + tol)
    return _violations("bid_mid_ask", bad, frame, "bid <= mid, microprice <= ask")


GRID_CHECKS = (
    Check(
        "one_row_per_step",
        "One row per grid step per symbol-hour: ts = h0 + k*step, k = 1..3600 (1 s grid).",
        _on_frame(check_grid),
        blocking=True,
    ),
    Check(
        "ts_strictly_increasing", "ts strictly increasing.", _on_frame(check_ts_increasing), True
    ),
    Check(
        "complete_rows_have_no_nan",
        "No NaN in rows flagged complete (vwap and the kline taker ratio are null by "
        "definition on zero volume).",
        _on_frame(check_complete_rows),
        blocking=True,
    ),
)
BOOK_CHECKS = (
    Check("spread_non_negative", "spread >= 0 (BBA never crossed).", _on_frame(check_spread), True),
    Check("obi_bounded", "|obi_1| <= 1.", _on_frame(check_obi), True),
    Check(
        "bid_le_mid_le_ask",
        "bid <= mid <= ask and bid <= microprice <= ask (bid, ask = mid -/+ spread/2).",
        _on_frame(check_bid_mid_ask),
        True,
    ),
)


# --------------------------------------------------------------------------------------------
# Automation


def _shift_partition(key: str, hours: int) -> str:
    dt = datetime.strptime(key, PARTITION_FORMAT).replace(tzinfo=UTC)
    return (dt + timedelta(hours=hours)).strftime(PARTITION_FORMAT)


class HoursLanded(dg.AutomationCondition):
    """True for a partition H when every required upstream asset is materialized at H + each
    offset (e.g. ``(0, 1)``: the hour itself and the next one, for labels).

    Built-in dependency conditions see the whole mapped window ``[H-1, H+1]`` at once and
    cannot tell the warm-up hour (optional) from the label hour (needed), hence this one.
    """

    def __init__(self, required: Sequence[tuple[dg.AssetKey, tuple[int, ...]]]) -> None:
        self.required = tuple((k, tuple(o)) for k, o in required)

    @property
    def name(self) -> str:
        return "hours_landed"

    @property
    def description(self) -> str:
        parts = [
            f"{'/'.join(k.path)}@H{'+'.join([''] + [str(o) for o in offs if o]) or ''}"
            for k, offs in self.required
        ]
        return "materialized: " + ", ".join(parts)

    def evaluate(self, context: Any) -> dg.AutomationResult:
        candidates = context.candidate_subset
        keys = candidates.expensively_compute_partition_keys()
        instance = context.asset_graph_view.instance
        landed = {key: instance.get_materialized_partitions(key) for key, _ in self.required}
        ok = {
            pk
            for pk in keys
            if all(
                _shift_partition(pk, o) in landed[key] for key, offs in self.required for o in offs
            )
        }
        true_subset = (
            candidates.compute_intersection_with_partition_keys(ok)
            if ok
            else context.get_empty_subset()
        )
        return dg.AutomationResult(context=context, true_subset=true_subset)


def silver_condition(
    required: Sequence[tuple[dg.AssetKey, tuple[int, ...]]],
) -> dg.AutomationCondition:
    """Requested once the required inputs of H (and H+1 where labels need it) have landed,
    and again whenever any input is updated; never while an input or the asset is running."""
    return (
        (
            dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()
        ).since_last_handled()
        & HoursLanded(required)
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("silver_inputs_landed")


# --------------------------------------------------------------------------------------------
# Metadata


def _fmt(v: Any) -> str:
    if isinstance(v, float | np.floating):
        return "" if np.isnan(v) else f"{v:.6g}"
    return str(v)


def preview_markdown(frame: pd.DataFrame, rows: int = PREVIEW_ROWS, max_cols: int = 12) -> str:
    """A few rows spread over the hour (complete ones when there are), as a markdown table."""
    if frame.empty:
        return "(no rows)"
    pool = frame[frame["complete"]] if bool(frame["complete"].any()) else frame
    idx = np.linspace(0, len(pool) - 1, num=min(rows, len(pool))).round().astype(int)
    sample = pool.iloc[np.unique(idx)]
    cols = [c for c in sample.columns if c != "symbol"]
    if len(cols) > max_cols:
        cols = [*cols[: max_cols - 1], "complete"]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join(
        "| " + " | ".join(_fmt(r[c]) for c in cols) + " |\n" for _, r in sample.iterrows()
    )
    return head + body


def hourly_realized_vol(frame: pd.DataFrame, spec: FeatureSpec) -> float:
    """sqrt of the sum of squared step returns over the hour, from the non-overlapping longest
    windows ``rv_W`` ending at h0 + W, h0 + 2W, ... (NaN windows count as 0; NaN if all are)."""
    if frame.empty:
        return float("nan")
    w = spec.max_window_ms
    col = f"rv_{duration_suffix(w)}"
    ts = frame["ts"].to_numpy(np.int64)
    rv = frame[col].to_numpy(np.float64)[(ts % w) == 0]
    if np.isnan(rv).all():
        return float("nan")
    return float(np.sqrt(np.nansum(rv * rv)))


def _null_counts(frame: pd.DataFrame) -> dict[str, int]:
    return {c: int(frame[c].isna().sum()) for c in _value_columns(frame) if frame[c].isna().any()}


def _float_meta(v: float) -> dg.MetadataValue:
    # NaN is not JSON: leave the point out of the plot rather than store an invalid value.
    return dg.MetadataValue.float(v) if np.isfinite(v) else dg.MetadataValue.null()


def hour_numbers(table: str, frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, float]:
    """Plot-friendly numbers of one hour (UI asset plots chart them over partitions)."""
    out: dict[str, float] = {"rows": float(len(frame))}
    if frame.empty:
        return out
    out["complete_rows"] = float(frame["complete"].sum())
    if table in (TRADE_TABLE, TRAINING_TABLE):
        out["hourly_realized_vol"] = hourly_realized_vol(frame, spec)
        out["trade_count"] = float(np.nansum(frame["trade_count"].to_numpy(np.float64)))
    if table in (BOOK_TABLE, TRAINING_TABLE):
        out["mean_spread_bps"] = (
            float(np.nanmean(frame["spread_bps"]))
            if frame["spread_bps"].notna().any()
            else float("nan")
        )
    return out


def _hour_metadata(
    table: str, frame: pd.DataFrame, spec: FeatureSpec, extra: Mapping[str, Any]
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(len(frame)),
        "null_counts": dg.MetadataValue.json(_null_counts(frame)),
        "preview": dg.MetadataValue.md(preview_markdown(frame)),
    }
    for name, v in hour_numbers(table, frame, spec).items():
        if name == "rows":
            continue
        meta[name] = (
            dg.MetadataValue.int(int(v))
            if name in ("complete_rows", "trade_count")
            else _float_meta(v)
        )
    meta.update(extra)
    return meta


def _range_metadata(rows: list[dict[str, Any]]) -> dict[str, Any]:
    total = sum(r["rows"] for r in rows)
    header = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    body = "".join("| " + " | ".join(_fmt(v) for v in r.values()) + " |\n" for r in rows)
    return {
        "dagster/row_count": dg.MetadataValue.int(int(total)),
        "hours": dg.MetadataValue.md(header + body),
    }


def _column_schema(cols: Sequence[str], spec: FeatureSpec) -> dg.TableSchema:
    docs = spec.descriptions()
    names = ["ts", *cols, "complete"]
    types = {"ts": "int64", "complete": "bool"}
    return dg.TableSchema(
        columns=[dg.TableColumn(n, types.get(n, "float64"), description=docs[n]) for n in names]
    )


# --------------------------------------------------------------------------------------------
# Assets


@dataclass(frozen=True)
class SourceTable:
    table: str
    description: str
    # (bronze data type, mapping); the asset reads these through BronzeStore.
    inputs: tuple[tuple[str, dg.TimeWindowPartitionMapping], ...]
    # Bronze types that must have landed at H + offset before automation requests H.
    required: tuple[tuple[str, tuple[int, ...]], ...]
    load: Callable[[BronzeHours, int], SymbolInputs | None]
    checks: tuple[Check, ...]
    labels: bool


def source_tables(settings: Settings, spec: FeatureSpec = DEFAULT_SPEC) -> list[SourceTable]:
    klines = klines_type(spec.kline_interval)
    tables = [
        SourceTable(
            TRADE_TABLE,
            "Trade features on the 1 s grid (trade time T) with the fwd_ret labels: bronze "
            "agg_trades, or the archived trade stream for hours without aggTrades.",
            ((AGG_TRADES, WARMUP_AND_LABELS), (TRADE, WARMUP_AND_LABELS)),
            ((AGG_TRADES, (0, 1)),),
            _load_trades,
            GRID_CHECKS,
            True,
        ),
        SourceTable(
            BOOK_TABLE,
            "BBA features (receive time: spot bookTicker has no exchange time), book depth "
            "imbalance (book rebuilt from snapshot + diffs, exchange time E) and the mid-move "
            "labels.",
            ((BBA, WARMUP_AND_LABELS), (DEPTH_DELTA, WARMUP_AND_LABELS), (DEPTH_SNAPSHOT, WARMUP)),
            ((BBA, (0, 1)), (DEPTH_DELTA, (0, 1))),
            _load_book,
            GRID_CHECKS + BOOK_CHECKS,
            True,
        ),
    ]
    if spec.kline_interval in settings.kline_intervals:
        tables.append(
            SourceTable(
                KLINE_TABLE,
                f"Kline features from the last {spec.kline_interval} kline closed before ts.",
                ((klines, WARMUP),),
                ((klines, (0,)),),
                _load_klines(spec.kline_interval),
                GRID_CHECKS,
                False,
            )
        )
    return tables


def _asset_metadata(
    symbol: str, table: str, cols: Sequence[str], settings: Settings, spec: FeatureSpec
) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "table": table,
        "s3_layout": f"s3://{settings.bucket}/{settings.silver_prefix}/{table}/symbol={symbol}/"
        "date=YYYY-MM-DD/hour=HH/part-0.parquet",
        "dagster/column_schema": _column_schema(cols, spec),
    }


class _Run:
    """What one (possibly ranged) silver run accumulates: rows, verdicts, per-hour numbers."""

    def __init__(self, table: str, checks: Sequence[Check], spec: FeatureSpec) -> None:
        self.table = table
        self.checks = checks
        self.spec = spec
        self.rows: list[dict[str, Any]] = []
        self.verdicts: dict[str, list[tuple[int, quality.Verdict]]] = {c.name: [] for c in checks}
        self.last_meta: dict[str, Any] = {}
        self.numbers: dict[int, dict[str, float]] = {}

    def add(
        self, hour: int, frame: pd.DataFrame, uri: str | None, extra: Mapping[str, Any]
    ) -> None:
        for c in self.checks:
            self.verdicts[c.name].append((hour, c.rule(HourFrame(frame, hour, self.spec))))
        self.numbers[hour] = hour_numbers(self.table, frame, self.spec)
        meta_extra = dict(extra)
        if uri:
            meta_extra["s3_uri"] = dg.MetadataValue.path(uri)
        self.last_meta = _hour_metadata(self.table, frame, self.spec, meta_extra)
        self.rows.append(
            {
                "hour": f"{from_ms(hour):%Y-%m-%d %H:00}",
                "rows": len(frame),
                "complete": int(frame["complete"].sum()) if len(frame) else 0,
                **{k: v for k, v in self.numbers[hour].items() if k not in ("rows",)},
                "uri": uri or "",
            }
        )

    def result(self, context: dg.AssetExecutionContext, key: dg.AssetKey) -> dg.MaterializeResult:
        if len(self.rows) == 1:
            meta = self.last_meta
        else:
            meta = _range_metadata(self.rows)
            # A ranged run's materialization carries one metadata set for all its hours: the
            # per-hour numbers go on one observation per partition, so plots stay per hour.
            for hour, numbers in self.numbers.items():
                context.log_event(
                    dg.AssetObservation(
                        asset_key=key,
                        partition=hour_partition_key(hour),
                        metadata={k: _float_meta(v) for k, v in numbers.items()},
                    )
                )
        return dg.MaterializeResult(
            metadata=meta,
            check_results=check_results(context, key, self.checks, self.verdicts),
        )


def build_source_asset(
    symbol: str, source: SourceTable, settings: Settings, spec: FeatureSpec = DEFAULT_SPEC
) -> dg.AssetsDefinition:
    key = silver_asset_key(symbol, source.table)
    cols = table_columns(source.table, spec)
    partitions_def = hourly_partitions(settings)

    @dg.asset(
        key=key,
        deps=[dg.AssetDep(bronze_key(symbol, t), partition_mapping=m) for t, m in source.inputs],
        group_name=SILVER_GROUP,
        kinds={"s3", "parquet", "pandas"},
        partitions_def=partitions_def,
        backfill_policy=BACKFILL_POLICY,
        automation_condition=silver_condition(
            [(bronze_key(symbol, t), offs) for t, offs in source.required]
        ),
        description=f"{symbol}: {source.description} Parquet (zstd), one object per hour.",
        metadata=_asset_metadata(symbol, source.table, cols, settings, spec),
        check_specs=check_specs(key, source.checks, partitions_def),
    )
    def _asset(
        context: dg.AssetExecutionContext, bronze: BronzeResource, silver: SilverResource
    ) -> dg.MaterializeResult:
        b = BronzeHours(bronze.get_store(), symbol)
        store = silver.get_store()
        run = _Run(source.table, source.checks, spec)
        for hour in partition_hours(context):
            current = source.load(b, hour)
            previous = source.load(b, hour - HOUR_MS)
            following = source.load(b, hour + HOUR_MS) if source.labels else None
            result = hour_table(
                source.table, symbol, hour, current or SymbolInputs(), previous, following, spec
            )
            frame = result.frame
            written = store.write_hour(symbol, hour, frame, source.table, spec, columns=cols)
            extra: dict[str, Any] = {
                "previous_hour_in_bronze": dg.MetadataValue.bool(previous is not None),
            }
            if source.labels:
                extra["next_hour_in_bronze"] = dg.MetadataValue.bool(following is not None)
            if source.table == TRADE_TABLE:
                extra["trade_source"] = dg.MetadataValue.text(_trade_source(b, hour)[0])
            if result.book is not None and source.table == BOOK_TABLE:
                extra["book_sync"] = dg.MetadataValue.json(_jsonable(result.book))
            uri = written.uri if written.rows else None
            context.log.info(
                f"{symbol} {source.table} {from_ms(hour):%Y-%m-%d %H}h: {len(frame)} rows, "
                f"{int(frame['complete'].sum()) if len(frame) else 0} complete"
                + (f", {uri}" if uri else " (no input: nothing written)")
            )
            run.add(hour, frame, uri, extra)
        return run.result(context, key)

    return _asset


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


TRAINING_CHECKS = GRID_CHECKS + (BOOK_CHECKS[2],)


def build_training_set_asset(
    symbol: str, tables: Sequence[str], settings: Settings, spec: FeatureSpec = DEFAULT_SPEC
) -> dg.AssetsDefinition:
    key = silver_asset_key(symbol, TRAINING_TABLE)
    cols = table_columns(TRAINING_TABLE, spec)
    partitions_def = hourly_partitions(settings)

    @dg.asset(
        key=key,
        deps=[silver_asset_key(symbol, t) for t in tables],
        group_name=SILVER_GROUP,
        kinds={"s3", "parquet", "pandas"},
        partitions_def=partitions_def,
        backfill_policy=BACKFILL_POLICY,
        automation_condition=silver_condition([(silver_asset_key(symbol, TRADE_TABLE), (0,))]),
        description=(
            f"{symbol}: the training set, every feature and label column of the 1 s grid: "
            "trade, book and kline features joined on ts; complete when every table's row is."
        ),
        metadata=_asset_metadata(symbol, TRAINING_TABLE, cols, settings, spec),
        check_specs=check_specs(key, TRAINING_CHECKS, partitions_def),
    )
    def _asset(context: dg.AssetExecutionContext, silver: SilverResource) -> dg.MaterializeResult:
        store = silver.get_store()
        run = _Run(TRAINING_TABLE, TRAINING_CHECKS, spec)
        for hour in partition_hours(context):
            parts = {t: store.read_hour(t, symbol, hour) for t in SOURCE_TABLES}
            frame = join_tables(symbol, parts, spec)
            written = store.write_hour(symbol, hour, frame, TRAINING_TABLE, spec, columns=cols)
            extra = {
                "tables_present": dg.MetadataValue.json(
                    sorted(t for t, f in parts.items() if f is not None and len(f))
                )
            }
            run.add(hour, frame, written.uri if written.rows else None, extra)
        return run.result(context, key)

    return _asset


def build_silver_assets(
    settings: Settings, spec: FeatureSpec = DEFAULT_SPEC
) -> list[dg.AssetsDefinition]:
    """Per symbol: the source tables and the training set joining them."""
    assets = []
    for symbol in settings.symbols:
        sources = source_tables(settings, spec)
        assets += [build_source_asset(symbol, s, settings, spec) for s in sources]
        assets.append(build_training_set_asset(symbol, [s.table for s in sources], settings, spec))
    return assets
