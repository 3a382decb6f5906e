"""Jobs and schedules: history of the hour just closed, the live book of the hour begun, and
the stream archive of the hour just closed."""

from collections.abc import Sequence
from typing import Any

import dagster as dg

from ingest_pipeline.defs.bronze import LAYER
from ingest_pipeline.defs.catalog import DATA_TYPE_TAG, FRESHNESS_DEADLINE_CRON, LAYER_TAG
from ingest_pipeline.records import DEPTH_SNAPSHOT

# Binance finalizes an hour's trades and klines at once, but a few minutes of slack keeps the
# schedule clear of clock skew and of the hour's last in-flight trades. The stream archive runs
# at the same minute: the grace for late records (240 s by default) has passed by then.
MINUTE_OF_HOUR = 5

_bronze = dg.AssetSelection.tag(LAYER_TAG, LAYER)
_snapshots = _bronze & dg.AssetSelection.tag(DATA_TYPE_TAG, DEPTH_SNAPSHOT)
_DUE = f"due by HH:{FRESHNESS_DEADLINE_CRON.split()[0]} (freshness checks)"


def build_jobs_and_schedules(
    freshness_checks: Sequence[dg.AssetChecksDefinition],
) -> tuple[list[Any], list[Any]]:
    """The hourly jobs and their schedules. A job selecting assets would also run every check
    of them, the freshness checks included, which judge an hour *before* the run lands it:
    those run from their own sensor only."""
    not_here = dg.AssetSelection.checks(*freshness_checks)
    jobs = [
        # REST history only: the archive assets (kind kinesis) have their own job.
        dg.define_asset_job(
            "bronze_history_hourly",
            selection=_bronze & dg.AssetSelection.kind("binance") - _snapshots - not_here,
            description="agg_trades, trades and klines of one hour for every symbol.",
        ),
        dg.define_asset_job(
            "depth_snapshot_hourly",
            selection=_snapshots - not_here,
            description="The live order book of every symbol, for the hour in progress.",
        ),
        dg.define_asset_job(
            "bronze_archive_hourly",
            selection=_bronze & dg.AssetSelection.kind("kinesis") - not_here,
            description="trade, bba and depth_delta of the hour just closed, read back from "
            "Kinesis.",
        ),
    ]
    # The history and archive partitions end at the last closed hour and the snapshot
    # partitions at the hour in progress (end_offset=1), so the same minute targets "just
    # closed" and "just begun".
    what = {
        "bronze_history_hourly": "agg_trades, trades and klines of the hour just closed, every "
        "symbol, from Binance's archive or REST",
        "depth_snapshot_hourly": "the live order book of every symbol, filed under the hour just "
        "begun",
        "bronze_archive_hourly": "trade, bba and depth_delta of the hour just closed, every "
        "symbol, read back from Kinesis once its grace for late records has passed",
    }
    schedules = [
        dg.build_schedule_from_partitioned_job(
            job,
            minute_of_hour=MINUTE_OF_HOUR,
            description=f"At HH:{MINUTE_OF_HOUR:02d}: {what[job.name]}; {_DUE}.",
        )
        for job in jobs
    ]
    return jobs, schedules
