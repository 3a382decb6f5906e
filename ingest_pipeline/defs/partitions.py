"""Partitions: one hourly UTC time dimension; symbols are separate assets (see DESIGN.md)."""

from collections.abc import Iterator

import dagster as dg

from ingest_pipeline.settings import Settings
from ingest_pipeline.timeutil import HOUR_MS, to_ms


def hourly_partitions(settings: Settings, end_offset: int = 0) -> dg.HourlyPartitionsDefinition:
    """UTC hours from ``partitions_start``: closed hours only, unless ``end_offset=1`` adds the
    hour in progress."""
    return dg.HourlyPartitionsDefinition(
        start_date=f"{settings.partitions_start}-00:00", timezone="UTC", end_offset=end_offset
    )


def partition_hours(context: dg.AssetExecutionContext) -> Iterator[int]:
    """Epoch ms of every hour a run covers: one for a single partition, many for a ranged run."""
    window = context.partition_time_window
    start, end = to_ms(window.start), to_ms(window.end)
    yield from range(start, end, HOUR_MS)
