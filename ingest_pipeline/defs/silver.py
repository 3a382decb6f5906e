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
"""

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from dagster._core.events import DagsterEventType
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster_aws.s3 import S3Resource

from ingest_pipeline import quality, spans
from ingest_pipeline.defs.bronze import BACKFILL_POLICY, bronze_key
from ingest_pipeline.defs.catalog import catalog_fields, symbol_key_part, with_code_references
from ingest_pipeline.defs.checks import Check, check_specs, hour_evaluations, hour_partition_key
from ingest_pipeline.defs.partitions import hourly_partitions, partition_hours
from ingest_pipeline.defs.resources import BronzeResource, s3_resource
from ingest_pipeline.features.coverage import BBA_SOURCE, DEPTH_SOURCE, KLINE_SOURCE, TRADE_SOURCE
from ingest_pipeline.features.offline import SymbolInputs
from ingest_pipeline.features.spec import DEFAULT_SPEC, FeatureSpec, duration_suffix
from ingest_pipeline.features.tables import (
    BOOK_TABLE,
    KLINE_TABLE,
    SOURCE_TABLES,
    TRADE_TABLE,
    TRAINING_TABLE,
    hour_table,
    join_tables,
    table_columns,
)
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
from ingest_pipeline.timeutil import HOUR_MS, from_ms, iso_ms

LAYER = "silver"
PARTITION_FORMAT = "%Y-%m-%d-%H:%M"
PREVIEW_ROWS = 6
# An automation sensor evaluated in the code server may target at most 500 assets and checks
# with a condition (Dagster's MAX_ENTITIES, enforced when the sensor ticks), and its tick must
# answer within the sensor call's timeout (60 s unless DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS says
# otherwise). A tick costs ~0.1 s per symbol with two years of hourly partitions (measured on
# the 2-core machine): symbols are split into groups of at most 50, one sensor per group,
# 200 assets each, a few seconds a tick.
MAX_SENSOR_ENTITIES = 500
SYMBOLS_PER_SENSOR = 50

# Warm-up only (previous hour + this one) and warm-up plus labels (+ the next hour).
WARMUP = dg.TimeWindowPartitionMapping(
    start_offset=-1, end_offset=0, allow_nonexistent_upstream_partitions=True
)
WARMUP_AND_LABELS = dg.TimeWindowPartitionMapping(
    start_offset=-1, end_offset=1, allow_nonexistent_upstream_partitions=True
)


def silver_asset_key(symbol: str, table: str, settings: Settings | None = None) -> dg.AssetKey:
    """``[silver, symbol, table]``; the symbol as its key part (alias) from ``settings``."""
    return dg.AssetKey([LAYER, symbol_key_part(symbol, settings), table])


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
    not three times). ``None``: the object does not exist; ``[]``: it exists and is empty.
    Coverage comes from the object's metadata (a HEAD)."""

    def __init__(self, store: BronzeStore, symbol: str) -> None:
        self.store = store
        self.symbol = symbol
        self._cache: dict[tuple[str, int], list[Record] | None] = {}
        self._coverage: dict[tuple[str, int], spans.Spans | None] = {}

    def read(self, data_type: str, hour: int) -> list[Record] | None:
        key = (data_type, hour)
        if key not in self._cache:
            self._cache[key] = self.store.read_hour(self.symbol, data_type, hour)
        return self._cache[key]

    def coverage(self, data_type: str, hour: int) -> spans.Spans:
        """Covered spans of an object; nothing when it does not exist."""
        key = (data_type, hour)
        if key not in self._coverage:
            self._coverage[key] = self.store.coverage(self.symbol, data_type, hour)
        return self._coverage[key] or ()


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
    data_type, records = _trade_source(b, hour)
    if records is None:
        return None
    return SymbolInputs(trades=records, coverage={TRADE_SOURCE: b.coverage(data_type, hour)})


def _load_book(b: BronzeHours, hour: int) -> SymbolInputs | None:
    bba, diffs, snaps = (b.read(t, hour) for t in (BBA, DEPTH_DELTA, DEPTH_SNAPSHOT))
    if bba is None and diffs is None:
        # A snapshot alone carries no BBA and no diff: it only helps as warm-up.
        return None if snaps is None else SymbolInputs(depth_snapshots=snaps)
    return SymbolInputs(
        bba=bba or [],
        depth_deltas=diffs or [],
        depth_snapshots=snaps or [],
        coverage={BBA_SOURCE: b.coverage(BBA, hour), DEPTH_SOURCE: b.coverage(DEPTH_DELTA, hour)},
    )


