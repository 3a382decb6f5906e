"""What the catalogue shows of one hour of a silver table: the numbers plotted over partitions,
the null counts and a few rows as a markdown preview. Pure; the Dagster layer turns them into
materialization metadata (``defs/silver.py``)."""

from typing import Any

import numpy as np
import pandas as pd

from ingest_pipeline.features.quality import value_columns
from ingest_pipeline.features.spec import (
    BOOK_TABLE,
    TRADE_TABLE,
    TRAINING_TABLE,
    FeatureSpec,
    duration_suffix,
)
from ingest_pipeline.timeutil import iso_ms

PREVIEW_ROWS = 6


def _fmt(v: Any) -> str:
    if isinstance(v, float | np.floating):
        return "" if np.isnan(v) else f"{v:.6g}"
    return str(v)


def preview_markdown(frame: pd.DataFrame, rows: int = PREVIEW_ROWS, max_cols: int = 12) -> str:
    """A few rows spread over the hour (complete ones when there are), as a markdown table."""
    if frame.empty:
        return "(no rows)"
    pool = frame[frame["complete"]] if bool(frame["complete"].any()) else frame
    idx = np.linspace(0, len(pool) - 1, num=min(rows, len(pool))).round().astype(int)
    sample = pool.iloc[np.unique(idx)]
    cols = [c for c in sample.columns if c != "symbol"]
    if len(cols) > max_cols:
        cols = [*cols[: max_cols - 1], "complete"]
    # Grid times as people read them, not epoch milliseconds.
    times = {c for c in cols if c == "ts" or c.endswith("_ts")}
    head = "| " + " | ".join(f"{c} (UTC)" if c in times else c for c in cols) + " |\n"
    head += "|" + "---|" * len(cols) + "\n"
    body = "".join(
        "| "
        + " | ".join(
            iso_ms(int(r[c])) if c in times and pd.notna(r[c]) else _fmt(r[c]) for c in cols
        )
        + " |\n"
        for _, r in sample.iterrows()
    )
    return head + body


def hourly_realized_vol(frame: pd.DataFrame, spec: FeatureSpec) -> float:
    """sqrt of the sum of squared step returns over the hour, from the non-overlapping longest
    windows ``rv_W`` ending at h0 + W, h0 + 2W, ... (NaN windows count as 0; NaN if all are)."""
    if frame.empty:
        return float("nan")
    w = spec.max_window_ms
    col = f"rv_{duration_suffix(w)}"
    ts = frame["ts"].to_numpy(np.int64)
    rv = frame[col].to_numpy(np.float64)[(ts % w) == 0]
    if np.isnan(rv).all():
        return float("nan")
    return float(np.sqrt(np.nansum(rv * rv)))


def null_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Nulls per value column, for the columns that hold any."""
    return {c: int(frame[c].isna().sum()) for c in value_columns(frame) if frame[c].isna().any()}


def hour_numbers(table: str, frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, int | float]:
    """Plot-friendly numbers of one hour (UI asset plots chart them over partitions): counts
    as ints, the rest as floats (NaN when the hour has no value)."""
    out: dict[str, int | float] = {"complete_rows": int(frame["complete"].sum())}
    if table in (TRADE_TABLE, TRAINING_TABLE):
        out["hourly_realized_vol"] = hourly_realized_vol(frame, spec)
        out["trade_count"] = int(np.nansum(frame["trade_count"].to_numpy(np.float64)))
    if table in (BOOK_TABLE, TRAINING_TABLE):
        out["mean_spread_bps"] = (
            float(np.nanmean(frame["spread_bps"]))
            if frame["spread_bps"].notna().any()
            else float("nan")
        )
    return out


def jsonable(obj: Any) -> Any:
    """Dataclasses, mappings, sequences and numpy scalars as plain JSON values (a book's
    :class:`~ingest_pipeline.features.book.SyncStats` for the catalogue)."""
    if hasattr(obj, "__dataclass_fields__"):
        return {k: jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
