"""The bronze assets through Dagster, against the real moto server and simulator: what lands in
S3, and what Dagster records for each hour (metadata, check status) compared with the objects."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import dagster as dg
import pytest
import requests

from ingest_pipeline.aws import aws_client
from ingest_pipeline.defs.bronze import (
    bronze_key,
    build_agg_trades_asset,
    build_bronze_assets,
    build_depth_snapshot_asset,
    build_history_asset,
    history_types,
)
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.records import AGG_TRADES, DEPTH_SNAPSHOT, TRADES, klines_type
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import (
    FIRST_TRADE_ID_META,
    LAST_TRADE_ID_META,
    TRADES_COVERED_META,
    BronzeStore,
)
from ingest_pipeline.timeutil import HOUR_MS, floor_hour, from_ms, iso_ms, now_ms, parse_hour
from ingest_pipeline_tests.dagster_harness import check_partition_statuses

PARTITION = "2024-08-09-00:00"
HOUR = parse_hour(PARTITION)
KLINES = klines_type("1m")


def first_agg_id_at_or_after(base_url: str, symbol: str, ms: int) -> int:
    """The simulator's own answer, asked directly: the first aggTrade id at or after ``ms``."""
    resp = requests.get(
        f"{base_url}/api/v3/aggTrades",
        params={"symbol": symbol, "startTime": ms, "endTime": ms + HOUR_MS - 1, "limit": 1},
        timeout=10,
    )
    resp.raise_for_status()
    return resp.json()[0]["a"]


def store_of(settings: Settings) -> BronzeStore:
    return BronzeStore(aws_client("s3", settings), settings.bucket, settings.bronze_prefix)


def keys(first: str, count: int) -> list[str]:
    return [f"{from_ms(parse_hour(first) + i * HOUR_MS):%Y-%m-%d-%H:%M}" for i in range(count)]


def ranged(first: str, last: str) -> dict[str, str]:
    """The tags of a backfill run (also over a single hour: Dagster never tags it otherwise)."""
    return {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
    }


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def latest_by_partition(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, dict]:
    """The metadata the UI shows for each hour: its latest materialization's."""
    out: dict[str, dict] = {}
    for r in instance.fetch_materializations(key, limit=1000).records:  # newest first
        out.setdefault(r.partition_key, r.asset_materialization.metadata)  # type: ignore[union-attr]
    return out


def test_catalog_entries_and_alias(settings: Settings) -> None:
    asset = build_agg_trades_asset("币安人生USDT", settings)
    assert asset.key == dg.AssetKey(["bronze", "_u5e01__u5b89__u4eba__u751f_USDT", "agg_trades"])
    aliased = dataclasses.replace(settings, symbol_aliases=(("币安人生USDT", "BINANCE_LIFE_USDT"),))
    asset = build_agg_trades_asset("币安人生USDT", aliased)
    assert asset.key == dg.AssetKey(["bronze", "BINANCE_LIFE_USDT", "agg_trades"])
    spec = next(iter(asset.specs))
    assert spec.group_name == "bronze/BINANCE_LIFE_USDT" and spec.kinds == {"s3", "binance"}
    assert spec.tags == {
        "layer": "bronze",
        "symbol": "BINANCE_LIFE_USDT",
        "data_type": "agg_trades",
        "dagster/kind/s3": "",
        "dagster/kind/binance": "",
    }
    assert spec.owners == ["team:market_data"]
    # The real symbol stays in metadata and in the S3 layout.
    assert spec.metadata["symbol"].value == "币安人生USDT"
    uri = f"s3://{settings.bucket}/bronze/币安人生USDT/agg_trades/"
    assert spec.metadata["dagster/uri"].value == uri
    columns = {c.name: c for c in spec.metadata["dagster/column_schema"].columns}
    assert list(columns)[:4] == ["symbol", "event_ts", "ingest_ts", "trade_id"]
    assert columns["trade_id"].type == "int64" and columns["price"].type == "float64"
    assert "epoch ms" in columns["event_ts"].description
    assert asset.partitions_def.get_first_partition_key() == f"{settings.partitions_start}-00:00"
    trades = build_history_asset("BTCUSDT", history_types(settings)[1], settings)
    trade_columns = next(iter(trades.specs)).metadata["dagster/column_schema"].columns
    assert "first_trade_id" not in {c.name for c in trade_columns}  # aggTrades only


