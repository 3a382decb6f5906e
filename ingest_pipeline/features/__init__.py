"""Silver features (SPEC §4): pure functions and classes, no I/O.

- :mod:`.spec` - grid, windows, horizons, column names and descriptions (shared).
- :mod:`.formulas` - the arithmetic from per-step primitives to columns (shared), exact sums.
- :mod:`.coverage` - what time each source covered, and what a hole means for a row (shared).
- :mod:`.offline` - vectorized features for a range of steps (a symbol-hour, a day).
- :mod:`.tables` - the silver tables: the training set split by source, and joined back.
- :mod:`.online` - the incremental engine fed records in arrival order.
- :mod:`.book` - order book rebuild from snapshot + diffs, with grid sampling.
"""

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
    DEFAULT_SPEC,
    FeatureSpec,
    GridRange,
    duration_suffix,
    hour_range,
)
from ingest_pipeline.features.tables import (
    BOOK_TABLE,
    KLINE_TABLE,
    SOURCE_TABLES,
    TRADE_TABLE,
    TRAINING_TABLE,
    hour_table,
    join_tables,
    table_columns,
)

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
