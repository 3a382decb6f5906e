"""The one Definitions object of the project: assets, checks, jobs, schedules, resources."""

from __future__ import annotations

import dagster as dg

from ingest_pipeline.defs.bronze import build_bronze_assets
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.settings import load_settings

settings = load_settings()

defs = dg.Definitions(
    assets=build_bronze_assets(settings),
    resources=build_resources(settings),
)
