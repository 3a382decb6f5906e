"""Silver keeps itself current: automation conditions request an hour once its inputs and the
next hour's (labels) have landed, and not before. Evaluated as the daemon does, no runs."""

from __future__ import annotations

import dagster as dg
import pytest

from ingest_pipeline.defs.bronze import bronze_key, build_history_asset, history_types
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.defs.silver import (
    build_silver_assets,
    build_silver_resources,
    silver_asset_key,
)
from ingest_pipeline.records import AGG_TRADES, TRADES, klines_type
from ingest_pipeline.settings import Settings

SYMBOL = "BTCUSDT"
H0, H1, H2 = "2024-08-09-00:00", "2024-08-09-01:00", "2024-08-09-02:00"
TRADE_F = silver_asset_key(SYMBOL, "trade_features")
KLINE_F = silver_asset_key(SYMBOL, "kline_features")
BOOK_F = silver_asset_key(SYMBOL, "book_features")
TRAINING = silver_asset_key(SYMBOL, "training_set")


@pytest.fixture
def defs(local_settings: Settings) -> dg.Definitions:
    bronze = [
        build_history_asset(SYMBOL, k, local_settings)
        for k in history_types(local_settings)
        if k.data_type != TRADES
    ]
    silver = [a for a in build_silver_assets(local_settings) if a.key.path[1] == SYMBOL]
    return dg.Definitions(
        assets=[*bronze, *silver],
        resources={**build_resources(local_settings), **build_silver_resources(local_settings)},
    )


def land(instance: dg.DagsterInstance, data_type: str, *partitions: str) -> None:
    """Record a bronze materialization, as a finished run would."""
    for pk in partitions:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(bronze_key(SYMBOL, data_type), partition=pk)
        )


def requested(result: dg.EvaluateAutomationConditionsResult, key: dg.AssetKey) -> set[str]:
    return set(result.get_requested_partitions(key))


def test_silver_hour_is_requested_once_its_hour_and_the_next_have_landed(
    defs: dg.Definitions,
) -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert result.total_requested == 0  # the first tick only takes stock

        land(instance, AGG_TRADES, H1)
        land(instance, klines_type("1m"), H1)
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        # klines need no labels: the hour alone is enough; trades wait for the next hour
        assert requested(result, KLINE_F) == {H1}
        assert requested(result, TRADE_F) == set()
        assert requested(result, BOOK_F) == set()  # no archived bba / depth_delta at all

        land(instance, AGG_TRADES, H2)
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert requested(result, TRADE_F) == {H1}  # H0 not landed; H2 waits for 03:00
        assert requested(result, KLINE_F) == set()  # already requested, nothing new

        # the silver hour lands: the training set follows
        instance.report_runless_asset_event(dg.AssetMaterialization(TRADE_F, partition=H1))
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert requested(result, TRAINING) == {H1}

        # a late warm-up hour is an update of an input: H1, which reads it, is redone, and
        # H0 itself now has its hour and its next one
        land(instance, AGG_TRADES, H0)
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert requested(result, TRADE_F) == {H0, H1}
