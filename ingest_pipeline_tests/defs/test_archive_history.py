"""Bronze history from Binance's public archive, through Dagster: the same objects as REST,
re-runs through either source change no byte, and a UI backfill over days uses no REST."""

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
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.records import AGG_TRADES, TRADES, klines_type
from ingest_pipeline.settings import Settings
from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline.timeutil import HOUR_MS, from_ms, parse_hour
from ingest_pipeline_tests.dagster_harness import (
    QUICK_BACKFILL_S,
    ROOT,
    DagsterDev,
    check_partition_statuses,
)
from ingest_pipeline_tests.defs.test_backfill import bucket_records, bucket_state

SYMBOLS = ("SYM0001USDT", "SYM0002USDT")
HISTORY = (AGG_TRADES, TRADES, klines_type("1m"))
REST_HISTORY = ("/api/v3/aggTrades", "/api/v3/historicalTrades", "/api/v3/klines")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    # Equality, not pace, is tested here: a weight budget far above Binance's keeps the REST
    # side of the comparison from waiting for the next minute.
    with SimulatorServer(SimulatorConfig(extra_symbols=2, weight_limit=200_000)) as server:
        yield server


def rest_history_requests(url: str) -> int:
    by_path = requests.get(f"{url}/_sim/stats", timeout=5).json()["by_path"]
    return sum(by_path.get(p, 0) for p in REST_HISTORY)


def keys(first: str, hours: int) -> list[str]:
    return [f"{from_ms(parse_hour(first) + i * HOUR_MS):%Y-%m-%d-%H:%M}" for i in range(hours)]


def materialize(
    settings: Settings, instance: dg.DagsterInstance, source: str, first: str, last: str
) -> None:
    scoped = dataclasses.replace(settings, symbols=SYMBOLS, history_source=source)
    assets = [a for a in build_bronze_assets(scoped) if a.key.path[-1] in HISTORY]
    result = dg.materialize(
        assets,
        resources=build_resources(scoped),
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
    )
    assert result.success


# Three ranged runs of 48 hours x 6 assets: most of the time is Dagster's event log.
@pytest.mark.timeout(600)
def test_archive_bronze_equals_rest_bronze_across_the_new_year_and_reruns_change_nothing(
    aws: EmbeddedAWS, sim: SimulatorServer, tmp_path: Path
) -> None:
    # The days on both sides of the archive's switch to microseconds (2025-01-01), two symbols.
    # (More days, record for record against REST, in binance/test_archive_source.py.)
    first, last = "2024-12-31-00:00", "2025-01-01-23:00"
    base = dataclasses.replace(aws.settings, binance_rest_url=sim.url, archive_base_url=None)
    from_archive = dataclasses.replace(base, bucket="arch-" + tmp_path.name[-20:].lower())
    from_rest = dataclasses.replace(base, bucket="rest-" + tmp_path.name[-20:].lower())
    for s in (from_archive, from_rest):
        aws_client("s3", s).create_bucket(Bucket=s.bucket)
    with dg.DagsterInstance.ephemeral() as instance:
        before = rest_history_requests(sim.url)
        materialize(from_archive, instance, "auto", first, last)
        assert rest_history_requests(sim.url) == before  # every hour from the archive
        for symbol in SYMBOLS:
            for data_type in HISTORY:
                events = instance.fetch_materializations(
                    dg.AssetKey(["bronze", symbol, data_type]), limit=200
                ).records
                by_hour = {
                    e.partition_key: e.asset_materialization.metadata
                    for e in events  # type: ignore[union-attr]
                }
                assert sorted(by_hour) == keys(first, 48)
                assert {m["source"].value for m in by_hour.values()} == {"archive"}
                # Each hour carries its own figures, not the run's.
                assert len({m["dagster/uri"].value for m in by_hour.values()}) == 48
        materialize(from_rest, instance, "rest", first, last)
    archived = bucket_records(from_archive)
    assert len(archived) == 48 * len(SYMBOLS) * len(HISTORY)
    assert archived == bucket_records(from_rest)
    assert all(r["event_ts"] < 10**13 for k, rs in archived.items() if "trades" in k for r in rs)

    # Through the other source, a re-run finds the same records: no object is rewritten.
    state = bucket_state(from_archive)
    with dg.DagsterInstance.ephemeral() as instance:
        materialize(from_archive, instance, "rest", first, last)
    assert bucket_state(from_archive) == state


