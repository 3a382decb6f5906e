"""Where a run's history hours come from: Binance's public archive (one work dir per run) or
REST, as ``settings.history_source`` says (see ``binance/history.py`` for the choice per hour).
"""

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from ingest_pipeline.binance.archive import DAY_MS, ArchiveClient
from ingest_pipeline.binance.history import HistorySource
from ingest_pipeline.binance.rest import BinanceRestClient
from ingest_pipeline.settings import Settings
from ingest_pipeline.timeutil import HOUR_MS, from_ms

# Verified archive files of a run live here (one folder per run), so that the run's assets share
# a download (agg_trades reads the day's 1m klines as its trade-count reference; klines_1m lands
# them). Each asset deletes its own files once landed; what a failed run leaves is swept later.
ARCHIVE_WORK_ROOT = Path(tempfile.gettempdir()) / "ingest-pipeline-archive"
ARCHIVE_WORK_TTL_S = 24 * 3600


def history_source(
    context: dg.AssetExecutionContext,
    settings: Settings,
    client: BinanceRestClient,
    hours: Sequence[int],
) -> HistorySource:
    """The run's source of history hours, as ``settings.history_source`` says."""
    if settings.history_source == "rest":
        return HistorySource(client, None, "rest")
    if len(hours) > 1 and (hours[0] % DAY_MS or (hours[-1] + HOUR_MS) % DAY_MS):
        # Dagster cuts a backfill into runs of 24 partitions from the range's first hour: a
        # range starting at 00:00 gives one run per UTC day. Any other start still works, each
        # run downloading the (at most two) day files its hours touch.
        context.log.info(
            f"run range {from_ms(hours[0]):%Y-%m-%d %H}h..{from_ms(hours[-1]):%Y-%m-%d %H}h "
            "is not a whole UTC day: the archive's day files are read for their hours only"
        )
    _sweep_work_dirs()
    archive = ArchiveClient(settings.archive_url, work_dir=ARCHIVE_WORK_ROOT / context.run.run_id)
    return HistorySource(client, archive, settings.history_source)


def _sweep_work_dirs() -> None:
    if not ARCHIVE_WORK_ROOT.is_dir():
        return
    cutoff = time.time() - ARCHIVE_WORK_TTL_S
    for path in ARCHIVE_WORK_ROOT.iterdir():
        try:
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue
