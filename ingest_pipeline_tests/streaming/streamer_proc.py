"""A streamer in a process of its own, for tests that kill or freeze it: ``python -m
ingest_pipeline_tests.streaming.streamer_proc '<json>'`` with ``{"settings": {...}, "config":
{...}}`` (Settings fields; StreamerConfig overrides). Prints a JSON health line every 0.5 s;
exits 0 on SIGTERM after a clean flush, 3 when its lease was lost."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ingest_pipeline.settings import Settings
from ingest_pipeline.streaming import Streamer
from ingest_pipeline.streaming.lease import LeaseLost
from ingest_pipeline_tests.streaming.conftest import make_config


def spec(settings: Settings, tmp: Path, **config: Any) -> str:
    return json.dumps({"settings": dataclasses.asdict(settings), "tmp": str(tmp),
                       "config": config})  # fmt: skip


def main() -> int:
    arg = json.loads(sys.argv[1])
    raw = arg["settings"]
    raw["symbols"] = tuple(raw["symbols"])
    raw["kline_intervals"] = tuple(raw["kline_intervals"])
    settings = Settings(**raw)
    streamer = Streamer(settings, make_config(Path(arg["tmp"]), **arg["config"]))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")  # fmt: skip

    async def report() -> None:
        while True:
            h = streamer.health()
            print(json.dumps({"state": h["state"], "epoch": streamer.epoch,
                              "out": {t: s["records_out"] for t, s in h["streams"].items()},
                              "acked": h["kinesis"].get("acknowledged"),
                              "fills_running": h["fills_running"],
                              "acked_symbols": len(streamer._acks.snapshot())
                              if streamer._acks is not None else 0,
                              "renewals": (h["continuity"]["lease"] or {}).get("renewals")}),
                  flush=True)  # fmt: skip
            await asyncio.sleep(0.5)

    async def run() -> None:
        task = asyncio.create_task(report())
        try:
            await streamer.run(install_signal_handlers=True)
        finally:
            task.cancel()

    try:
        asyncio.run(run())
    except LeaseLost as exc:
        print(json.dumps({"lease_lost": str(exc)}), flush=True)
        return 3
    return 0 if streamer.flushed_clean else 1


if __name__ == "__main__":
    sys.exit(main())