def assert_every_check_passed_per_hour(
    instance: dg.DagsterInstance, settings: Settings, symbol: str, partitions: list[str]
) -> None:
    scoped = dataclasses.replace(settings, symbols=(symbol,))
    checks = [
        (spec.key, asset.partitions_def)
        for asset in build_bronze_assets(scoped)
        for spec in asset.check_specs
        if spec.asset_key.path[-1] in HISTORY
    ]
    assert len(checks) == 5 + 2 + 1
    for key, partitions_def in checks:
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=500)
        assert {r.status for r in history} == {AssetCheckExecutionRecordStatus.SUCCEEDED}, key
        # One result per hour, nothing run-wide; each counts as its hour's status.
        assert {r.partition for r in history} == set(partitions), key
        by_status = check_partition_statuses(instance, key, partitions_def)
        assert by_status == {"SUCCEEDED": set(partitions)}, key


# A week, as a user backfills it from the UI: daily runs of three steps each, two at a time
# (the binance pool), mostly Dagster's process starts and event log.
DAYS = 7


@pytest.mark.daemon
@pytest.mark.timeout(1200)
def test_ui_backfill_over_days_uses_the_archive_and_every_check_passes(
    aws: EmbeddedAWS, sim: SimulatorServer, tmp_path: Path
) -> None:
    symbol = SYMBOLS[0]
    partitions = keys("2024-08-12-00:00", DAYS * 24)
    env = {
        "AWS_ENDPOINT_URL": aws.endpoint_url,
        "BINANCE_REST_URL": sim.url,
        "INGEST_SYMBOLS": symbol,
        "INGEST_HISTORY_SOURCE": "auto",
    }
    requests.post(f"{sim.url}/_sim/archive/faults", json={"faults": []}, timeout=5)
    zips_before = requests.get(f"{sim.url}/_sim/archive/stats", timeout=5).json()["requests"]
    rest_before = rest_history_requests(sim.url)
    instance_yaml = (ROOT / "dagster.yaml").read_text()
    with DagsterDev(
        tmp_path / "home", env, instance_yaml, backfill_interval_s=QUICK_BACKFILL_S
    ) as dagster:
        dagster.stop_silver()
        paths = [["bronze", symbol, t] for t in HISTORY]
        backfill_id = dagster.launch_backfill(paths, partitions)
        status = dagster.wait_backfill(backfill_id, timeout_s=1000)
        assert status == "COMPLETED_SUCCESS", dagster.log_tail()
        instance = dg.DagsterInstance.from_config(str(tmp_path / "home"))
        for path in paths:
            assert instance.get_materialized_partitions(dg.AssetKey(path)) == set(partitions)
        assert_every_check_passed_per_hour(instance, aws.settings, symbol, partitions)
        # The backfill's runs are cut along UTC days, 00:00..23:00, each landing all three
        # types of its day: the children join their parent's run (same hourly partitions and
        # backfill policy), so a day costs one run, not one per type.
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert sorted(
            (
                r.tags["dagster/asset_partition_range_start"],
                r.tags["dagster/asset_partition_range_end"],
                frozenset(r.asset_selection or ()),
            )
            for r in runs
        ) == [
            (partitions[i], partitions[i + 23], frozenset(dg.AssetKey(p) for p in paths))
            for i in range(0, DAYS * 24, 24)
        ]
        for path in paths:
            events = instance.fetch_materializations(dg.AssetKey(path), limit=500).records
            meta = [e.asset_materialization.metadata for e in events]  # type: ignore[union-attr]
            assert len(meta) == DAYS * 24
            assert {m["source"].value for m in meta} == {"archive"}, path
    assert rest_history_requests(sim.url) == rest_before
    zips = requests.get(f"{sim.url}/_sim/archive/stats", timeout=5).json()["requests"]
    # One download per file kind and day: aggTrades, trades and 1m klines (the klines file is
    # shared by the run's agg_trades check and its klines asset).
    for kind in ("aggTrades", "trades", "klines"):
        assert zips.get(f"zip {kind}", 0) - zips_before.get(f"zip {kind}", 0) == DAYS, kind
