"""The agg_trades bronze asset through Dagster, against the real moto server and simulator."""

from __future__ import annotations

import dataclasses

import dagster as dg
import pytest
import requests

from ingest_pipeline.aws import aws_client
from ingest_pipeline.defs.bronze import (
    bronze_key,
    build_agg_trades_asset,
    build_bronze_assets,
    build_depth_snapshot_asset,
)
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.records import AGG_TRADES, DEPTH_SNAPSHOT, TRADES, klines_type
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.timeutil import HOUR_MS, floor_hour, from_ms, now_ms, parse_hour

PARTITION = "2024-08-09-00:00"
HOUR = parse_hour(PARTITION)


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


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def test_asset_keys_mirror_the_s3_layout(settings: Settings) -> None:
    asset = build_agg_trades_asset("币安人生USDT", settings)
    assert asset.key == dg.AssetKey(["bronze", "_u5e01__u5b89__u4eba__u751f_USDT", "agg_trades"])
    spec = next(iter(asset.specs))
    assert spec.metadata["symbol"] == "币安人生USDT"
    assert spec.group_name == "bronze" and spec.kinds == {"s3", "binance"}
    assert asset.partitions_def.get_first_partition_key() == f"{settings.partitions_start}-00:00"


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
    assert meta["records"].value == len(records) == next_first - first
    assert meta["first_trade_id"].value == first and meta["last_trade_id"].value == next_first - 1
    assert meta["s3_uri"].value.startswith(f"s3://{settings.bucket}/bronze/BTCUSDT/agg_trades/")
    assert meta["write_action"].value == "created"
    preview = meta["preview"].value
    assert preview.startswith("| symbol | event_ts |") and f"| {first} |" in preview

    s3 = aws_client("s3", settings)
    key = store_of(settings).key("BTCUSDT", AGG_TRADES, HOUR)
    etag = s3.head_object(Bucket=settings.bucket, Key=key)["ETag"]
    again = dg.materialize([asset], resources=resources, partition_key=PARTITION, instance=instance)
    meta2 = again.asset_materializations_for_node(asset.op.name)[0].metadata
    assert meta2["write_action"].value == "unchanged"
    assert s3.head_object(Bucket=settings.bucket, Key=key)["ETag"] == etag


def test_ranged_run_writes_one_object_per_hour(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
    asset = build_agg_trades_asset("ETHUSDT", settings)
    result = dg.materialize(
        [asset],
        resources=build_resources(settings),
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": "2024-08-09-00:00",
            "dagster/asset_partition_range_end": "2024-08-09-02:00",
        },
    )
    assert result.success
    store = store_of(settings)
    ids = []
    for h in range(3):
        records = store.read_hour("ETHUSDT", AGG_TRADES, HOUR + h * HOUR_MS)
        assert records, f"hour {h} is empty"
        ids += [r["trade_id"] for r in records]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # contiguous across the three hours
    partitions = instance.get_materialized_partitions(bronze_key("ETHUSDT", AGG_TRADES))
    assert partitions == {"2024-08-09-00:00", "2024-08-09-01:00", "2024-08-09-02:00"}


def test_unlisted_symbol_fails_the_run_and_writes_nothing(
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
    store = store_of(settings)
    aggs = store.read_hour("ETHUSDT", AGG_TRADES, HOUR)
    trades = store.read_hour("ETHUSDT", TRADES, HOUR)
    ids = [t["trade_id"] for t in trades]
    assert ids == list(range(aggs[0]["first_trade_id"], aggs[-1]["last_trade_id"] + 1))
    klines = store.read_hour("ETHUSDT", klines_type("1m"), HOUR)
    assert [k["open_time"] for k in klines] == list(range(HOUR, HOUR + HOUR_MS, 60_000))
    assert sum(k["trade_count"] for k in klines) == len(trades)


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
    assert check.passed and check.check_name == "book_valid"
    (snapshot,) = store_of(settings).read_hour("BTCUSDT", DEPTH_SNAPSHOT, current)
    assert len(snapshot["bids"]) == len(snapshot["asks"]) == 1000
    assert float(snapshot["bids"][0][0]) < float(snapshot["asks"][0][0])
    assert abs(snapshot["timestamp"] - now_ms()) < 60_000
    again = dg.materialize([asset], resources=resources, partition_key=key, instance=instance)
    assert again.success
    snapshots = store_of(settings).read_hour("BTCUSDT", DEPTH_SNAPSHOT, current)
    assert len(snapshots) == 2  # captures of one hour accumulate
    assert snapshots[0]["last_update_id"] < snapshots[1]["last_update_id"]
