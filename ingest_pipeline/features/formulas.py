"""The feature arithmetic, written once for both forms.

Both forms reduce the records to the same per-step *primitives* (bucket sums, running sums,
last price, the BBA / book / kline in force at the step). The offline form computes them for
all steps with numpy, the online form one step at a time; the accumulations are done in the same
order (trades sorted by ``(event_ts, trade_id)`` and summed left to right; running sums from the
same origin, ``np.cumsum`` being a left-to-right sum) so the primitives are bit-identical.
Everything after that - ratios, logs, square roots, windows as differences of running sums,
labels, the ``complete`` flag - is :func:`derive_rows`, called by both forms on numpy arrays
(offline: every row at once; online: the rows that just closed), so the same ufunc loops run on
the same numbers.

Nulls are NaN inside the engine (float64 columns); silver writes them as parquet nulls.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ingest_pipeline.features.spec import FeatureSpec, duration_suffix

NAN = float("nan")

# Per-step primitives, in this order (online rows are tuples in this order).
TRADE_PRIMS = (
    "count",  # trades in [ts - step, ts)
    "volume",
    "notional",  # sum price*qty
    "buy",
    "sell",
    "p",  # price of the last trade with event_ts < ts (NaN before the first trade)
    "cs_buy",  # running sums from the origin (known_from), bucket by bucket
    "cs_sell",
    "cs_r2",  # running sum of r^2, r = ln(p_ts / p_(ts-step)), 0 where undefined
)
BBA_PRIMS = ("bid_px", "bid_sz", "ask_px", "ask_sz")
KLINE_PRIMS = ("k_open", "k_high", "k_low", "k_close", "k_volume", "k_taker_buy")


def depth_prims(spec: FeatureSpec) -> tuple[str, ...]:
    out: list[str] = []
    for k in spec.depth_levels:
        out += [f"bid_sum_{k}", f"ask_sum_{k}"]
    return tuple(out)


def prim_names(spec: FeatureSpec) -> tuple[str, ...]:
    return TRADE_PRIMS + BBA_PRIMS + depth_prims(spec) + KLINE_PRIMS


# Value of a primitive at a step before the origin (a window reaching before known data).
LAG_FILL = {"cs_buy": 0.0, "cs_sell": 0.0, "cs_r2": 0.0}

Arrays = Mapping[str, np.ndarray]


def _div_or(num: np.ndarray, den: np.ndarray, where: np.ndarray, fill: float) -> np.ndarray:
    out = np.full(num.shape, fill)
    np.divide(num, den, out=out, where=where)
    return out


def log_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """ln(num/den), NaN where either is NaN. One ufunc call per array: ``np.log`` of numpy is
    not ``math.log`` (they differ in the last bit for ~0.2% of inputs), so both forms use it."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log(num / den)


def r_squared(p: np.ndarray, p_prev: np.ndarray) -> np.ndarray:
    """r^2 with r = ln(p/p_prev); 0 where r is undefined (it then adds nothing to cs_r2)."""
    r = log_ratio(p, p_prev)
    r2 = r * r
    r2[np.isnan(r2)] = 0.0
    return r2


def derive_rows(
    spec: FeatureSpec,
    ts: np.ndarray,
    cur: Arrays,
    lag: Mapping[int, Arrays],
    fwd: Mapping[int, Arrays],
    known_from: int,
    known_until: int,
) -> dict[str, np.ndarray]:
    """Feature, label and ``complete`` columns of some rows from their primitives.

    ``cur`` holds the primitives at each row, ``lag[w]`` those at ``ts - w`` (``LAG_FILL`` /
    NaN before the origin) for each window ``w``, ``fwd[n]`` those at ``ts + n`` (NaN past
    ``known_until`` or not closed yet) for each horizon ``n``.
    """
    out: dict[str, np.ndarray] = {}
    p = cur["p"]
    seen = ~np.isnan(p)  # a trade exists before ts: trade columns are defined
    with np.errstate(invalid="ignore", divide="ignore"):
        vol = cur["volume"]
        out["trade_count"] = np.where(seen, cur["count"], NAN)
        out["volume"] = np.where(seen, vol, NAN)
        out["vwap"] = _div_or(cur["notional"], vol, seen & (vol > 0), NAN)
        out["buy_volume"] = np.where(seen, cur["buy"], NAN)
        out["sell_volume"] = np.where(seen, cur["sell"], NAN)
        for w in spec.windows_ms:
            s = duration_suffix(w)
            lw = lag[w]
            buy_w = cur["cs_buy"] - lw["cs_buy"]
            sell_w = cur["cs_sell"] - lw["cs_sell"]
            signed = buy_w - sell_w
            total = buy_w + sell_w
            out[f"signed_volume_{s}"] = np.where(seen, signed, NAN)
            imb = _div_or(signed, total, total > 0, 0.0)
            out[f"trade_imbalance_{s}"] = np.where(seen, imb, NAN)
            out[f"ret_{s}"] = log_ratio(p, lw["p"])
            has_start = ~np.isnan(lw["p"])  # every r in the window is defined
            rv = np.sqrt(np.clip(cur["cs_r2"] - lw["cs_r2"], 0.0, None))
            out[f"rv_{s}"] = np.where(has_start & seen, rv, NAN)

        bid, bsz, ask, asz = cur["bid_px"], cur["bid_sz"], cur["ask_px"], cur["ask_sz"]
        mid = (bid + ask) / 2.0
        spread = ask - bid
        out["spread"] = spread
        out["spread_bps"] = spread / mid * 1e4
        out["mid"] = mid
        size = bsz + asz
        out["microprice"] = (bid * asz + ask * bsz) / size
        out["obi_1"] = (bsz - asz) / size

        for k in spec.depth_levels:
            b, a = cur[f"bid_sum_{k}"], cur[f"ask_sum_{k}"]
            tot = b + a
            out[f"depth_imbalance_{k}"] = _div_or(b - a, tot, tot > 0, NAN)

        ko = cur["k_open"]
        out["kline_ret"] = log_ratio(cur["k_close"], ko)
        out["kline_range"] = (cur["k_high"] - cur["k_low"]) / ko
        kv = cur["k_volume"]
        out["kline_taker_buy_ratio"] = _div_or(cur["k_taker_buy"], kv, kv > 0, NAN)

        for n in spec.horizons_ms:
            out[f"fwd_ret_{duration_suffix(n)}"] = log_ratio(fwd[n]["p"], p)
        for n in spec.horizons_ms:
            f = fwd[n]
            fmid = (f["bid_px"] + f["ask_px"]) / 2.0
            out[f"fwd_mid_move_{duration_suffix(n)}_bps"] = (fmid - mid) / mid * 1e4

    complete = (ts - spec.max_window_ms >= known_from) & (ts + spec.max_horizon_ms <= known_until)
    optional = spec.nullable_by_definition()
    for name, values in out.items():
        if name not in optional:
            complete &= ~np.isnan(values)
    out["complete"] = complete
    return out
