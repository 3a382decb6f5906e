"""A code location for the daemon test: the real bronze and silver assets and silver's real
automation sensors, for the symbols in ``$INGEST_SYMBOLS``, with partitions from
``$TEST_PARTITIONS_START`` (a day ago: every tick evaluates every partition) and the sensors
ticking every ``$TEST_SENSOR_INTERVAL_SECONDS``."""

import dataclasses
import os

import dagster as dg

from ingest_pipeline.defs.bronze import build_bronze_assets
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.defs.silver import (
    build_silver_assets,
    build_silver_resources,
    build_silver_sensors,
)
from ingest_pipeline.settings import load_settings

settings = dataclasses.replace(
    load_settings(), partitions_start=os.environ["TEST_PARTITIONS_START"]
)

defs = dg.Definitions(
    assets=[*build_bronze_assets(settings), *build_silver_assets(settings)],
    sensors=build_silver_sensors(
        settings, interval_seconds=int(os.environ["TEST_SENSOR_INTERVAL_SECONDS"])
    ),
    resources={**build_resources(settings), **build_silver_resources(settings)},
)
