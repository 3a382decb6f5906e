"""A symbol's bronze hours as the inputs of its silver tables: each object read once per run,
its coverage from the object's metadata, and which bronze type feeds which input."""

from collections.abc import Callable

from ingest_pipeline import spans
from ingest_pipeline.features.coverage import BBA_SOURCE, DEPTH_SOURCE, KLINE_SOURCE, TRADE_SOURCE
from ingest_pipeline.features.offline import SymbolInputs
from ingest_pipeline.records import (
    AGG_TRADES,
    BBA,
    DEPTH_DELTA,
    DEPTH_SNAPSHOT,
    TRADE,
    Record,
    klines_type,
)
from ingest_pipeline.storage.bronze import BronzeStore


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
    data_type, records = trade_source(b, hour)
    if records is None:
        return None
    return SymbolInputs(trades=records, coverage={TRADE_SOURCE: b.coverage(data_type, hour)})


def load_book(b: BronzeHours, hour: int) -> SymbolInputs | None:
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
        records = b.read(data_type, hour)
        if records is None:
            return None
        return SymbolInputs(klines=records, coverage={KLINE_SOURCE: b.coverage(data_type, hour)})

    return load
