"""The silver tables: the training set split by source (``trade_features``, ``book_features``,
``kline_features``), each computed from its own inputs with its own ``complete`` flag, and joined
back into the ``training_set``. Built on :mod:`.offline`; pure, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ingest_pipeline.features.formulas import NAN
from ingest_pipeline.features.offline import FeatureResult, SymbolInputs, hour_features
from ingest_pipeline.features.spec import (
    DEFAULT_SPEC,
    SOURCE_TABLES,
    TRAINING_TABLE,
    FeatureSpec,
    GridRange,
    hour_range,
    table_columns,
    table_has_labels,
)

# The tables' names and columns live in .spec, where the asset definitions read them without
# numpy or pandas.
__all__ = ["hour_table", "join_tables", "table_complete"]


def _empty_table(spec: FeatureSpec, cols: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame({"symbol": pd.Series([], dtype="string"), "ts": np.array([], np.int64)})
    for c in cols:
        frame[c] = np.array([], np.float64)
    frame["complete"] = np.array([], np.bool_)
    return frame


def table_complete(
    frame: pd.DataFrame, cols: Sequence[str], rng: GridRange, labels: bool, spec: FeatureSpec
) -> np.ndarray:
    """The ``complete`` flag of a source table: the longest window inside the known data, the
    longest horizon too when the table holds labels, and no value of ``cols`` missing (the
    columns null by definition excepted). The training set's flag is the AND of its tables'."""
    ts = frame["ts"].to_numpy(np.int64)
    ok = ts - spec.max_window_ms >= rng.known_from
    if labels:
        ok &= ts + spec.max_horizon_ms <= rng.known_until
    optional = spec.nullable_by_definition()
    for c in cols:
        if c not in optional:
            ok &= ~np.isnan(frame[c].to_numpy(np.float64))
    return ok


def hour_table(
    table: str,
    symbol: str,
    hour_ms: int,
    current: SymbolInputs,
    previous: SymbolInputs | None = None,
    next_hour: SymbolInputs | None = None,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> FeatureResult:
    """One symbol-hour of one source table (``trade_features``, ``book_features``,
    ``kline_features``) from that table's inputs only: the columns are those of
    :func:`hour_features` on the same records, ``complete`` is :func:`table_complete`.
    No input of the table in the hour: no rows."""
    cols = table_columns(table, spec)
    if table not in SOURCE_TABLES:
        raise ValueError(f"{table!r} is not a source table")
    result = hour_features(symbol, hour_ms, current, previous, next_hour, spec)
    if result.frame.empty:
        return FeatureResult(_empty_table(spec, cols), result.book, result.stats)
    frame = result.frame[["symbol", "ts", *cols]].copy()
    rng = hour_range(hour_ms, previous is not None, next_hour is not None)
    frame["complete"] = table_complete(frame, cols, rng, table_has_labels(table), spec)
    return FeatureResult(frame, result.book, result.stats)


def join_tables(
    symbol: str, tables: Mapping[str, pd.DataFrame | None], spec: FeatureSpec = DEFAULT_SPEC
) -> pd.DataFrame:
    """Training-set rows of one symbol-hour from its source tables (outer join on ``ts``).

    A table without rows contributes nulls and makes every row incomplete (its inputs did not
    exist); no rows in any table: no rows. On the same records this equals
    :func:`hour_features` whenever each table has input in the hour itself.
    """
    present = {t: f for t, f in tables.items() if f is not None and len(f)}
    if not present:
        return _empty_table(spec, table_columns(TRAINING_TABLE, spec))
    ts = np.unique(np.concatenate([f["ts"].to_numpy(np.int64) for f in present.values()]))
    out = pd.DataFrame({"symbol": pd.array([symbol] * len(ts), dtype="string"), "ts": ts})
    complete = np.ones(len(ts), np.bool_)
    for table in SOURCE_TABLES:
        cols = table_columns(table, spec)
        frame = present.get(table)
        if frame is None:
            for c in cols:
                out[c] = np.full(len(ts), NAN)
            complete[:] = False
            continue
        idx = pd.Index(frame["ts"].to_numpy(np.int64))
        if not idx.is_unique:
            raise ValueError(f"{table} holds duplicate ts values")
        pos = idx.get_indexer(ts)
        found = pos >= 0
        for c in cols:
            values = frame[c].to_numpy(np.float64)
            out[c] = np.where(found, values[np.maximum(pos, 0)], NAN)
        flag = frame["complete"].to_numpy(np.bool_)
        complete &= found & flag[np.maximum(pos, 0)]
    out["complete"] = complete
    return out[spec.columns()]
