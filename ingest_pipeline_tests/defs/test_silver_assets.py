"""Silver assets through Dagster on simulator bronze, against the real moto server."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.defs.bronze import build_history_asset, history_types
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.defs.silver import (
    build_silver_assets,
    build_silver_resources,
    silver_asset_key,
)
from ingest_pipeline.features import DEFAULT_SPEC, SymbolInputs, hour_features
from ingest_pipeline.features.quality import (
    HourFrame,
    check_bid_mid_ask,
    check_grid,
    check_spread,
    check_ts_increasing,
)
from ingest_pipeline.records import AGG_TRADES, BBA, TRADE, TRADES, klines_type
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.timeutil import HOUR_MS, parse_hour

SYMBOL = "BTCUSDT"
H = parse_hour("2024-08-09-01:00")
KLINES = klines_type("1m")


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def resources(settings: Settings) -> dict:
    return {**build_resources(settings), **build_silver_resources(settings)}


def bronze_assets(settings: Settings, symbol: str = SYMBOL) -> list[dg.AssetsDefinition]:
    kinds = [k for k in history_types(settings) if k.data_type != TRADES]
    return [build_history_asset(symbol, k, settings) for k in kinds]


def silver_assets(settings: Settings, symbol: str = SYMBOL) -> list[dg.AssetsDefinition]:
    """The symbol's silver multi-asset (every table)."""
    return [a for a in build_silver_assets(settings) if symbol in {k.path[1] for k in a.keys}]


def silver_keys(*tables: str, symbol: str = SYMBOL) -> list[dg.AssetKey]:
    return [silver_asset_key(symbol, t) for t in tables]


def store_of(settings: Settings) -> BronzeStore:
    return BronzeStore(aws_client("s3", settings), settings.bucket, settings.bronze_prefix)


def download_silver(settings: Settings, dest: Path) -> Path:
    """The silver prefix copied as-is to a local directory (the Hive layout kept)."""
    s3 = aws_client("s3", settings)
    listed = s3.list_objects_v2(Bucket=settings.bucket, Prefix=f"{settings.silver_prefix}/")
    for obj in listed.get("Contents", []):
        path = dest / obj["Key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s3.get_object(Bucket=settings.bucket, Key=obj["Key"])["Body"].read())
    return dest / settings.silver_prefix


def read_table(root: Path, table: str) -> pd.DataFrame:
    frame = ds.dataset(root / table, format="parquet", partitioning="hive").to_table().to_pandas()
    return frame.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)


def assert_frames_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got["ts"]) == list(want["ts"])
    for c in want.columns:
        if c in ("symbol", "ts"):
            continue
        a, b = got[c].to_numpy(), want[c].to_numpy()
        if c == "complete":
            assert np.array_equal(a.astype(bool), b.astype(bool)), c
        else:
            np.testing.assert_array_equal(a.astype(float), b.astype(float), err_msg=c)


def test_silver_hour_equals_the_engine_and_reads_as_one_dataset(
    settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    res = resources(settings)
    bronze = dg.materialize(
        bronze_assets(settings),
        resources=res,
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": "2024-08-09-00:00",
            "dagster/asset_partition_range_end": "2024-08-09-02:00",
        },
    )
    assert bronze.success
    silver = silver_assets(settings)
    result = dg.materialize(
        silver, resources=res, instance=instance, partition_key="2024-08-09-01:00"
    )
    assert result.success
    # every check passes but one: the training set has no book, so no row is complete (WARN)
    failed = {(c.asset_key.path[-1], c.check_name) for c in result.get_asset_check_evaluations()
              if not c.passed}  # fmt: skip
    assert failed == {("training_set", "all_rows_complete")}

    by_key = {
        e.asset_key: e.materialization.metadata for e in result.get_asset_materialization_events()
    }
    trade_meta = by_key[silver_asset_key(SYMBOL, "trade_features")]
    assert trade_meta["dagster/row_count"].value == 3600
    assert isinstance(trade_meta["hourly_realized_vol"].value, float)
    assert trade_meta["hourly_realized_vol"].value > 0
    assert trade_meta["trade_source"].value == AGG_TRADES
    # grid times as people read them
    preview = trade_meta["preview"].value
    assert preview.startswith("| ts (UTC) |") and "| 2024-08-09T01:00:" in preview
    assert trade_meta["input_coverage"].value == {AGG_TRADES: 1.0}
    # no archived bba / depth_delta at all: nothing written, not materialized
    assert silver_asset_key(SYMBOL, "book_features") not in by_key
    warn = {c.check_name: c for c in result.get_asset_check_evaluations()}["all_rows_complete"]
    assert warn.severity == dg.AssetCheckSeverity.WARN

    # The engine on the same bronze records.
    store = store_of(settings)

    def inputs(hour: int) -> SymbolInputs:
        return SymbolInputs(
            trades=store.read_hour(SYMBOL, AGG_TRADES, hour),
            klines=store.read_hour(SYMBOL, KLINES, hour),
        )

    want = hour_features(SYMBOL, H, inputs(H), inputs(H - HOUR_MS), inputs(H + HOUR_MS)).frame
    root = download_silver(settings, tmp_path)
    training = read_table(root, "training_set")
    assert len(training) == 3600 and set(training["symbol"]) == {SYMBOL}
    assert set(training["date"].astype(str)) == {"2024-08-09"}
    assert_frames_equal(training, want)
    trades = read_table(root, "trade_features")
    assert_frames_equal(trades, want[["ts", "trade_count", "vwap", "fwd_ret_60s"]])
    # trade columns complete everywhere (warm-up and labels present); no book: none complete
    assert trades["complete"].all() and not training["complete"].any()
    assert training["trade_count"].sum() == len(store.read_hour(SYMBOL, AGG_TRADES, H))