def _load_klines(interval: str) -> Callable[[BronzeHours, int], SymbolInputs | None]:
    data_type = klines_type(interval)

    def load(b: BronzeHours, hour: int) -> SymbolInputs | None:
        records = b.read(data_type, hour)
        if records is None:
            return None
        return SymbolInputs(klines=records, coverage={KLINE_SOURCE: b.coverage(data_type, hour)})

    return load


# --------------------------------------------------------------------------------------------
# Checks (pure: a frame in, a verdict out)


@dataclass(frozen=True)
class HourFrame:
    """What a silver check sees: one symbol-hour of a table as written, and the share of the
    hour each of its bronze inputs covered."""

    frame: pd.DataFrame
    hour: int
    spec: FeatureSpec = DEFAULT_SPEC
    input_coverage: Mapping[str, float] = field(default_factory=dict)


def _on_frame(
    fn: Callable[[pd.DataFrame, int, FeatureSpec], quality.Verdict],
) -> Callable[[HourFrame], quality.Verdict]:
    return lambda d: fn(d.frame, d.hour, d.spec)


def check_grid(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    """One row per grid step: ``ts = h0 + k*step``, k = 1..n."""
    expected = np.arange(hour + spec.step_ms, hour + HOUR_MS + 1, spec.step_ms, dtype=np.int64)
    ts = frame["ts"].to_numpy(np.int64)
    if len(ts) == len(expected) and bool(np.array_equal(ts, expected)):
        numbers = {"rows": len(ts), "missing_steps": 0, "off_grid": 0, "duplicates": 0}
        return quality.Verdict(True, f"{len(ts)} rows, one per {spec.step_ms} ms step", {}, numbers)
    have = set(ts.tolist())
    missing = [int(t) for t in expected if t not in have]
    extra = sorted(have - set(expected.tolist()))
    dup = int(len(ts) - len(have))
    return quality.Verdict(
        False,
        f"{len(ts)} rows for {len(expected)} steps: {len(missing)} missing, {len(extra)} off "
        f"the grid, {dup} duplicated",
        {"missing": missing[:10], "off_grid": extra[:10], "duplicates": dup},
        {"rows": len(ts), "missing_steps": len(missing), "off_grid": len(extra), "duplicates": dup},
    )


def check_ts_increasing(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    ts = frame["ts"].to_numpy(np.int64)
    bad = np.flatnonzero(np.diff(ts) <= 0)
    numbers = {"rows": len(ts), "not_increasing": len(bad)}
    if len(bad) == 0:
        return quality.Verdict(True, "ts strictly increasing", {}, numbers)
    return quality.Verdict(
        False,
        f"ts not strictly increasing at {len(bad)} row(s)",
        {"first_rows": [int(i) + 1 for i in bad[:10]], "ts": [int(ts[i + 1]) for i in bad[:10]]},
        numbers,
    )


def _value_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("symbol", "ts", "complete")]


def check_complete_rows(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    """Rows flagged complete hold no NaN (columns null by definition excepted)."""
    complete = frame["complete"].to_numpy(np.bool_)
    optional = spec.nullable_by_definition()
    bad: dict[str, int] = {}
    for c in _value_columns(frame):
        if c in optional:
            continue
        n = int(np.isnan(frame[c].to_numpy(np.float64))[complete].sum())
        if n:
            bad[c] = n
    numbers = {"complete_rows": int(complete.sum()), "nan_values": sum(bad.values())}
    if not bad:
        return quality.Verdict(
            True, f"{int(complete.sum())} complete rows, no NaN in them", {}, numbers
        )
    return quality.Verdict(False, f"complete rows with NaN in {len(bad)} column(s)", bad, numbers)


def check_complete_share(d: HourFrame) -> quality.Verdict:
    """Every row of the hour complete; otherwise how many are not, and how much of the hour
    the inputs covered (numbers for a plot over partitions)."""
    complete = d.frame["complete"].to_numpy(np.bool_)
    share = float(complete.mean()) if len(complete) else 0.0
    covered = min(d.input_coverage.values(), default=1.0)
    numbers = {
        "complete_share": share,
        "complete_rows": float(complete.sum()),
        "input_covered_share": covered,
    }
    inputs = ", ".join(f"{t} {v:.1%}" for t, v in sorted(d.input_coverage.items()))
    summary = f"{int(complete.sum())} of {len(complete)} rows complete ({share:.1%})"
    if inputs:
        summary += f"; inputs cover {inputs} of the hour"
    details = {}
    if share < 1.0:
        ts = d.frame["ts"].to_numpy(np.int64)[~complete]
        details = {"first_incomplete_ts": ts[:5].tolist(), "last_incomplete_ts": ts[-5:].tolist()}
    return quality.Verdict(share == 1.0, summary, details, numbers)


def _violations(name: str, mask: np.ndarray, frame: pd.DataFrame, what: str) -> quality.Verdict:
    n = int(mask.sum())
    numbers = {"violations": n}
    if n == 0:
        return quality.Verdict(True, f"{what}: holds on every row with a value", {}, numbers)
    first = frame["ts"].to_numpy(np.int64)[mask][:10].tolist()
    return quality.Verdict(False, f"{what}: violated on {n} row(s)", {"first_ts": first}, numbers)


def check_spread(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    spread = frame["spread"].to_numpy(np.float64)
    return _violations("spread", spread < 0, frame, "spread >= 0")


def check_obi(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    obi = frame["obi_1"].to_numpy(np.float64)
    return _violations("obi_1", np.abs(obi) > 1, frame, "|obi_1| <= 1")


def check_bid_mid_ask(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    """bid <= mid <= ask and bid <= microprice <= ask, with bid/ask = mid -/+ spread/2 (to a
    relative 1e-12: the three are recomputed from rounded columns)."""
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
    Check("spread_non_negative", "spread >= 0 (BBA never crossed).", _on_frame(check_spread), True),
    Check("obi_bounded", "|obi_1| <= 1.", _on_frame(check_obi), True),
    Check(
        "bid_le_mid_le_ask",
        "bid <= mid <= ask and bid <= microprice <= ask (bid, ask = mid -/+ spread/2).",
        _on_frame(check_bid_mid_ask),
        True,
    ),
)
TRAINING_CHECKS = GRID_CHECKS + (BOOK_CHECKS[2],)


# --------------------------------------------------------------------------------------------
# Automation


@functools.lru_cache(maxsize=2**18)
def _shift_partition(key: str, hours: int) -> str:
    # Cached: every tick shifts the same hours again (a code server lives long).
    dt = datetime.strptime(key, PARTITION_FORMAT).replace(tzinfo=UTC)
    return (dt + timedelta(hours=hours)).strftime(PARTITION_FORMAT)


# (upstream key, hour offsets)
Offsets = Sequence[tuple[dg.AssetKey, tuple[int, ...]]]


def _offsets_label(items: Offsets) -> str:
    def one(o: int) -> str:
        return "H" if o == 0 else f"H{o:+d}"

    return ", ".join(f"{'/'.join(k.path)}@{'|'.join(one(o) for o in offs)}" for k, offs in items)


class InputsReady(dg.AutomationCondition):
    """True for hour H when each ``required`` input is materialized at H + offset, and every
    input hour that is materialized (``required`` or ``optional``, e.g. the warm-up hour) has
    its blocking checks passed in the run that produced it or later.

    Why not the built-ins: ``any_deps_missing`` and ``all_deps_blocking_checks_passed`` see
    the whole mapped window ``[H-1, H+1]`` at once, so they cannot tell the optional warm-up
    hour from the needed label hour. This condition asks the event log directly, for the few
    hours still candidates once the cheap built-in parts of :func:`silver_condition` have
    narrowed them.
    """

    def __init__(self, required: Offsets, optional: Offsets = ()) -> None:
        self.required = tuple((k, tuple(o)) for k, o in required)
        self.optional = tuple((k, tuple(o)) for k, o in optional)

    @property
    def name(self) -> str:
        return "inputs_ready"

    @property
    def description(self) -> str:
        text = f"landed, blocking checks passed: {_offsets_label(self.required)}"
        if self.optional:
            text += f"; checks passed if landed: {_offsets_label(self.optional)}"
        return text

    def evaluate(self, context: Any) -> dg.AutomationResult:
        candidates = context.candidate_subset
        if candidates.is_empty:
            return dg.AutomationResult(context=context, true_subset=candidates)
        instance = context.asset_graph_view.instance
        inputs = self.required + self.optional
        # Cheap first, from the data rather than the candidates (after the first tick every
        # missing hour is one): the hours whose required inputs have all landed, one query per
        # input; the check lookups below are then only for those.
        landed = {key: instance.get_materialized_partitions(key) for key, _ in inputs}
        possible: set[str] | None = None
        for key, offs in self.required:
            for o in offs:
                hours = {_shift_partition(p, -o) for p in landed[key]}
                possible = hours if possible is None else possible & hours
        narrowed = candidates.compute_intersection_with_partition_keys(possible or set())
        keys = [] if narrowed.is_empty else narrowed.expensively_compute_partition_keys()
        wanted: dict[dg.AssetKey, set[str]] = {key: set() for key, _ in inputs}
        for key, offs in inputs:
            wanted[key].update(
                p for pk in keys for o in offs if (p := _shift_partition(pk, o)) in landed[key]
            )
        good = {
            key: _good_partitions(instance, context.asset_graph, key, parts)
            for key, parts in wanted.items()
        }
        ok = {pk for pk in keys if all(p in good[k] for k, p in self._hours(pk, wanted))}
        true_subset = (
            candidates.compute_intersection_with_partition_keys(ok)
            if ok
            else context.get_empty_subset()
        )
        return dg.AutomationResult(context=context, true_subset=true_subset)

    def _hours(
        self, pk: str, landed: Mapping[dg.AssetKey, set[str]]
    ) -> Iterator[tuple[dg.AssetKey, str]]:
        """The input hours of ``pk`` to vouch for: the required ones, and the optional ones
        that landed."""
        for key, offs in self.required:
            for o in offs:
                yield key, _shift_partition(pk, o)
        for key, offs in self.optional:
            for o in offs:
                if (p := _shift_partition(pk, o)) in landed[key]:
                    yield key, p


def _good_partitions(
    instance: dg.DagsterInstance, graph: Any, key: dg.AssetKey, partitions: set[str]
) -> set[str]:
    """Partitions of ``key`` whose blocking checks passed in the run that materialized them
    last, or in a later run. A few queries per input whatever the number of hours."""
    blocking = [ck for ck in graph.get(key).check_keys if graph.get(ck).blocking]
    if not blocking or not partitions:
        return set(partitions)
    storage = instance.event_log_storage
    ordered = sorted(partitions)
    good = set(ordered)
    for i in range(0, len(ordered), _CHUNK):
        chunk = ordered[i : i + _CHUNK]
        latest = storage.get_latest_storage_id_by_partition(
            key, DagsterEventType.ASSET_MATERIALIZATION, set(chunk)
        )
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, storage_ids=list(latest.values())),
            limit=len(latest),
        ).records
        made_by = {r.storage_id: r.run_id for r in records}
        good -= set(chunk) - set(latest)
        for ck in blocking:
            infos = {
                info.partition_key: info
                for info in storage.get_asset_check_partition_info([ck], partition_keys=chunk)
            }
            for partition, storage_id in latest.items():
                if not _vouches(infos.get(partition), storage_id, made_by.get(storage_id)):
                    good.discard(partition)
    return good


# Partition keys per query (SQL parameter limits).
_CHUNK = 500


def _vouches(info: Any, materialization_id: int, materialization_run: str | None) -> bool:
    """A passed check evaluation from the materializing run (a ranged run logs its hours'
    results before Dagster files the materializations), or one after the materialization."""
    if info is None or info.latest_execution_status != AssetCheckExecutionRecordStatus.SUCCEEDED:
        return False
    same_run = bool(materialization_run) and info.latest_planned_run_id == materialization_run
    return same_run or info.latest_check_event_storage_id > materialization_id


def silver_condition(required: Offsets, optional: Offsets = ()) -> dg.AutomationCondition:
    """Requested once its inputs have landed with their blocking checks passed (the hour and
    the next one where labels need it), and again whenever an input is updated; never while
    an input or the asset is running.

    The trigger is ``newly_missing | any_deps_updated`` latched until the asset is requested
    or updated. Unlike ``since_last_handled`` it is not reset by the condition's first
    evaluation: on the first tick every missing hour counts as newly missing, so a deployment
    that starts (or a sensor turned on) after bronze landed catches up. An hour that turns out
    to have no input is requested once and stays missing without being asked again.
    """
    handled = (
        dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()
    ).with_label("requested or updated")
    trigger = (
        dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()
    ).since(handled)
    return (
        trigger
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
        & InputsReady(required, optional)
    ).with_label("silver_inputs_landed")


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
    # Grid times as people read them, not epoch milliseconds.
    times = {c for c in cols if c == "ts" or c.endswith("_ts")}
    head = "| " + " | ".join(f"{c} (UTC)" if c in times else c for c in cols) + " |\n"
    head += "|" + "---|" * len(cols) + "\n"
    body = "".join(
        "| "
        + " | ".join(
            iso_ms(int(r[c])) if c in times and pd.notna(r[c]) else _fmt(r[c]) for c in cols
        )
        + " |\n"
        for _, r in sample.iterrows()
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
    out: dict[str, float] = {
        "rows": float(len(frame)),
        "complete_rows": float(frame["complete"].sum()),
    }
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


def _column_schema(cols: Sequence[str], spec: FeatureSpec) -> dg.TableSchema:
    docs = spec.descriptions()
    names = ["ts", *cols, "complete"]
    types = {"ts": "int64", "complete": "bool"}
    return dg.TableSchema(
        columns=[dg.TableColumn(n, types.get(n, "float64"), description=docs[n]) for n in names]
    )


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


# --------------------------------------------------------------------------------------------
# Tables


@dataclass(frozen=True)
class SourceTable:
    table: str
    description: str
    # (bronze data type, mapping); the asset reads these through BronzeStore.
    inputs: tuple[tuple[str, dg.TimeWindowPartitionMapping], ...]
    # Bronze types that must have landed at H + offset before automation requests H ...
    required: tuple[tuple[str, tuple[int, ...]], ...]
    # ... and those that, if they landed, must have passed their blocking checks (the warm-up
    # hour; not the archived trades, only a fallback when aggTrades are empty).
    optional: tuple[tuple[str, tuple[int, ...]], ...]
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
            ((AGG_TRADES, (-1,)),),
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
            ((BBA, (-1,)), (DEPTH_DELTA, (-1,)), (DEPTH_SNAPSHOT, (-1, 0))),
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
                ((klines, (-1,)),),
                _load_klines(spec.kline_interval),
                GRID_CHECKS,
                False,
            )
        )
    return tables


def silver_tables(settings: Settings, spec: FeatureSpec = DEFAULT_SPEC) -> list[str]:
    return [s.table for s in source_tables(settings, spec)] + [TRAINING_TABLE]


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


@dataclass
class HourOutcome:
    """One table's hour as computed by a run: what was written and what the checks said."""

    hour: int
    frame: pd.DataFrame
    uri: str | None
    metadata: dict[str, Any]
    verdicts: dict[str, quality.Verdict]

    def blocked(self, checks: Sequence[Check]) -> list[str]:
        """Blocking checks that failed (an hour without rows was not checked)."""
        return [
            c.name
            for c in checks
            if c.blocking and c.name in self.verdicts and not self.verdicts[c.name].passed
        ]


def _outcome(
    table: str,
    hour: int,
    frame: pd.DataFrame,
    store: SilverStore,
    symbol: str,
    checks: Sequence[Check],
    spec: FeatureSpec,
    extra: dict[str, Any],
    input_coverage: Mapping[str, float],
    log: Any,
) -> HourOutcome:
    written = store.write_hour(symbol, hour, frame, table, spec, columns=table_columns(table, spec))
    uri = written.uri if written.rows else None
    if uri is None:
        log.info(f"{symbol} {table} {from_ms(hour):%Y-%m-%d %H}h: no input, nothing written")
        return HourOutcome(hour, frame, None, {}, {})
    extra["dagster/uri"] = dg.MetadataValue.text(uri)
    if input_coverage:
        extra["input_coverage"] = dg.MetadataValue.json(input_coverage)
    data = HourFrame(frame, hour, spec, input_coverage)
    verdicts = {c.name: c.rule(data) for c in checks}
    log.info(
        f"{symbol} {table} {from_ms(hour):%Y-%m-%d %H}h: {len(frame)} rows, "
        f"{int(frame['complete'].sum())} complete, {uri}"
    )
    return HourOutcome(hour, frame, uri, _hour_metadata(table, frame, spec, extra), verdicts)


def _source_hour(
    source: SourceTable, b: BronzeHours, hour: int, symbol: str, spec: FeatureSpec
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, float]]:
    current = source.load(b, hour)
    previous = source.load(b, hour - HOUR_MS)
    following = source.load(b, hour + HOUR_MS) if source.labels else None
    result = hour_table(
        source.table, symbol, hour, current or SymbolInputs(), previous, following, spec
    )
    extra: dict[str, Any] = {
        "previous_hour_in_bronze": dg.MetadataValue.bool(previous is not None),
    }
    if source.labels:
        extra["next_hour_in_bronze"] = dg.MetadataValue.bool(following is not None)
    if source.table == TRADE_TABLE:
        extra["trade_source"] = dg.MetadataValue.text(_trade_source(b, hour)[0])
    if result.book is not None and source.table == BOOK_TABLE:
        extra["book_sync"] = dg.MetadataValue.json(_jsonable(result.book))
    read = (
        [_trade_source(b, hour)[0]]
        if source.table == TRADE_TABLE
        else [data_type for data_type, _ in source.required]
    )
    coverage = {
        data_type: spans.length(b.coverage(data_type, hour)) / HOUR_MS
        for data_type in read
        if b.read(data_type, hour) is not None
    }
    return result.frame, extra, coverage


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


