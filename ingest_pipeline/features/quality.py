"""The data-quality rules of the silver tables (pure: a frame in, a verdict out). The Dagster
layer wires them as asset checks (``defs/silver.py``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ingest_pipeline import quality
from ingest_pipeline.features.spec import DEFAULT_SPEC, FeatureSpec
from ingest_pipeline.timeutil import HOUR_MS

if TYPE_CHECKING:
    # Annotations only: the silver definitions import these rules, every run process with them.
    import pandas as pd


@dataclass(frozen=True)
class HourFrame:
    """What a silver check sees: one symbol-hour of a table as written, and the share of the
    hour each of its bronze inputs covered."""

    frame: pd.DataFrame
    hour: int
    spec: FeatureSpec = DEFAULT_SPEC
    input_coverage: Mapping[str, float] = field(default_factory=dict)


def on_frame(
    fn: Callable[[pd.DataFrame, int, FeatureSpec], quality.Verdict],
) -> Callable[[HourFrame], quality.Verdict]:
    return lambda d: fn(d.frame, d.hour, d.spec)


def check_grid(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    """One row per grid step: ``ts = h0 + k*step``, k = 1..n."""
    expected = np.arange(hour + spec.step_ms, hour + HOUR_MS + 1, spec.step_ms, dtype=np.int64)
    ts = frame["ts"].to_numpy(np.int64)
    if len(ts) == len(expected) and bool(np.array_equal(ts, expected)):
        numbers = {"rows": len(ts), "missing_steps": 0, "off_grid": 0, "duplicates": 0}
        return quality.Verdict(True, f"{len(ts)} rows, one per {spec.step_ms} ms step", {}, numbers)
    have = set(ts.tolist())
    missing = [int(t) for t in expected if t not in have]
    extra = sorted(have - set(expected.tolist()))
    dup = int(len(ts) - len(have))
    return quality.Verdict(
        False,
        f"{len(ts)} rows for {len(expected)} steps: {len(missing)} missing, {len(extra)} off "
        f"the grid, {dup} duplicated",
        {"missing": missing[:10], "off_grid": extra[:10], "duplicates": dup},
        {"rows": len(ts), "missing_steps": len(missing), "off_grid": len(extra), "duplicates": dup},
    )


def check_ts_increasing(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    ts = frame["ts"].to_numpy(np.int64)
    bad = np.flatnonzero(np.diff(ts) <= 0)
    numbers = {"rows": len(ts), "not_increasing": len(bad)}
    if len(bad) == 0:
        return quality.Verdict(True, "ts strictly increasing", {}, numbers)
    return quality.Verdict(
        False,
        f"ts not strictly increasing at {len(bad)} row(s)",
        {"first_rows": [int(i) + 1 for i in bad[:10]], "ts": [int(ts[i + 1]) for i in bad[:10]]},
        numbers,
    )


def value_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("symbol", "ts", "complete")]


def check_complete_rows(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    """Rows flagged complete hold no NaN (columns null by definition excepted)."""
    complete = frame["complete"].to_numpy(np.bool_)
    optional = spec.nullable_by_definition()
    bad: dict[str, int] = {}
    for c in value_columns(frame):
        if c in optional:
            continue
        n = int(np.isnan(frame[c].to_numpy(np.float64))[complete].sum())
        if n:
            bad[c] = n
    numbers = {"complete_rows": int(complete.sum()), "nan_values": sum(bad.values())}
    if not bad:
        return quality.Verdict(
            True, f"{int(complete.sum())} complete rows, no NaN in them", {}, numbers
        )
    return quality.Verdict(False, f"complete rows with NaN in {len(bad)} column(s)", bad, numbers)


def check_complete_share(d: HourFrame) -> quality.Verdict:
    """Every row of the hour complete; otherwise how many are not, and how much of the hour
    the inputs covered (numbers for a plot over partitions)."""
    complete = d.frame["complete"].to_numpy(np.bool_)
    share = float(complete.mean()) if len(complete) else 0.0
    covered = min(d.input_coverage.values(), default=1.0)
    numbers = {
        "complete_share": share,
        "complete_rows": float(complete.sum()),
        "input_covered_share": covered,
    }
    inputs = ", ".join(f"{t} {v:.1%}" for t, v in sorted(d.input_coverage.items()))
    summary = f"{int(complete.sum())} of {len(complete)} rows complete ({share:.1%})"
    if inputs:
        summary += f"; inputs cover {inputs} of the hour"
    details = {}
    if share < 1.0:
        ts = d.frame["ts"].to_numpy(np.int64)[~complete]
        details = {"first_incomplete_ts": ts[:5].tolist(), "last_incomplete_ts": ts[-5:].tolist()}
    return quality.Verdict(share == 1.0, summary, details, numbers)


def _violations(name: str, mask: np.ndarray, frame: pd.DataFrame, what: str) -> quality.Verdict:
    n = int(mask.sum())
    numbers = {"violations": n}
    if n == 0:
        return quality.Verdict(True, f"{what}: holds on every row with a value", {}, numbers)
    first = frame["ts"].to_numpy(np.int64)[mask][:10].tolist()
    return quality.Verdict(False, f"{what}: violated on {n} row(s)", {"first_ts": first}, numbers)


def check_spread(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    spread = frame["spread"].to_numpy(np.float64)
    return _violations("spread", spread < 0, frame, "spread >= 0")


def check_obi(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    obi = frame["obi_1"].to_numpy(np.float64)
    return _violations("obi_1", np.abs(obi) > 1, frame, "|obi_1| <= 1")


def check_bid_mid_ask(frame: pd.DataFrame, hour: int, spec: FeatureSpec) -> quality.Verdict:
    """bid <= mid <= ask and bid <= microprice <= ask, with bid/ask = mid -/+ spread/2 (to a
    relative 1e-12: the three are recomputed from rounded columns)."""
    mid = frame["mid"].to_numpy(np.float64)
    half = frame["spread"].to_numpy(np.float64) / 2
    micro = frame["microprice"].to_numpy(np.float64)
    bid, ask = mid - half, mid + half
    tol = np.abs(mid) * 1e-12
    with np.errstate(invalid="ignore"):
        bad = (bid > mid + tol) | (mid > ask + tol) | (micro < bid - tol) | (micro > ask + tol)
    return _violations("bid_mid_ask", bad, frame, "bid <= mid, microprice <= ask")
