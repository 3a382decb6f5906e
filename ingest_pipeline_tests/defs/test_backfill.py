"""Backfills the way the UI launches them, on a real Dagster deployment, and under faults."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import requests
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from ingest_pipeline.aws import aws_client
from ingest_pipeline.defs.bronze import build_bronze_assets
from ingest_pipeline.defs.resources import BinanceRestResource, build_resources
from ingest_pipeline.records import AGG_TRADES, TRADES, klines_type
from ingest_pipeline.settings import Settings
from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline.storage.bronze import BronzeStore, decode_jsonl_gz
from ingest_pipeline.timeutil import HOUR_MS, from_ms, parse_hour
from ingest_pipeline_tests.dagster_harness import (
    QUICK_BACKFILL_S,
    ROOT,
    DagsterDev,
    check_partition_statuses,
)

SYMBOLS = ("SYM0001USDT", "SYM0002USDT")  # quiet generated symbols: ~500 trades an hour
HISTORY = (AGG_TRADES, TRADES, klines_type("1m"))


@pytest.fixture(scope="module")
def quiet_simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(extra_symbols=2)) as sim:
        yield sim


def hours(first: str, count: int) -> list[int]:
    return [parse_hour(first) + i * HOUR_MS for i in range(count)]


def expected_agg_ids(sim_url: str, symbol: str, hour: int) -> range:
    """The simulator asked directly: aggTrade ids of the hour, from its first id to the next's."""

    def first_at(ms: int) -> int:
        page = requests.get(
            f"{sim_url}/api/v3/aggTrades",
            params={"symbol": symbol, "startTime": ms, "endTime": ms + HOUR_MS - 1, "limit": 1},
            timeout=10,
        ).json()
        return page[0]["a"]

    return range(first_at(hour), first_at(hour + HOUR_MS))


def assert_every_check_passed(
    instance: dg.DagsterInstance, settings: Settings, partitions: list[str]
) -> None:
    scoped = dataclasses.replace(settings, symbols=SYMBOLS)
    checks = [
        (spec.key, asset.partitions_def)
        for asset in build_bronze_assets(scoped)
        for spec in asset.check_specs
        if spec.asset_key.path[-1] in HISTORY
    ]
    assert len(checks) == 2 * (5 + 2 + 1)
    for key, partitions_def in checks:
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=200)
        statuses = {r.status for r in history}
        assert statuses == {AssetCheckExecutionRecordStatus.SUCCEEDED}, (key, statuses)
        # One result per hour, nothing run-wide; each counts as its hour's status.
        assert {r.partition for r in history} == set(partitions), key
        by_status = check_partition_statuses(instance, key, partitions_def)
        assert by_status == {"SUCCEEDED": set(partitions)}, key


# Four hours across midnight, two symbols: runs on both sides of a day boundary, each symbol's
# assets in their own runs. The backfill may take minutes on a loaded machine.
FIRST, HOURS = "2024-08-08-22:00", 4


@pytest.mark.daemon
@pytest.mark.timeout(600)
def test_ui_backfill_across_midnight_and_two_symbols(
    aws: EmbeddedAWS, quiet_simulator: SimulatorServer, tmp_path: Path
) -> None:
    partitions = [f"{from_ms(h):%Y-%m-%d-%H:%M}" for h in hours(FIRST, HOURS)]
    env = {
        "AWS_ENDPOINT_URL": aws.endpoint_url,
        "BINANCE_REST_URL": quiet_simulator.url,
        "INGEST_SYMBOLS": ",".join(SYMBOLS),
    }
    instance_yaml = (ROOT / "dagster.yaml").read_text()
    with DagsterDev(
        tmp_path / "home", env, instance_yaml, backfill_interval_s=QUICK_BACKFILL_S
    ) as dagster:
        dagster.stop_silver()
        paths = [["bronze", s, t] for s in SYMBOLS for t in HISTORY]
        backfill_id = dagster.launch_backfill(paths, partitions)
        status = dagster.wait_backfill(backfill_id, timeout_s=420)
        assert status == "COMPLETED_SUCCESS", dagster.log_tail()

        instance = dg.DagsterInstance.from_config(str(tmp_path / "home"))
        for path in paths:
            materialized = instance.get_materialized_partitions(dg.AssetKey(path))
            assert materialized == set(partitions), path
        assert_every_check_passed(instance, aws.settings, partitions)

    settings = aws.settings
    store = BronzeStore(aws_client("s3", settings), settings.bucket, settings.bronze_prefix)
    for symbol in SYMBOLS:
        for hour in hours(FIRST, HOURS):
            aggs = store.read_hour(symbol, AGG_TRADES, hour)
            assert [a["trade_id"] for a in aggs] == list(
                expected_agg_ids(quiet_simulator.url, symbol, hour)
            )
            trades = store.read_hour(symbol, TRADES, hour)
            assert len(trades) == sum(a["last_trade_id"] - a["first_trade_id"] + 1 for a in aggs)
            assert len(store.read_hour(symbol, klines_type("1m"), hour)) == 60


