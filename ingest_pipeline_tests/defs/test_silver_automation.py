"""The rules of silver's automation conditions, tick by tick, evaluated in-process (fast, every
case). That the real daemon evaluates them at all is ``test_silver_automation_daemon.py``."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import dagster as dg
import pytest

from ingest_pipeline.defs.bronze import bronze_key, build_history_asset, history_types
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.defs.silver import (
    MAX_SENSOR_ENTITIES,
    build_silver_assets,
    build_silver_resources,
    build_silver_sensors,
    silver_asset_key,
)
from ingest_pipeline.records import AGG_TRADES, TRADES, klines_type
from ingest_pipeline.settings import Settings
from ingest_pipeline.timeutil import HOUR_MS, floor_hour, from_ms, now_ms

SYMBOL = "BTCUSDT"
# Recent hours and partitions from two days before: every tick evaluates every partition.
_FIRST = floor_hour(now_ms()) - 8 * HOUR_MS
H0, H1, H2, H3, H4 = (f"{from_ms(_FIRST + i * HOUR_MS):%Y-%m-%d-%H:%M}" for i in range(5))
PARTITIONS_START = f"{from_ms(_FIRST) - timedelta(days=2):%Y-%m-%d}"
TRADE_F = silver_asset_key(SYMBOL, "trade_features")
KLINE_F = silver_asset_key(SYMBOL, "kline_features")
BOOK_F = silver_asset_key(SYMBOL, "book_features")
TRAINING = silver_asset_key(SYMBOL, "training_set")


@pytest.fixture
def defs(local_settings: Settings) -> dg.Definitions:
    settings = dataclasses.replace(local_settings, partitions_start=PARTITIONS_START)
    bronze = [
        build_history_asset(SYMBOL, k, settings)
        for k in history_types(settings)
        if k.data_type != TRADES
    ]
    silver = [a for a in build_silver_assets(settings) if TRADE_F in a.keys]
    return dg.Definitions(
        assets=[*bronze, *silver],
        resources={**build_resources(settings), **build_silver_resources(settings)},
    )


def land(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    key: dg.AssetKey,
    *partitions: str,
    failing: str | None = None,
) -> None:
    """Real runs of a stand-in for ``key`` (same key, partitions and checks): a
    materialization per hour and its check results, ``failing`` failed."""
    graph = defs.get_repository_def().asset_graph
    node = graph.get(key)
    checks = [graph.get(ck) for ck in node.check_keys]
    specs = [
        dg.AssetCheckSpec(c.key.name, asset=key, blocking=c.blocking,
                          partitions_def=node.partitions_def)
        for c in checks
    ]  # fmt: skip

    @dg.asset(key=key, partitions_def=node.partitions_def, check_specs=specs)
    def stand_in() -> dg.MaterializeResult:
        return dg.MaterializeResult(
            check_results=[
                dg.AssetCheckResult(check_name=c.key.name, passed=c.key.name != failing)
                for c in checks
            ]
        )

    for pk in partitions:
        dg.materialize([stand_in], instance=instance, partition_key=pk, raise_on_error=False)


def requested(result: dg.EvaluateAutomationConditionsResult, key: dg.AssetKey) -> set[str]:
    return set(result.get_requested_partitions(key))


@pytest.mark.slow
def test_an_hour_is_requested_once_it_and_the_next_hour_landed_with_checks_passed(
    defs: dg.Definitions,
) -> None:
    agg, klines = bronze_key(SYMBOL, AGG_TRADES), bronze_key(SYMBOL, klines_type("1m"))
    with dg.DagsterInstance.ephemeral() as instance:
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert tick.total_requested == 0  # nothing has landed

        def step() -> dg.EvaluateAutomationConditionsResult:
            nonlocal tick
            tick = dg.evaluate_automation_conditions(
                defs=defs, instance=instance, cursor=tick.cursor
            )
            return tick

        land(instance, defs, agg, H1)
        land(instance, defs, klines, H1)
        step()
        # klines need no labels: the hour alone is enough; trades wait for the next hour
        assert requested(tick, KLINE_F) == {H1}
        assert requested(tick, TRADE_F) == set()
        assert requested(tick, BOOK_F) == set()  # no archived bba / depth_delta at all

        land(instance, defs, agg, H2)
        step()
        assert requested(tick, TRADE_F) == {H1}  # H0 not landed; H2 waits for H3
        assert requested(tick, KLINE_F) == set()  # already requested, nothing new
        assert step().total_requested == 0  # requested once, not again

        # the silver hour lands: the training set follows
        land(instance, defs, TRADE_F, H1)
        assert requested(step(), TRAINING) == {H1}

        # a late warm-up hour is an update of an input: H1, which reads it, is redone, and
        # H0 itself now has its hour and its next one
        land(instance, defs, agg, H0)
        assert requested(step(), TRADE_F) == {H0, H1}

        # a failed blocking check holds the hours that read the bronze hour back ...
        land(instance, defs, agg, H3, H4, failing="ids_contiguous")
        assert requested(step(), TRADE_F) == set()
        assert step().total_requested == 0
        # ... until a re-run passes it: H2 (labels from H3) goes; H3 still needs H4
        land(instance, defs, agg, H3)
        assert requested(step(), TRADE_F) == {H2}
        land(instance, defs, agg, H4)
        assert requested(step(), TRADE_F) == {H3}  # H4 waits for the hour after it


@pytest.mark.slow
def test_a_sensor_started_after_bronze_landed_catches_up(defs: dg.Definitions) -> None:
    agg = bronze_key(SYMBOL, AGG_TRADES)
    with dg.DagsterInstance.ephemeral() as instance:
        land(instance, defs, agg, H1, H2)
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert requested(first, TRADE_F) == {H1}
        second = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=first.cursor
        )
        assert second.total_requested == 0


@pytest.mark.slow
def test_symbols_are_split_over_sensors_under_dagsters_limit(local_settings: Settings) -> None:
    symbols = tuple(f"SYM{i:04d}USDT" for i in range(300))
    settings = dataclasses.replace(local_settings, symbols=symbols)
    sensors = build_silver_sensors(settings)
    defs = dg.Definitions(
        assets=build_silver_assets(settings),
        sensors=sensors,
        resources={**build_resources(settings), **build_silver_resources(settings)},
    )
    graph = defs.get_repository_def().asset_graph
    targeted: set[dg.AssetKey] = set()
    for sensor in sensors:
        keys = sensor.asset_selection.resolve(graph)
        conditioned = [k for k in keys if graph.get(k).automation_condition is not None]
        assert 0 < len(conditioned) <= MAX_SENSOR_ENTITIES
        assert not targeted & keys  # each asset is evaluated by exactly one sensor
        targeted |= keys
    assert len(targeted) == 4 * len(symbols)
    assert [s.name for s in sensors][:2] == ["silver_automation", "silver_automation_2"]
    assert len(sensors) == 6  # 50 symbols (200 assets) per sensor: ticks stay short