def test_partition_lands_exactly_the_hour_and_reruns_change_nothing(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
    asset = build_agg_trades_asset("BTCUSDT", settings)
    resources = build_resources(settings)
    result = dg.materialize(
        [asset], resources=resources, partition_key=PARTITION, instance=instance
    )
    assert result.success
    meta = result.asset_materializations_for_node(asset.op.name)[0].metadata

    first = first_agg_id_at_or_after(settings.binance_rest_url, "BTCUSDT", HOUR)
    next_first = first_agg_id_at_or_after(settings.binance_rest_url, "BTCUSDT", HOUR + HOUR_MS)
    records = store_of(settings).read_hour("BTCUSDT", AGG_TRADES, HOUR)
    assert [r["trade_id"] for r in records] == list(range(first, next_first))
    assert all(HOUR <= r["event_ts"] < HOUR + HOUR_MS for r in records)
    assert meta["dagster/row_count"].value == len(records) == next_first - first
    assert "records" not in meta  # no duplicate of the row count
    assert meta["first_trade_id"].value == first and meta["last_trade_id"].value == next_first - 1
    assert meta["first_event_ts"].value == iso_ms(records[0]["event_ts"])
    assert meta["last_event_ts"].value == iso_ms(max(r["event_ts"] for r in records))
    key = store_of(settings).key("BTCUSDT", AGG_TRADES, HOUR)
    assert meta["dagster/uri"].value == f"s3://{settings.bucket}/{key}"
    s3 = aws_client("s3", settings)
    size = s3.head_object(Bucket=settings.bucket, Key=key)["ContentLength"]
    assert meta["size"].value.endswith(f"({size:,} bytes)") and " kB " in meta["size"].value
    assert meta["write_action"].value == "created" and meta["source"].value == "archive"
    preview = meta["preview"].value
    assert preview.startswith("| event_ts (UTC) | ingest_ts (UTC) | trade_id |")
    assert f"| {iso_ms(records[0]['event_ts'])} |" in preview and f"| {first} |" in preview

    etag = s3.head_object(Bucket=settings.bucket, Key=key)["ETag"]
    again = dg.materialize([asset], resources=resources, partition_key=PARTITION, instance=instance)
    meta2 = again.asset_materializations_for_node(asset.op.name)[0].metadata
    assert meta2["write_action"].value == "unchanged"
    assert s3.head_object(Bucket=settings.bucket, Key=key)["ETag"] == etag


def test_ranged_run_records_each_hour_with_its_own_figures_and_check_status(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
    """A backfill-style run over 3 hours: each hour's materialization describes that hour's
    object, and each check counts as passed for each hour (the UI's counters, not only the
    hour's panel)."""
    scoped = dataclasses.replace(settings, symbols=("ETHUSDT",), history_source="rest")
    assets = [a for a in build_bronze_assets(scoped) if a.key.path[-1] in (AGG_TRADES, TRADES)]
    result = dg.materialize(
        assets,
        resources=build_resources(scoped),
        instance=instance,
        tags=ranged("2024-08-09-00:00", "2024-08-09-02:00"),
    )
    assert result.success
    store = store_of(settings)
    hours = keys("2024-08-09-00:00", 3)
    for data_type in (AGG_TRADES, TRADES):
        key = bronze_key("ETHUSDT", data_type)
        by_hour = latest_by_partition(instance, key)
        assert sorted(by_hour) == hours
        for partition, meta in by_hour.items():
            hour = parse_hour(partition)
            records = store.read_hour("ETHUSDT", data_type, hour)
            assert meta["dagster/row_count"].value == len(records) > 0, partition
            assert meta["dagster/uri"].value.endswith(store.key("ETHUSDT", data_type, hour))
            ids = [r["trade_id"] for r in records]
            assert meta["first_trade_id"].value == min(ids), partition
            assert meta["last_trade_id"].value == max(ids), partition
            assert f"| {min(ids)} |" in meta["preview"].value, partition
            assert meta["source"].value == "rest"
            assert "hours" not in meta and "hours_by_source" not in meta
        asset = next(a for a in assets if a.key == key)
        for spec in asset.check_specs:
            statuses = check_partition_statuses(instance, spec.key, asset.partitions_def)
            assert statuses == {"SUCCEEDED": set(hours)}, (spec.key, statuses)
            history = instance.event_log_storage.get_asset_check_execution_history(spec.key, 20)
            assert {r.partition for r in history} == set(hours)  # no run-wide result
            numbers = [
                v
                for v in history[
                    0
                ].event.dagster_event.asset_check_evaluation_data.metadata.values()
                if isinstance(v, dg.IntMetadataValue | dg.FloatMetadataValue)
            ]
            assert numbers, f"{spec.key} has no numbers to plot"


def test_one_hour_backfill_run_records_checks_for_that_hour(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
    """A UI backfill of one hour runs with range tags and no partition tag: the checks must
    still be that hour's, not SKIPPED."""
    asset = build_agg_trades_asset("BTCUSDT", dataclasses.replace(settings, history_source="rest"))
    result = dg.materialize(
        [asset],
        resources=build_resources(settings),
        instance=instance,
        tags=ranged(PARTITION, PARTITION),
    )
    assert result.success
    for spec in asset.check_specs:
        statuses = check_partition_statuses(instance, spec.key, asset.partitions_def)
        assert statuses == {"SUCCEEDED": {PARTITION}}, (spec.key, statuses)


def test_blocking_check_fails_the_step_and_still_records_every_hour(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
    """An hour whose aggTrades miss an aggregate: its trades fail the blocking count check,
    the other hour passes; the step fails (downstream of the run must not start)."""
    scoped = dataclasses.replace(settings, symbols=("ETHUSDT",), history_source="rest")
    agg, trades = (build_history_asset("ETHUSDT", t, scoped) for t in history_types(scoped)[:2])
    resources = build_resources(scoped)
    tags = ranged("2024-08-09-00:00", "2024-08-09-01:00")
    assert dg.materialize([agg], resources=resources, instance=instance, tags=tags).success
    store = store_of(settings)
    tampered = store.read_hour("ETHUSDT", AGG_TRADES, HOUR + HOUR_MS)
    store.write_hour("ETHUSDT", AGG_TRADES, HOUR + HOUR_MS, tampered[:5] + tampered[6:])

    result = dg.materialize(
        [trades], resources=resources, instance=instance, tags=tags, raise_on_error=False
    )
    assert not result.success
    statuses = check_partition_statuses(
        instance,
        dg.AssetCheckKey(trades.key, "count_matches_agg_trades"),
        trades.partitions_def,
    )
    assert statuses == {"SUCCEEDED": {"2024-08-09-00:00"}, "FAILED": {"2024-08-09-01:00"}}
    assert sorted(latest_by_partition(instance, trades.key)) == keys("2024-08-09-00:00", 2)


def test_trades_follow_agg_trades_written_before_their_coverage_entries(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
    """A bucket from before agg_trades objects said which trades they cover: the trades asset
    decodes the aggTrades instead, lands the same trades and its checks pass; the aggTrades
    object is left as it was."""
    scoped = dataclasses.replace(settings, symbols=("ETHUSDT",), history_source="rest")
    agg, trades = (build_history_asset("ETHUSDT", t, scoped) for t in history_types(scoped)[:2])
    resources = build_resources(scoped)
    assert dg.materialize(
        [agg], resources=resources, instance=instance, tags=ranged(PARTITION, PARTITION)
    ).success
    store = store_of(settings)
    key = store.key("ETHUSDT", AGG_TRADES, HOUR)
    stored = store._s3.get_object(Bucket=store.bucket, Key=key)
    entries = (TRADES_COVERED_META, FIRST_TRADE_ID_META, LAST_TRADE_ID_META)
    older = {k: v for k, v in stored["Metadata"].items() if k not in entries}
    assert older != stored["Metadata"]
    store._s3.put_object(Bucket=store.bucket, Key=key, Body=stored["Body"].read(), Metadata=older)
    before = store._s3.head_object(Bucket=store.bucket, Key=key)

    result = dg.materialize(
        [trades], resources=resources, instance=instance, tags=ranged(PARTITION, PARTITION)
    )
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations())
    aggs = store.read_hour("ETHUSDT", AGG_TRADES, HOUR)
    ids = [t["trade_id"] for t in store.read_hour("ETHUSDT", TRADES, HOUR)]
    assert ids == list(range(aggs[0]["first_trade_id"], aggs[-1]["last_trade_id"] + 1))
    after = store._s3.head_object(Bucket=store.bucket, Key=key)
    assert (after["ETag"], after["Metadata"]) == (before["ETag"], older)


@pytest.mark.parametrize("data_type", [TRADES, KLINES])
def test_missing_upstream_refuses_before_writing_anything(
    settings: Settings, instance: dg.DagsterInstance, data_type: str
) -> None:
    """trades and klines need the hour's agg_trades: one refusal, the same for both, before any
    object is written or any materialization recorded."""
    kind = next(k for k in history_types(settings) if k.data_type == data_type)
    asset = build_history_asset("BTCUSDT", kind, settings)
    result = dg.materialize(
        [asset],
        resources=build_resources(settings),
        instance=instance,
        tags=ranged("2024-08-09-00:00", "2024-08-09-01:00"),
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error.cls_name == "Failure"
    assert error.message.strip().splitlines() == [
        f"dagster._core.definitions.events.Failure: BTCUSDT {data_type} needs the agg_trades of "
        "2024-08-09 00h, 2024-08-09 01h, not in bronze yet: materialize agg_trades for those "
        "hours first (nothing was written)"
    ]
    listed = aws_client("s3", settings).list_objects_v2(Bucket=settings.bucket)
    assert listed.get("KeyCount", 0) == 0
    assert not instance.fetch_materializations(asset.key, limit=1).records


def test_unlisted_symbol_fails_in_one_line_and_writes_nothing(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
    asset = build_agg_trades_asset("NOPEUSDT", settings)
    result = dg.materialize(
        [asset],
        resources=build_resources(settings),
        partition_key=PARTITION,
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error.cls_name == "Failure" and error.cause is None
    assert "NOPEUSDT agg_trades: Binance does not list this symbol" in error.message
    listed = aws_client("s3", settings).list_objects_v2(Bucket=settings.bucket)
    assert listed.get("KeyCount", 0) == 0


def test_trades_and_klines_follow_their_agg_trades(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
    scoped = dataclasses.replace(settings, symbols=("ETHUSDT",))
    assets = [a for a in build_bronze_assets(scoped) if a.key.path[-1] != DEPTH_SNAPSHOT]
    result = dg.materialize(
        assets, resources=build_resources(scoped), partition_key=PARTITION, instance=instance
    )
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 5 + 2 + 1 and all(c.passed for c in checks)
    assert {c.partition for c in checks} == {PARTITION}
    store = store_of(settings)
    aggs = store.read_hour("ETHUSDT", AGG_TRADES, HOUR)
    trades = store.read_hour("ETHUSDT", TRADES, HOUR)
    ids = [t["trade_id"] for t in trades]
    assert ids == list(range(aggs[0]["first_trade_id"], aggs[-1]["last_trade_id"] + 1))
    klines = store.read_hour("ETHUSDT", KLINES, HOUR)
    assert [k["open_time"] for k in klines] == list(range(HOUR, HOUR + HOUR_MS, 60_000))
    assert sum(k["trade_count"] for k in klines) == len(trades)
    meta = latest_by_partition(instance, bronze_key("ETHUSDT", KLINES))[PARTITION]
    # Kline ids are open times: shown as times, not as epoch milliseconds.
    assert meta["first_open_time"].value == "2024-08-09T00:00:00.000Z"
    assert meta["last_open_time"].value == "2024-08-09T00:59:00.000Z"
    assert "first_open_time" in meta and "| 2024-08-09T00:00:00.000Z |" in meta["preview"].value


def test_depth_snapshot_captures_the_live_hour_and_skips_past_ones(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
    asset = build_depth_snapshot_asset("BTCUSDT", settings)
    resources = build_resources(settings)
    past = dg.materialize([asset], resources=resources, partition_key=PARTITION, instance=instance)
    assert past.success and not past.get_asset_materialization_events()
    current = floor_hour(now_ms())
    key = f"{from_ms(current):%Y-%m-%d-%H:%M}"
    live = dg.materialize([asset], resources=resources, partition_key=key, instance=instance)
    assert live.success
    (check,) = live.get_asset_check_evaluations()
    assert check.passed and check.check_name == "book_valid" and check.partition == key
    assert check.metadata["bids"].value == check.metadata["asks"].value == 1000
    (snapshot,) = store_of(settings).read_hour("BTCUSDT", DEPTH_SNAPSHOT, current)
    assert len(snapshot["bids"]) == len(snapshot["asks"]) == 1000
    assert float(snapshot["bids"][0][0]) < float(snapshot["asks"][0][0])
    assert abs(snapshot["timestamp"] - now_ms()) < 60_000
    meta = live.asset_materializations_for_node(asset.op.name)[0].metadata
    assert meta["captured_server_time"].value == iso_ms(snapshot["timestamp"])
    assert meta["bid_levels"].value == 1000 and meta["dagster/row_count"].value == 1
    again = dg.materialize([asset], resources=resources, partition_key=key, instance=instance)
    assert again.success
    snapshots = store_of(settings).read_hour("BTCUSDT", DEPTH_SNAPSHOT, current)
    assert len(snapshots) == 2  # captures of one hour accumulate
    assert snapshots[0]["last_update_id"] < snapshots[1]["last_update_id"]
    meta = again.asset_materializations_for_node(asset.op.name)[0].metadata
    assert meta["dagster/row_count"].value == 2
