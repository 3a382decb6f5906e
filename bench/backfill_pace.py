"""Backfill pace: the agg_trades asset over many busy hours (one ranged Dagster run) against a
simulator that enforces Binance's 6000-per-minute weight limit. Reports the records/minute
reached as a fraction of what the limit allows (weight 4 per 1000-record page: 1.5M records a
minute) and the 429s and 418s received. Not a test: ``python bench/backfill_pace.py [HOURS]``.

The simulator runs in a process of its own, as Binance would, so that it does not share the
GIL with the pipeline.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import sys
import time

import dagster as dg
import requests

from ingest_pipeline.defs.bronze import build_agg_trades_asset
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.settings import load_settings
from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline.standins.simulator.basics import SymbolSpec
from ingest_pipeline.timeutil import HOUR_MS, from_ms, parse_hour

SYMBOL = "BUSYUSDT"
FIRST = parse_hour("2024-08-09-00:00")
LIMIT_RECORDS_PER_MIN = 6000 / 4 * 1000


def serve(queue: mp.Queue) -> None:
    busy = SymbolSpec(SYMBOL, "BUSY", "USDT", trades_per_hour=170_000)
    with SimulatorServer(SimulatorConfig(symbols=[busy], weight_limit=6000)) as sim:
        queue.put(sim.url)
        time.sleep(3600)


def main(hours: int) -> None:
    queue: mp.Queue = mp.Queue()
    server = mp.Process(target=serve, args=(queue,), daemon=True)
    server.start()
    url = queue.get(timeout=60)
    try:
        with EmbeddedAWS(load_settings("local", environ={})) as aws:
            # The REST pace is measured: the archive would serve these closed hours.
            settings = dataclasses.replace(
                aws.settings, binance_rest_url=url, symbols=(SYMBOL,), history_source="rest"
            )
            asset = build_agg_trades_asset(SYMBOL, settings)
            last = FIRST + (hours - 1) * HOUR_MS
            # Binance's weight window is the calendar minute: start on a boundary so the first
            # minute is a whole one, and the pace is not flattered by a partial window.
            time.sleep(60 - time.time() % 60)
            start = time.monotonic()
            with dg.DagsterInstance.ephemeral() as instance:
                result = dg.materialize(
                    [asset],
                    resources=build_resources(settings),
                    instance=instance,
                    tags={
                        "dagster/asset_partition_range_start": f"{from_ms(FIRST):%Y-%m-%d-%H:%M}",
                        "dagster/asset_partition_range_end": f"{from_ms(last):%Y-%m-%d-%H:%M}",
                    },
                    run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                )
            elapsed = time.monotonic() - start
        stats = requests.get(f"{url}/_sim/stats", timeout=5).json()
    finally:
        server.terminate()
    # One materialization per hour, each with that hour's row count.
    records = sum(
        e.materialization.metadata["dagster/row_count"].value
        for e in result.get_asset_materialization_events()
    )
    pace = records / (elapsed / 60)
    print(f"{hours} hours of {SYMBOL}: {records:,} aggTrades in {elapsed:.1f} s")
    print(f"  pace {pace:,.0f} records/min = {pace / LIMIT_RECORDS_PER_MIN:.1%} of the limit's")
    print(f"  HTTP statuses seen by the simulator: {stats['by_status']}; bans {stats['bans']}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 48)
