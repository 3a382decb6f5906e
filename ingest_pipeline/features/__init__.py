"""Silver features (SPEC §4): pure functions and classes, no I/O.

- :mod:`.spec` - grid, windows, horizons, column names and descriptions (shared).
- :mod:`.formulas` - the arithmetic from per-step primitives to columns (shared), exact sums.
- :mod:`.coverage` - what time each source covered, and what a hole means for a row (shared).
- :mod:`.offline` - vectorized features for a range of steps (a symbol-hour, a day).
- :mod:`.tables` - the silver tables: the training set split by source, and joined back.
- :mod:`.online` - the incremental engine fed records in arrival order.
- :mod:`.book` - order book rebuild from snapshot + diffs, with grid sampling.

The names below are loaded on first access (PEP 562): the silver asset definitions import
``features.spec`` and ``features.quality``, and every Dagster run process imports those
definitions; importing the whole package (pandas with it) there would cost each of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest_pipeline.features.book import BookTracker, OrderBook, SyncStats, price_ticks
    from ingest_pipeline.features.offline import (
        FeatureResult,
        SymbolInputs,
        book_features,
        compute_features,
        hour_features,
        kline_features,
        trade_features,
    )
    from ingest_pipeline.features.online import OnlineFeatureEngine, rows_to_frame
    from ingest_pipeline.features.spec import (
        BOOK_TABLE,
        DEFAULT_SPEC,
        KLINE_TABLE,
        SOURCE_TABLES,
        TRADE_TABLE,
        TRAINING_TABLE,
        FeatureSpec,
        GridRange,
        duration_suffix,
        hour_range,
        table_columns,
    )
    from ingest_pipeline.features.tables import hour_table, join_tables

__all__ = [
    "BOOK_TABLE",
    "KLINE_TABLE",
    "SOURCE_TABLES",
    "TRADE_TABLE",
    "TRAINING_TABLE",
    "hour_table",
    "join_tables",
    "table_columns",
    "DEFAULT_SPEC",
    "BookTracker",
    "FeatureResult",
    "FeatureSpec",
    "GridRange",
    "OnlineFeatureEngine",
    "OrderBook",
    "SymbolInputs",
    "SyncStats",
    "book_features",
    "compute_features",
    "duration_suffix",
    "hour_features",
    "hour_range",
    "kline_features",
    "price_ticks",
    "rows_to_frame",
    "trade_features",
]

_HOMES = {
    "BookTracker": "book",
    "OrderBook": "book",
    "SyncStats": "book",
    "price_ticks": "book",
    "FeatureResult": "offline",
    "SymbolInputs": "offline",
    "book_features": "offline",
    "compute_features": "offline",
    "hour_features": "offline",
    "kline_features": "offline",
    "trade_features": "offline",
    "OnlineFeatureEngine": "online",
    "rows_to_frame": "online",
    "DEFAULT_SPEC": "spec",
    "FeatureSpec": "spec",
    "GridRange": "spec",
    "duration_suffix": "spec",
    "hour_range": "spec",
    "BOOK_TABLE": "spec",
    "KLINE_TABLE": "spec",
    "SOURCE_TABLES": "spec",
    "TRADE_TABLE": "spec",
    "TRAINING_TABLE": "spec",
    "hour_table": "tables",
    "join_tables": "tables",
    "table_columns": "spec",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
