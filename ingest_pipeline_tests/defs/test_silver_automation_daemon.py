"""Silver materializes by itself under the real daemon: ``dagster dev`` (webserver, daemon, code
server, queued runs), bronze landed through a UI-style backfill, nothing called by the test but
the GraphQL API. The conditions are evaluated where Dagster evaluates them.

One session, two hours of bronze for a quiet symbol: hour H and H+1 land with their checks
passing, then the klines of H+1 land with a blocking check failing (their aggTrades were cut
short in S3, so volumes disagree). Expected: trade, kline features and the training set of H
follow within a few sensor ticks; the kline features of H+1 never run. And a backfill that
selects bronze and silver for H+2 carries silver along.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.defs.bronze import bronze_key
from ingest_pipeline.defs.silver import silver_asset_key
from ingest_pipeline.records import AGG_TRADES, klines_type
from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.storage.silver import SilverStore
from ingest_pipeline.timeutil import HOUR_MS, floor_hour, from_ms, now_ms
from ingest_pipeline_tests.dagster_harness import QUICK_BACKFILL_S, ROOT, DagsterDev

SYMBOL = "SYM0001USDT"  # a quiet generated symbol: a few hundred trades an hour
INTERVAL_S = 3
KLINES = klines_type("1m")

TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 200) { status timestamp runIds } } }
    ... on PythonError { message }
  }
}
"""
LOCATION = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }
"""


@pytest.fixture(scope="module")
def quiet_simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(extra_symbols=2)) as sim:
        yield sim


def pk(hour: int) -> str:
    return f"{from_ms(hour):%Y-%m-%d-%H:%M}"


def wait(cond: Callable[[], Any], timeout: float, what: str, dagster: DagsterDev) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"{what}: {dagster.log_tail()}")


def ticks(dagster: DagsterDev) -> list[dict[str, Any]]:
    repo = dagster.graphql(LOCATION)["repositoriesOrError"]["nodes"][0]
    selector = {
        "repositoryLocationName": repo["location"]["name"],
        "repositoryName": repo["name"],
        "sensorName": "silver_automation",
    }
    sensor = dagster.graphql(TICKS, {"selector": selector})["sensorOrError"]
    assert sensor["__typename"] == "Sensor", sensor
    assert sensor["sensorState"]["status"] == "RUNNING"
    return sorted(sensor["sensorState"]["ticks"], key=lambda t: t["timestamp"])


def silver_runs(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> list[Any]:
    """Runs that targeted a silver asset at one hour (launched by the sensor or a backfill)."""
    records = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": partition}))
    return [r for r in records if key in (r.dagster_run.asset_selection or set())]


# dagster dev takes ~30 s to come up; three backfills and the sensor's runs need a few minutes
# on a busy machine.
@pytest.mark.daemon
@pytest.mark.timeout(900)
def test_silver_runs_itself_once_bronze_landed_and_not_past_a_failed_blocking_check(
    aws: EmbeddedAWS, quiet_simulator: SimulatorServer, tmp_path: Path
) -> None:
    settings = dataclasses.replace(aws.settings, symbols=(SYMBOL,))
    h = floor_hour(now_ms()) - 3 * HOUR_MS  # closed hours the simulator serves
    h1 = h + HOUR_MS
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n"
        "      module_name: ingest_pipeline_tests.defs.automation_location\n"
        f"      working_directory: {ROOT}\n"
    )
    env = {
        "AWS_ENDPOINT_URL": aws.endpoint_url,
        "BINANCE_REST_URL": quiet_simulator.url,
        "INGEST_SYMBOLS": SYMBOL,
        "TEST_PARTITIONS_START": f"{from_ms(h) - timedelta(days=1):%Y-%m-%d}",
        "TEST_SENSOR_INTERVAL_SECONDS": str(INTERVAL_S),
    }
    instance_yaml = (ROOT / "dagster.yaml").read_text()
    trade_f, kline_f, training = (
        silver_asset_key(SYMBOL, t) for t in ("trade_features", "kline_features", "training_set")
    )
    with DagsterDev(
        tmp_path / "home", env, instance_yaml, workspace, backfill_interval_s=QUICK_BACKFILL_S
    ) as dagster:
        instance = dg.DagsterInstance.from_config(str(tmp_path / "home"))
        wait(lambda: len(ticks(dagster)) >= 1, 120, "the sensor never ticked", dagster)

        # bronze H and H+1: aggTrades, every check passes
        agg = bronze_key(SYMBOL, AGG_TRADES)
        backfill = dagster.launch_backfill([agg.path], [pk(h), pk(h1)])
        assert dagster.wait_backfill(backfill, 400) == "COMPLETED_SUCCESS"
        landed_at = time.time()  # landed, checked, and no longer in progress

        # then the klines of H and H+1, H+1 with a failing blocking check: that hour's
        # aggTrades lost their last trade in S3 behind Dagster's back, so volumes disagree
        store = BronzeStore(aws_client("s3", settings), settings.bucket, settings.bronze_prefix)
        aggs = store.read_hour(SYMBOL, AGG_TRADES, h1)
        store.write_hour(SYMBOL, AGG_TRADES, h1, aggs[:-1])
        klines = bronze_key(SYMBOL, KLINES)
        backfill = dagster.launch_backfill([klines.path], [pk(h), pk(h1)])
        # both hours are filed as materialized (the backfill counts them done), then the
        # blocking check fails the run
        dagster.wait_backfill(backfill, 400)
        [run] = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill}))
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert {pk(h), pk(h1)} <= instance.get_materialized_partitions(klines)
        checked = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(klines, "consistent_with_trades"), limit=5
        )
        assert {(r.partition, r.status.value) for r in checked} >= {
            (pk(h), "SUCCEEDED"),
            (pk(h1), "FAILED"),
        }

        # silver H follows by itself
        def silver_h_done() -> bool:
            return all(
                pk(h) in instance.get_materialized_partitions(k)
                for k in (trade_f, kline_f, training)
            )

        wait(silver_h_done, 300, "silver H did not materialize", dagster)
        silver = SilverStore(aws_client("s3", settings), settings.bucket, settings.silver_prefix)
        frame = silver.read_hour("trade_features", SYMBOL, h)
        assert len(frame) == 3600
        # no warm-up hour: the first five minutes flagged, the rest complete
        assert not frame["complete"].iloc[:300].any() and frame["complete"].sum() > 3000
        assert frame["trade_count"].sum() == len(store.read_hour(SYMBOL, AGG_TRADES, h))

        # ... requested by the sensor's own tick, at most two ticks after the bronze hours
        # were done (the bronze backfill is "in progress" until the backfill daemon's next
        # iteration after its run, so the request may come before we saw it done)
        history = ticks(dagster)
        [run] = silver_runs(instance, trade_f, pk(h))
        [requesting] = [t for t in history if run.dagster_run.run_id in t["runIds"]]
        waited = [t for t in history if landed_at <= t["timestamp"] < requesting["timestamp"]]
        assert len(waited) <= 2, waited

        # a UI backfill that selects bronze and silver carries silver along
        h2 = h1 + HOUR_MS
        backfill = dagster.launch_backfill([agg.path, trade_f.path], [pk(h2)])
        assert dagster.wait_backfill(backfill, 400) == "COMPLETED_SUCCESS"
        assert pk(h2) in instance.get_materialized_partitions(trade_f)
        in_backfill = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill}))
        assert any(trade_f in (r.asset_selection or ()) for r in in_backfill)

        # ... and nothing past the failed blocking check, tick after tick
        first = len(ticks(dagster))
        wait(lambda: len(ticks(dagster)) >= first + 5, 120, "the sensor stopped", dagster)
        assert pk(h1) not in instance.get_materialized_partitions(kline_f)
        assert silver_runs(instance, kline_f, pk(h1)) == []
