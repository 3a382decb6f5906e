"""One hour of a silver table as a run computes it, before it is written and checked: a source
table from its bronze inputs (with what it was computed from), the training set from the source
tables of the hour. Reads through :class:`BronzeHours` and :class:`SilverStore`; the features
themselves are :mod:`ingest_pipeline.features.tables`."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ingest_pipeline import spans
from ingest_pipeline.features.offline import SymbolInputs
from ingest_pipeline.features.spec import BOOK_TABLE, SOURCE_TABLES, TRADE_TABLE, FeatureSpec
from ingest_pipeline.features.summary import jsonable
from ingest_pipeline.features.tables import hour_table, join_tables
from ingest_pipeline.storage.silver import SilverStore
from ingest_pipeline.storage.silver_inputs import BronzeHours, SourceTable, trade_source
from ingest_pipeline.timeutil import HOUR_MS


@dataclass(frozen=True)
class SourceHour:
    """One hour of a source table and what it was computed from."""

    frame: pd.DataFrame
    previous_in_bronze: bool
    # None: the table holds no labels, so the next hour is not read.
    next_in_bronze: bool | None
    # trade_features: the bronze type its trades came from (aggTrades, or archived trades).
    trade_source: str | None
    # book_features: how the book synced (SyncStats as JSON values).
    book_sync: dict[str, Any] | None
    # Share of the hour each bronze input read covered (inputs that exist only).
    coverage: dict[str, float]


def source_hour(
    source: SourceTable, b: BronzeHours, hour: int, symbol: str, spec: FeatureSpec
) -> SourceHour:
    """``source``'s rows of one symbol-hour from the hour, the previous one (warm-up) and, for
    a table with labels, the next one."""
    current = source.load(b, hour)
    previous = source.load(b, hour - HOUR_MS)
    following = source.load(b, hour + HOUR_MS) if source.labels else None
    result = hour_table(
        source.table, symbol, hour, current or SymbolInputs(), previous, following, spec
    )
    trades_from = trade_source(b, hour)[0] if source.table == TRADE_TABLE else None
    read = [trades_from] if trades_from else [data_type for data_type, _ in source.required]
    return SourceHour(
        frame=result.frame,
        previous_in_bronze=previous is not None,
        next_in_bronze=following is not None if source.labels else None,
        trade_source=trades_from,
        book_sync=(
            jsonable(result.book)
            if result.book is not None and source.table == BOOK_TABLE
            else None
        ),
        coverage={
            data_type: spans.length(b.coverage(data_type, hour)) / HOUR_MS
            for data_type in read
            if b.read(data_type, hour) is not None
        },
    )


def training_hour(
    store: SilverStore,
    symbol: str,
    hour: int,
    computed: Mapping[str, pd.DataFrame],
    spec: FeatureSpec,
) -> tuple[pd.DataFrame, list[str]]:
    """Training-set rows of one symbol-hour, joined from its source tables as this run
    ``computed`` them, or as stored for those it did not; and the tables that had rows."""
    parts = {
        t: computed[t] if t in computed else store.read_hour(t, symbol, hour) for t in SOURCE_TABLES
    }
    present = sorted(t for t, f in parts.items() if f is not None and len(f))
    return join_tables(symbol, parts, spec), present
