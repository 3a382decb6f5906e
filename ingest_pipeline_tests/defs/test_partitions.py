"""Off-hour partition keys (issue 14): Dagster accepted ``2026-11-29-10:30`` for an hourly
definition and materialized 11:00-12:00 under the 10:30 tag. Refused at launch (``materialize``
and the real ``dagster`` CLI) and, for launches validated elsewhere, at execution."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.defs.bronze import build_agg_trades_asset
from ingest_pipeline.defs.partitions import hourly_partitions, is_whole_hour_key, partition_hours
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.records import AGG_TRADES
from ingest_pipeline.settings import Settings
from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.timeutil import parse_hour

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
OFF_HOUR = ["2024-08-10-05:30", "2024-08-10-05:01", "2024-08-10-05:59"]


def objects(settings: Settings) -> list[str]:
    s3 = aws_client("s3", settings)
    listing = s3.list_objects_v2(Bucket=settings.bucket)
    return [o["Key"] for o in listing.get("Contents", [])]


@pytest.mark.parametrize(
    ("key", "whole"),
    [
        ("2024-08-10-05:00", True),
        ("2024-08-10-05:30", False),
        ("2024-08-10-05:01", False),
        ("2024-08-10-05:59", False),
        ("2024-08-10-5:00", False),  # strptime takes one digit; the key must be canonical
        ("2024-08-10-05:00:00", False),
        ("2024-08-10", False),
        ("", False),
    ],
)
def test_whole_hour_keys(key: str, whole: bool) -> None:
    assert is_whole_hour_key(key) is whole


def test_the_definition_knows_only_whole_hours(local_settings: Settings) -> None:
    partitions = hourly_partitions(local_settings)
    assert partitions.has_partition_key("2024-08-10-05:00")
    for key in OFF_HOUR:
        assert not partitions.has_partition_key(key)
    # Dagster's own class says yes: the hole this definition closes.
    plain = dg.HourlyPartitionsDefinition(start_date="2024-08-01-00:00", timezone="UTC")
    assert plain.has_partition_key("2024-08-10-05:30")
    assert plain.time_window_for_partition_key("2024-08-10-05:30").start.hour == 6


@pytest.mark.parametrize("key", OFF_HOUR)
def test_materialize_refuses_an_off_hour_key_at_launch(key: str, settings: Settings) -> None:
    asset = build_agg_trades_asset("BTCUSDT", settings)
    with pytest.raises(dg.DagsterUnknownPartitionError, match="not a whole UTC hour"):
        dg.materialize([asset], resources=build_resources(settings), partition_key=key)
    assert objects(settings) == []


def test_an_off_hour_key_validated_elsewhere_fails_the_step_before_any_io() -> None:
    """A run launched from the webserver is validated against a snapshot of the definition
    (Dagster's own class, which takes 10:30): the step itself refuses the key."""
    hours: list[int] = []

    @dg.asset(
        partitions_def=dg.HourlyPartitionsDefinition(start_date="2024-08-01-00:00", timezone="UTC")
    )
    def hourly(context) -> None:  # unannotated: a string annotation would not pass Dagster
        hours.extend(partition_hours(context))

    result = dg.materialize([hourly], partition_key="2024-08-10-05:30", raise_on_error=False)
    assert not result.success and hours == []
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "'2024-08-10-05:30' is not a whole UTC hour" in str(failure.event_specific_data)
    ok = dg.materialize([hourly], partition_key="2024-08-10-05:00")
    assert ok.success and hours == [parse_hour("2024-08-10-05:00")]


def test_dagster_cli_refuses_an_off_hour_partition(
    aws: EmbeddedAWS, settings: Settings, simulator_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "AWS_ENDPOINT_URL": aws.endpoint_url,
        "BINANCE_REST_URL": simulator_url,
        "INGEST_SYMBOLS": "BTCUSDT",
    }
    run = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "ingest_pipeline.definitions",
         "--select", "key:bronze/BTCUSDT/agg_trades", "--partition", "2024-08-11-07:30"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode != 0
    assert "'2024-08-11-07:30' is not a whole UTC hour" in run.stderr, run.stderr[-3000:]
    # Neither the 07:00 nor the 08:00 object (what Dagster would have run) exists. The CLI
    # writes to the config's bucket, shared by the session: no other test uses these hours.
    s = aws.settings
    store = BronzeStore(aws_client("s3", s), s.bucket, s.bronze_prefix)
    for hour in (parse_hour("2024-08-11-07:00"), parse_hour("2024-08-11-08:00")):
        assert store.head("BTCUSDT", AGG_TRADES, hour) is None
