"""The one Definitions object of the project: assets, checks, jobs, schedules, resources."""

import dagster as dg

from ingest_pipeline.defs.bronze import build_bronze_assets
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.defs.schedules import bronze_history_job, build_schedules, depth_snapshot_job
from ingest_pipeline.settings import load_settings

settings = load_settings()

defs = dg.Definitions(
    assets=build_bronze_assets(settings),
    jobs=[bronze_history_job, depth_snapshot_job],
    schedules=build_schedules(),
    resources=build_resources(settings),
)
