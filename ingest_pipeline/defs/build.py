"""The one way to build the project's Dagster definitions from settings: used by
``definitions.py`` (and so ``dagster dev``, the demo and every deployment) and by the tests."""

import dagster as dg

from ingest_pipeline.defs.archive import build_archive_assets, kinesis_resource
from ingest_pipeline.defs.bronze import build_bronze_assets
from ingest_pipeline.defs.catalog import hourly_freshness
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.defs.schedules import build_jobs_and_schedules
from ingest_pipeline.defs.silver import (
    build_silver_assets,
    build_silver_resources,
    build_silver_sensors,
)
from ingest_pipeline.defs.streamer import build_streamer_job, build_streamer_supervisor
from ingest_pipeline.settings import Settings


def build_definitions(settings: Settings) -> dg.Definitions:
    """Assets, checks, jobs, schedules, sensors and resources for ``settings``."""
    streamer_job = build_streamer_job(settings)
    bronze_assets = [*build_bronze_assets(settings), *build_archive_assets(settings)]
    # Bronze is scheduled: each closed hour is due by a deadline. Silver follows bronze through
    # its automation sensors, and its hours wait for the next hour's bronze (labels), so its
    # lateness is bronze's.
    freshness_checks, freshness_sensor = hourly_freshness(bronze_assets, settings)
    jobs, schedules = build_jobs_and_schedules(freshness_checks)
    return dg.Definitions(
        assets=[*bronze_assets, *build_silver_assets(settings)],
        asset_checks=freshness_checks,
        jobs=[*jobs, streamer_job],
        schedules=schedules,
        sensors=[
            build_streamer_supervisor(settings, streamer_job),
            # Silver keeps itself current: its automation conditions are evaluated by these
            # sensors (one per group of symbols), on from the start so a fresh deployment needs
            # no toggle in the UI.
            *build_silver_sensors(settings),
            freshness_sensor,
        ],
        resources={
            **build_resources(settings),
            **build_silver_resources(settings),
            "kinesis": kinesis_resource(settings),
        },
    )