def build_symbol_silver(
    symbol: str, settings: Settings, spec: FeatureSpec = DEFAULT_SPEC
) -> dg.AssetsDefinition:
    """The silver tables of one symbol: one multi-asset, each table skippable."""
    partitions_def = hourly_partitions(settings)
    sources = source_tables(settings, spec)
    specs, all_checks = [], []
    for source in sources:
        key = silver_asset_key(symbol, source.table, settings)
        inputs = [(bronze_key(symbol, t, settings), m) for t, m in source.inputs]
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
        all_checks += check_specs(key, source.checks, partitions_def)
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
                frame, extra, coverage = _source_hour(source, b, hour, symbol, spec)
                o = _outcome(
                    source.table, hour, frame, store, symbol, source.checks, spec, extra,
                    coverage, context.log,
                )  # fmt: skip
                outcomes.append(o)
                blocked += [f"{source.table} {from_ms(hour):%Y-%m-%d %H}h {c}" for c in
                            o.blocked(source.checks)]  # fmt: skip
            done[source.table] = {o.hour: o for o in outcomes}
            yield from _report(context, key, source.checks, outcomes)
        if training_key in selected:
            outcomes = []
            for hour in hours:
                stopped = [
                    s.table
                    for s in sources
                    if (o := done.get(s.table, {}).get(hour)) is not None and o.blocked(s.checks)
                ]
                if stopped:
                    context.log.warning(
                        f"{symbol} training_set {from_ms(hour):%Y-%m-%d %H}h not joined: "
                        f"{', '.join(stopped)} failed a blocking check"
                    )
                    continue
                parts = {
                    t: done[t][hour].frame if hour in done.get(t, {}) else
                    store.read_hour(t, symbol, hour)
                    for t in SOURCE_TABLES
                }  # fmt: skip
                frame = join_tables(symbol, parts, spec)
                extra = {
                    "tables_present": dg.MetadataValue.json(
                        sorted(t for t, f in parts.items() if f is not None and len(f))
                    )
                }
                outcomes.append(
                    _outcome(
                        TRAINING_TABLE,
                        hour,
                        frame,
                        store,
                        symbol,
                        TRAINING_CHECKS,
                        spec,
                        extra,
                        {},
                        context.log,
                    )  # fmt: skip
                )
                blocked += [f"training_set {from_ms(hour):%Y-%m-%d %H}h {c}" for c in
                            outcomes[-1].blocked(TRAINING_CHECKS)]  # fmt: skip
            yield from _report(context, training_key, TRAINING_CHECKS, outcomes)
        if blocked:
            # Dagster would fail the step for the blocking evaluations too; this says which.
            raise dg.Failure(
                description=f"{len(blocked)} blocking check(s) failed: {'; '.join(blocked[:10])}"
            )

    return _silver


def build_silver_assets(
    settings: Settings, spec: FeatureSpec = DEFAULT_SPEC
) -> list[dg.AssetsDefinition]:
    """Per symbol: one multi-asset with the source tables and the training set joining them."""
    return with_code_references(
        [build_symbol_silver(symbol, settings, spec) for symbol in settings.symbols]
    )