def test_ranged_silver_run_writes_every_hour_with_per_hour_checks(
    settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    res = resources(settings)
    hours = {
        "dagster/asset_partition_range_start": "2024-08-09-00:00",
        "dagster/asset_partition_range_end": "2024-08-09-02:00",
    }
    assert dg.materialize(bronze_assets(settings), resources=res, instance=instance, tags=hours)
    [trade] = silver_keys("trade_features")
    result = dg.materialize(
        silver_assets(settings), selection=[trade], resources=res, instance=instance, tags=hours
    )
    assert result.success
    partitions = {"2024-08-09-00:00", "2024-08-09-01:00", "2024-08-09-02:00"}
    assert instance.get_materialized_partitions(trade) == partitions
    frame = read_table(download_silver(settings, tmp_path), "trade_features")
    assert len(frame) == 3 * 3600
    assert frame["ts"].is_monotonic_increasing and frame["ts"].is_unique
    # warm-up missing before 00:00 and labels missing after 02:59: flagged, not invented
    first, last = frame.iloc[0], frame.iloc[-1]
    assert not first["complete"] and np.isnan(first["ret_300s"])
    assert not last["complete"] and np.isnan(last["fwd_ret_10s"])
    # 300 rows without a 300 s window (ret_300s at h0 + 300 s needs a price before h0), 60
    # without the 60 s horizon
    assert frame["complete"].sum() == 3 * 3600 - 300 - 60
    # one materialization per hour, with that hour's own numbers
    records = instance.fetch_materializations(trade, limit=10).records
    by_hour = {r.partition_key: r.asset_materialization.metadata for r in records}
    assert set(by_hour) == partitions
    assert {m["dagster/row_count"].value for m in by_hour.values()} == {3600}
    uris = {m["dagster/uri"].value for m in by_hour.values()}
    assert len(uris) == 3 and all(u.startswith("s3://") for u in uris)
    assert by_hour["2024-08-09-00:00"]["complete_rows"].value == 3600 - 300
    assert by_hour["2024-08-09-01:00"]["complete_rows"].value == 3600
    # per-hour check results, each counted as the partition's current result
    key = dg.AssetCheckKey(trade, "all_rows_complete")
    history = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
    assert {(r.partition, r.status.value) for r in history} == {
        ("2024-08-09-00:00", "FAILED"),
        ("2024-08-09-01:00", "SUCCEEDED"),
        ("2024-08-09-02:00", "FAILED"),
    }
    infos = instance.event_log_storage.get_asset_check_partition_info([key])
    assert {i.partition_key for i in infos if i.is_current} == partitions


def test_hours_without_input_write_nothing_and_are_not_materialized(
    aws_settings: Settings, instance: dg.DagsterInstance
) -> None:
    """Twelve hours of trades and no book input: book_features stays missing, in a ranged
    run and in one-hour runs alike, while the trade hours land."""
    store = store_of(aws_settings)
    first = parse_hour("2024-08-09-00:00")
    for i in range(12):
        hour = first + i * HOUR_MS
        store.write_hour(
            SYMBOL, TRADE, hour, [_trade(hour + 5_000 * k, hour // 1000 + k) for k in range(1, 40)]
        )
    [book, trade, training] = silver_keys("book_features", "trade_features", "training_set")
    res = resources(aws_settings)
    ranged = {
        "dagster/asset_partition_range_start": "2024-08-09-00:00",
        "dagster/asset_partition_range_end": "2024-08-09-11:00",
    }
    selection = [book, trade, training]
    result = dg.materialize(
        silver_assets(aws_settings), selection=selection, resources=res, instance=instance,
        tags=ranged,
    )  # fmt: skip
    assert result.success
    assert instance.get_materialized_partitions(book) == set()
    assert len(instance.get_materialized_partitions(trade)) == 12
    assert len(instance.get_materialized_partitions(training)) == 12
    single = dg.materialize(
        silver_assets(aws_settings), selection=[book], resources=res, instance=instance,
        partition_key="2024-08-09-05:00",
    )  # fmt: skip
    assert single.success and not single.get_asset_materialization_events()
    assert instance.get_materialized_partitions(book) == set()
    s3 = aws_client("s3", aws_settings)
    listed = s3.list_objects_v2(Bucket=aws_settings.bucket, Prefix=f"{aws_settings.silver_prefix}/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert len([k for k in keys if "/trade_features/" in k]) == 12
    assert not [k for k in keys if "/book_features/" in k]


def _trade(ts: int, tid: int) -> dict:
    return {
        "symbol": SYMBOL, "event_ts": ts, "ingest_ts": ts, "trade_id": tid, "price": 100.0,
        "qty": 0.5, "is_buyer_maker": tid % 2 == 0, "source": "sbe",
    }  # fmt: skip


def test_checks_catch_defects() -> None:
    grid = np.arange(H + 1000, H + HOUR_MS + 1, 1000)
    frame = pd.DataFrame(
        {
            "ts": grid,
            "spread": np.full(len(grid), 0.01),
            "mid": np.full(len(grid), 100.0),
            "microprice": np.full(len(grid), 100.001),
            "complete": np.ones(len(grid), bool),
        }
    )
    assert check_grid(frame, H, DEFAULT_SPEC).passed
    assert check_bid_mid_ask(frame, H, DEFAULT_SPEC).passed
    dup = frame.copy()
    dup.loc[10, "ts"] = dup.loc[9, "ts"]
    assert not check_grid(dup, H, DEFAULT_SPEC).passed
    assert not check_ts_increasing(dup, H, DEFAULT_SPEC).passed
    crossed = frame.copy()
    crossed.loc[5, "spread"] = -0.02
    assert not check_spread(crossed, H, DEFAULT_SPEC).passed
    assert not check_bid_mid_ask(crossed, H, DEFAULT_SPEC).passed
    outside = frame.copy()
    outside.loc[7, "microprice"] = 100.1
    verdict = check_bid_mid_ask(outside, H, DEFAULT_SPEC)
    assert not verdict.passed and verdict.details["first_ts"] == [int(grid[7])]
    assert HourFrame(frame, H).spec == DEFAULT_SPEC


def _bba(ts: int, uid: int, bid: float, ask: float) -> dict:
    return {
        "symbol": SYMBOL, "event_ts": ts, "ingest_ts": ts, "bid_px": bid, "bid_sz": 1.0,
        "ask_px": ask, "ask_sz": 2.0, "source": "sbe", "update_id": uid,
    }  # fmt: skip


def test_crossed_book_fails_a_blocking_check_and_stops_the_training_set(
    aws_settings: Settings, instance: dg.DagsterInstance
) -> None:
    store = store_of(aws_settings)
    good = [_bba(H + i * 500, i, 100.0, 100.5) for i in range(1, 7200)]
    crossed = good[3000]
    good[3000] = _bba(crossed["event_ts"], crossed["update_id"], 101.0, 100.5)  # bid > ask
    store.write_hour(SYMBOL, BBA, H, good)
    result = dg.materialize(
        silver_assets(aws_settings),
        selection=silver_keys("book_features", "training_set"),
        resources=resources(aws_settings),
        instance=instance,
        partition_key="2024-08-09-01:00",
        raise_on_error=False,
    )
    assert not result.success  # a blocking check failed
    # in one line naming the table, the hour and the checks, no framework stack trace
    [failure] = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error.cls_name == "Failure"
    assert "book_features 2024-08-09 01h spread_non_negative" in error.message
    assert "training_set" not in error.message
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["spread_non_negative"] is False and checks["bid_le_mid_le_ask"] is False
    assert checks["obi_bounded"] is True
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert silver_asset_key(SYMBOL, "book_features") in materialized
    assert silver_asset_key(SYMBOL, "training_set") not in materialized
