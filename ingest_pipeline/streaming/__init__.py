"""The real-time streamer: Binance WebSocket -> normalize -> dedup -> Kinesis, with /health and
/metrics. No Dagster here: ``defs/`` wraps ``Streamer`` in a job.

``Streamer`` and ``StreamerConfig`` are loaded on first access (PEP 562): importing a light
submodule (``streaming.continuity`` for the archive assets) must not import the streamer's
runtime (aiohttp, prometheus), which every Dagster run process would otherwise pay for."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest_pipeline.streaming.config import StreamerConfig
    from ingest_pipeline.streaming.streamer import Streamer

__all__ = ["Streamer", "StreamerConfig"]

_HOMES = {"Streamer": "streamer", "StreamerConfig": "config"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
