"""Partitions: one hourly UTC time dimension; symbols are separate assets (see DESIGN.md).

Partition keys are whole UTC hours, ``YYYY-MM-DD-HH:00``. Dagster (1.13) does not hold its
hourly definitions to that: for the plain ``0 * * * *`` schedule ``has_partition_key`` parses the
key and formats it back without aligning it to a window, so ``2026-11-29-10:30`` is "valid", and
the run's time window is then the *next* window from 10:30, 11:00-12:00, materialized under the
10:30 tag. Two guards close that:

- at launch, ``WholeHourPartitions.has_partition_key`` / ``validate_partition_key`` refuse an
  off-hour key wherever this code location's definitions validate it: ``dg.materialize``,
  ``dagster asset materialize --partition``, run requests of sensors and schedules;
- at execution, ``partition_hours`` fails the step with a ``dg.Failure`` before any hour is
  read or written, for
  launches validated elsewhere (the webserver and daemon check keys against a snapshot of the
  definition, which is Dagster's own class).
"""

from collections.abc import Iterator
from datetime import datetime

import dagster as dg

from ingest_pipeline.settings import Settings
from ingest_pipeline.timeutil import HOUR_MS, to_ms

# Dagster's default hourly key format (no time zone: the partitions are UTC).
PARTITION_KEY_FORMAT = "%Y-%m-%d-%H:%M"


def is_whole_hour_key(partition_key: str) -> bool:
    """``YYYY-MM-DD-HH:00`` exactly: parses, has minute 00, and formats back to itself."""
    try:
        dt = datetime.strptime(partition_key, PARTITION_KEY_FORMAT)
    except ValueError:
        return False
    return dt.minute == 0 and dt.strftime(PARTITION_KEY_FORMAT) == partition_key


def _not_whole_hour(partition_key: str) -> str:
    return (
        f"partition key {partition_key!r} is not a whole UTC hour: hourly partition keys are "
        "YYYY-MM-DD-HH:00"
    )


class WholeHourPartitions(dg.HourlyPartitionsDefinition):
    """``HourlyPartitionsDefinition`` that only knows whole-hour keys (see the module doc)."""

    def has_partition_key(self, partition_key: str) -> bool:
        return is_whole_hour_key(partition_key) and super().has_partition_key(partition_key)

    def validate_partition_key(self, partition_key: str, context: object) -> None:
        if not is_whole_hour_key(partition_key):
            raise dg.DagsterUnknownPartitionError(_not_whole_hour(partition_key))
        super().validate_partition_key(partition_key, context)  # type: ignore[arg-type]


def hourly_partitions(settings: Settings, end_offset: int = 0) -> dg.HourlyPartitionsDefinition:
    """UTC hours from ``partitions_start``: closed hours only, unless ``end_offset=1`` adds the
    hour in progress."""
    return WholeHourPartitions(
        start_date=f"{settings.partitions_start}-00:00", timezone="UTC", end_offset=end_offset
    )


def partition_hours(context: dg.AssetExecutionContext) -> Iterator[int]:
    """Epoch ms of every hour a run covers: one for a single partition, many for a ranged run.
    Fails the step (``dg.Failure``) for a key that is not a whole hour."""
    key_range = context.partition_key_range
    for key in (key_range.start, key_range.end):
        if not is_whole_hour_key(key):
            raise dg.Failure(
                description=f"{_not_whole_hour(key)}; refusing to run the hour Dagster would "
                "map it to under the wrong tag",
                allow_retries=False,
            )
    window = context.partition_time_window
    start, end = to_ms(window.start), to_ms(window.end)
    yield from range(start, end, HOUR_MS)
