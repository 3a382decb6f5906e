"""Jobs and schedules: history of the hour just closed, and the live book of the hour begun."""

import dagster as dg

from ingest_pipeline.defs.bronze import BRONZE_GROUP
from ingest_pipeline.records import DEPTH_SNAPSHOT

# Binance finalizes an hour's trades and klines at once, but a few minutes of slack keeps the
# schedule clear of clock skew and of the hour's last in-flight trades.
MINUTE_OF_HOUR = 5

_snapshots = dg.AssetSelection.groups(BRONZE_GROUP) & dg.AssetSelection.key_substring(
    DEPTH_SNAPSHOT
)

# REST history only: the archive assets (kind kinesis) have their own job and schedule.
bronze_history_job = dg.define_asset_job(
    "bronze_history_hourly",
    selection=dg.AssetSelection.groups(BRONZE_GROUP)
    & dg.AssetSelection.kind("binance") - _snapshots,
    description="agg_trades, trades and klines of one hour for every symbol.",
)

depth_snapshot_job = dg.define_asset_job(
    "depth_snapshot_hourly",
    selection=_snapshots,
    description="The live order book of every symbol, for the hour in progress.",
)


def build_schedules() -> list[dg.ScheduleDefinition]:
    # The history partitions end at the last closed hour and the snapshot partitions at the hour
    # in progress (end_offset=1), so the same minute targets "just closed" and "just begun".
    return [
        dg.build_schedule_from_partitioned_job(bronze_history_job, minute_of_hour=MINUTE_OF_HOUR),
        dg.build_schedule_from_partitioned_job(depth_snapshot_job, minute_of_hour=MINUTE_OF_HOUR),
    ]
