"""The one Definitions object of the project: assets, checks, jobs, schedules, sensors,
resources."""

import dagster as dg

from ingest_pipeline.defs.archive import (
    bronze_archive_job,
    build_archive_assets,
    build_archive_schedule,
    kinesis_resource,
)
from ingest_pipeline.defs.bronze import build_bronze_assets
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.defs.schedules import bronze_history_job, build_schedules, depth_snapshot_job
from ingest_pipeline.defs.silver import (
    build_silver_assets,
    build_silver_resources,
    build_silver_sensors,
)
from ingest_pipeline.defs.streamer import build_streamer_job, build_streamer_supervisor
from ingest_pipeline.settings import load_settings

settings = load_settings()
streamer_job = build_streamer_job(settings)

defs = dg.Definitions(
    assets=[
        *build_bronze_assets(settings),
        *build_archive_assets(settings),
        *build_silver_assets(settings),
    ],
    jobs=[bronze_history_job, depth_snapshot_job, bronze_archive_job, streamer_job],
    schedules=[*build_schedules(), build_archive_schedule()],
    sensors=[
        build_streamer_supervisor(settings, streamer_job),
        # Silver keeps itself current: its automation conditions are evaluated by these
        # sensors (one per group of symbols), on from the start so a fresh deployment needs no
        # toggle in the UI.
        *build_silver_sensors(settings),
    ],
    resources={
        **build_resources(settings),
        **build_silver_resources(settings),
        "kinesis": kinesis_resource(settings),
    },
)
