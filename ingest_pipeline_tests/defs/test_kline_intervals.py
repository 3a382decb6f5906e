"""Every kline interval the settings accept lands in bronze with its check passing, from the
simulator over real sockets; the ones that cannot fit an hourly partition are refused up front,
naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.defs.bronze import build_history_asset, history_types
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.records import TRADES, klines_type
from ingest_pipeline.settings import (
    CONFIG_DIR,
    KLINE_INTERVALS,
    Settings,
    SettingsError,
    load_settings,
)
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.timeutil import HOUR_MS, parse_hour

SYMBOL = "BTCUSDT"


@pytest.mark.parametrize("interval", ["2h", "4h", "12h", "1d", "3d", "1w", "1M"])
def test_intervals_longer_than_an_hour_are_refused_naming_the_key(
    interval: str, tmp_path: Path
) -> None:
    text = (CONFIG_DIR / "local.yaml").read_text().replace('["1m"]', f'["1m", "{interval}"]')
    (tmp_path / "local.yaml").write_text(text)
    with pytest.raises(SettingsError, match=f"kline_intervals.*'{interval}'"):
        load_settings("local", environ={}, config_dir=tmp_path)


def test_every_accepted_interval_lands_an_hour_with_its_check_passing(settings: Settings) -> None:
    scoped = dataclasses.replace(settings, kline_intervals=tuple(sorted(KLINE_INTERVALS)))
    assets = [
        build_history_asset(SYMBOL, kind, scoped)
        for kind in history_types(scoped)
        if kind.data_type != TRADES
    ]
    hour = "2024-08-09-03:00"
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            assets, resources=build_resources(scoped), instance=instance, partition_key=hour
        )
    assert result.success
    checks = {
        c.asset_key.path[-1]: c.passed
        for c in result.get_asset_check_evaluations()
        if c.check_name == "consistent_with_trades"
    }
    assert checks == {klines_type(i): True for i in KLINE_INTERVALS}
    store = BronzeStore(aws_client("s3", scoped), scoped.bucket, scoped.bronze_prefix)
    for interval, step in (("1s", 1_000), ("15m", 900_000), ("1h", HOUR_MS)):
        klines = store.read_hour(SYMBOL, klines_type(interval), parse_hour(hour))
        assert [k["open_time"] for k in klines] == list(
            range(parse_hour(hour), parse_hour(hour) + HOUR_MS, step)
        )
