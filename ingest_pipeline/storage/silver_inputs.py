"""A symbol's bronze hours as the inputs of its silver tables: each object read once per run,
its coverage from the object's metadata, which bronze type feeds which input, and which hours
of them each source table reads and waits for (:func:`source_tables`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingest_pipeline import spans
from ingest_pipeline.features.coverage import BBA_SOURCE, DEPTH_SOURCE, KLINE_SOURCE, TRADE_SOURCE
from ingest_pipeline.features.spec import (
    BOOK_TABLE,
    DEFAULT_SPEC,
    KLINE_TABLE,
    TRADE_TABLE,
    TRAINING_TABLE,
    FeatureSpec,
)
from ingest_pipeline.records import (
    AGG_TRADES,
    BBA,
    DEPTH_DELTA,
    DEPTH_SNAPSHOT,
    TRADE,
    Record,
    klines_type,
)
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import BronzeStore

if TYPE_CHECKING:
    # Imported where the loaders run (features.offline imports pandas): the silver asset
    # definitions read source_tables, and every Dagster run process imports them.
    from ingest_pipeline.features.offline import SymbolInputs

# Hours of an input a table reads, as (first, last) offsets from its own hour: the previous
# hour warms the windows up, the next one gives the labels.
WARMUP = (-1, 0)
WARMUP_AND_LABELS = (-1, 1)


class BronzeHours:
    """Bronze objects of one symbol, read once per run (a ranged run reads each hour once,
    not three times). ``None``: the object does not exist; ``[]``: it exists and is empty.
    Coverage comes from the object's metadata (a HEAD)."""

    def __init__(self, store: BronzeStore, symbol: str) -> None:
        self.store = store
        self.symbol = symbol
        self._cache: dict[tuple[str, int], list[Record] | None] = {}
        self._coverage: dict[tuple[str, int], spans.Spans | None] = {}

    def read(self, data_type: str, hour: int) -> list[Record] | None:
        key = (data_type, hour)
        if key not in self._cache:
            self._cache[key] = self.store.read_hour(self.symbol, data_type, hour)
        return self._cache[key]

    def coverage(self, data_type: str, hour: int) -> spans.Spans:
        """Covered spans of an object; nothing when it does not exist."""
        key = (data_type, hour)
        if key not in self._coverage:
            self._coverage[key] = self.store.coverage(self.symbol, data_type, hour)
        return self._coverage[key] or ()


def trade_source(b: BronzeHours, hour: int) -> tuple[str, list[Record] | None]:
    """aggTrades when the hour has any, else the archived ``trade`` records (SPEC §4)."""
    aggs = b.read(AGG_TRADES, hour)
    if aggs:
        return AGG_TRADES, aggs
    trades = b.read(TRADE, hour)
    if trades is not None:
        return TRADE, trades
    return AGG_TRADES, aggs


def load_trades(b: BronzeHours, hour: int) -> SymbolInputs | None:
    from ingest_pipeline.features.offline import SymbolInputs

    data_type, records = trade_source(b, hour)
    if records is None:
        return None
    return SymbolInputs(trades=records, coverage={TRADE_SOURCE: b.coverage(data_type, hour)})


def load_book(b: BronzeHours, hour: int) -> SymbolInputs | None:
    from ingest_pipeline.features.offline import SymbolInputs

    bba, diffs, snaps = (b.read(t, hour) for t in (BBA, DEPTH_DELTA, DEPTH_SNAPSHOT))
    if bba is None and diffs is None:
        # A snapshot alone carries no BBA and no diff: it only helps as warm-up.
        return None if snaps is None else SymbolInputs(depth_snapshots=snaps)
    return SymbolInputs(
        bba=bba or [],
        depth_deltas=diffs or [],
        depth_snapshots=snaps or [],
        coverage={BBA_SOURCE: b.coverage(BBA, hour), DEPTH_SOURCE: b.coverage(DEPTH_DELTA, hour)},
    )


def load_klines(interval: str) -> Callable[[BronzeHours, int], SymbolInputs | None]:
    data_type = klines_type(interval)

    def load(b: BronzeHours, hour: int) -> SymbolInputs | None:
        from ingest_pipeline.features.offline import SymbolInputs

        records = b.read(data_type, hour)
        if records is None:
            return None
        return SymbolInputs(klines=records, coverage={KLINE_SOURCE: b.coverage(data_type, hour)})

    return load


@dataclass(frozen=True)
class SourceTable:
    """A silver table computed from bronze, and its bronze inputs."""

    table: str
    description: str
    # (bronze data type, (first, last) hour offsets read); the asset reads them through
    # BronzeHours.
    inputs: tuple[tuple[str, tuple[int, int]], ...]
    # Bronze types that must have landed at H + offset before automation requests H ...
    required: tuple[tuple[str, tuple[int, ...]], ...]
    # ... and those that, if they landed, must have passed their blocking checks (the warm-up
    # hour; not the archived trades, only a fallback when aggTrades are empty).
    optional: tuple[tuple[str, tuple[int, ...]], ...]
    load: Callable[[BronzeHours, int], SymbolInputs | None]
    labels: bool


def source_tables(settings: Settings, spec: FeatureSpec = DEFAULT_SPEC) -> list[SourceTable]:
    """The source tables of every symbol: trades and book always, klines when bronze lands the
    feature spec's kline interval."""
    klines = klines_type(spec.kline_interval)
    tables = [
        SourceTable(
            TRADE_TABLE,
            "Trade features on the 1 s grid (trade time T) with the fwd_ret labels: bronze "
            "agg_trades, or the archived trade stream for hours without aggTrades.",
            ((AGG_TRADES, WARMUP_AND_LABELS), (TRADE, WARMUP_AND_LABELS)),
            ((AGG_TRADES, (0, 1)),),
            ((AGG_TRADES, (-1,)),),
            load_trades,
            True,
        ),
        SourceTable(
            BOOK_TABLE,
            "BBA features (receive time: spot bookTicker has no exchange time), book depth "
            "imbalance (book rebuilt from snapshot + diffs, exchange time E) and the mid-move "
            "labels.",
            ((BBA, WARMUP_AND_LABELS), (DEPTH_DELTA, WARMUP_AND_LABELS), (DEPTH_SNAPSHOT, WARMUP)),
            ((BBA, (0, 1)), (DEPTH_DELTA, (0, 1))),
            ((BBA, (-1,)), (DEPTH_DELTA, (-1,)), (DEPTH_SNAPSHOT, (-1, 0))),
            load_book,
            True,
        ),
    ]
    if spec.kline_interval in settings.kline_intervals:
        tables.append(
            SourceTable(
                KLINE_TABLE,
                f"Kline features from the last {spec.kline_interval} kline closed before ts.",
                ((klines, WARMUP),),
                ((klines, (0,)),),
                ((klines, (-1,)),),
                load_klines(spec.kline_interval),
                False,
            )
        )
    return tables


def silver_tables(settings: Settings, spec: FeatureSpec = DEFAULT_SPEC) -> list[str]:
    """Every silver table of a symbol: the source tables, then the training set joining them."""
    return [s.table for s in source_tables(settings, spec)] + [TRAINING_TABLE]