def materialize_range(settings: Settings, first: str, last: str, read_timeout_s: float) -> None:
    scoped = dataclasses.replace(settings, symbols=("SYM0001USDT",))
    assets = [a for a in build_bronze_assets(scoped) if a.key.path[-1] in HISTORY]
    resources = build_resources(scoped)
    resources["binance"] = BinanceRestResource(
        base_url=settings.binance_rest_url, read_timeout_s=read_timeout_s
    )
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            assets,
            resources=resources,
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": first,
                "dagster/asset_partition_range_end": last,
            },
        )
    assert result.success


def bucket_state(settings: Settings) -> dict[str, tuple[str, object]]:
    s3 = aws_client("s3", settings)
    listed = s3.list_objects_v2(Bucket=settings.bucket, Prefix=settings.bronze_prefix)
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listed.get("Contents", [])}


def bucket_records(settings: Settings) -> dict[str, list[dict]]:
    s3 = aws_client("s3", settings)
    out = {}
    for key in bucket_state(settings):
        body = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
        out[key] = [{k: v for k, v in r.items() if k != "ingest_ts"} for r in decode_jsonl_gz(body)]
    return out


def test_backfill_under_faults_matches_a_clean_one_and_reruns_change_no_byte(
    aws: EmbeddedAWS, tmp_path: Path
) -> None:
    first, last = "2024-08-10-00:00", "2024-08-10-23:00"
    # REST faults are what this test is about: the archive would serve these closed days.
    rest = dataclasses.replace(aws.settings, history_source="rest")
    clean = dataclasses.replace(rest, bucket="clean-" + tmp_path.name[-20:].lower())
    faulty = dataclasses.replace(rest, bucket="faulty-" + tmp_path.name[-20:].lower())
    for s in (clean, faulty):
        aws_client("s3", s).create_bucket(Bucket=s.bucket)
    faults = SimulatorConfig(
        extra_symbols=2, fault_rate=0.2, fault_retry_after=1, slow_seconds=1.5, seed=3
    )
    with SimulatorServer(SimulatorConfig(extra_symbols=2)) as sim:
        materialize_range(dataclasses.replace(clean, binance_rest_url=sim.url), first, last, 10)
    with SimulatorServer(faults) as sim:
        faulty_sim = dataclasses.replace(faulty, binance_rest_url=sim.url)
        materialize_range(faulty_sim, first, last, read_timeout_s=0.5)
        before = bucket_state(clean)
        materialize_range(
            dataclasses.replace(clean, binance_rest_url=sim.url), first, last, read_timeout_s=0.5
        )
        stats = requests.get(f"{sim.url}/_sim/stats", timeout=5).json()
    assert len(before) == 24 * len(HISTORY)
    assert bucket_state(clean) == before  # same ETags, never rewritten
    clean_records = bucket_records(clean)
    assert clean_records == bucket_records(faulty)
    assert sum(len(r) for r in clean_records.values()) > 24 * 60
    assert set(stats["faults"]) == {"429", "5xx", "slow", "truncated", "malformed"}
    assert stats["bans"] == 0 and "418" not in stats["by_status"]
