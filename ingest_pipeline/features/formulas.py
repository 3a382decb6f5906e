"""The feature arithmetic, written once for both forms.

Both forms reduce the records to the same per-step *primitives* (bucket sums, last price, the
BBA / book / kline in force at the step, whether the step's bucket was covered). The offline
form computes them for all steps with numpy, the online form one step at a time. Everything
after that - windows, ratios, logs, square roots, labels, the ``complete`` flag - is
:func:`derive_block`, called by both forms on a contiguous block of steps (offline: the whole
range; online: the rows just closed plus the steps their windows and horizons reach), so the
same operations run on the same numbers and give bit-identical columns.

Exactness does not depend on where a computation starts or how long it has run:

- Quantities are exact integers. Binance sends sizes as decimal strings with at most 8
  decimals; each float ``qty`` is split into whole units and 1e-8 units (two int64 *limbs*,
  :func:`qty_limbs`; exact for every size Binance can send, whose float carries its decimals,
  i.e. below ~1.6e7 with 8 decimals, or any integer size), and every bucket and window sum is
  an integer sum of limbs. Integer addition has no rounding, so a window as the difference of
  two running sums is the same number from any origin. A value is converted to float once, at
  the end, rounded to nearest (:func:`limbs_to_float`): ``volume`` and ``signed_volume_W`` are
  the float nearest to the exact decimal sum.
- Float sums that cannot be integers (``rv_W``: squared log returns) are *direct* window sums
  in one fixed order, oldest step first (:func:`window_sums`), never differences of running
  sums: a running sum grows with time and its rounding would grow with it.
- ``notional`` (price * qty) is summed per bucket only, in ``(event_ts, trade_id)`` order.

Nulls are NaN inside the engine (float64 columns); silver writes them as parquet nulls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ingest_pipeline.features.spec import FeatureSpec, duration_suffix

NAN = float("nan")

# Float primitives per step, in this order (online history rows are tuples in this order).
TRADE_PRIMS = (
    "count",  # trades in [ts - step, ts)
    "notional",  # sum price*qty of the bucket, in (event_ts, trade_id) order
    "p",  # price of the last trade with event_ts < ts; NaN if none or not known (coverage)
    "seen",  # 1.0 once a trade with event_ts < ts exists in the data, else 0.0
    "cov",  # 1.0 when the bucket [ts - step, ts) lies in covered trade time, else 0.0
)
BBA_PRIMS = ("bid_px", "bid_sz", "ask_px", "ask_sz")
KLINE_PRIMS = ("k_open", "k_high", "k_low", "k_close", "k_volume", "k_taker_buy")
# Integer primitives: the bucket's taker-buy and taker-sell quantity as (whole, 1e-8) limbs.
INT_PRIMS = ("buy_w", "buy_f", "sell_w", "sell_f")

QTY_DECIMALS = 8
QTY_UNIT = 10**QTY_DECIMALS
# Up to this many whole units, whole * 1e8 + fraction stays within 2**53: exact as a float.
_SAFE_WHOLE = 2**53 // QTY_UNIT - 1


def depth_prims(spec: FeatureSpec) -> tuple[str, ...]:
    out: list[str] = []
    for k in spec.depth_levels:
        out += [f"bid_sum_{k}", f"ask_sum_{k}"]
    return tuple(out)


def prim_names(spec: FeatureSpec) -> tuple[str, ...]:
    return TRADE_PRIMS + BBA_PRIMS + depth_prims(spec) + KLINE_PRIMS


# --------------------------------------------------------------------------------------------
# Exact quantities


def qty_limbs(qty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float sizes -> (whole units, 1e-8 units), exactly the decimal Binance sent, as
    integer-valued floats (sums of them stay exact below 2**53; :func:`limbs_to_float` takes
    a fraction of 1e8 or more as a carry).

    ``qty - floor(qty)`` is exact in floating point; scaled by 1e8 it lands within a fraction
    of a unit of an integer, which rounding recovers."""
    whole = np.floor(qty)
    return whole, np.rint((qty - whole) * QTY_UNIT)


def qty_limbs_one(qty: float) -> tuple[int, int]:
    """:func:`qty_limbs` for one value (the same IEEE operations, Python floats and ints)."""
    whole = math.floor(qty)
    return whole, round((qty - whole) * QTY_UNIT)


def limbs_to_float(whole: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """The float nearest to ``whole + frac * 1e-8`` (int64 limbs, any sign, any carry).

    Below ~9e7 whole units the value is an exact integer count of 1e-8 units below 2**53,
    and one IEEE division rounds it to nearest. Above (sums of huge meme-coin sizes), whole
    and fraction are rounded separately and added: within one ulp."""
    whole = np.asarray(whole, dtype=np.int64)
    frac = np.asarray(frac, dtype=np.int64)
    whole = whole + np.floor_divide(frac, QTY_UNIT)
    frac = np.remainder(frac, QTY_UNIT)  # 0 <= frac < 1e8
    small = np.abs(whole) <= _SAFE_WHOLE
    units = np.where(small, whole, 0) * QTY_UNIT + frac
    out = units.astype(np.float64) / QTY_UNIT
    if not small.all():
        big = ~small
        out[big] = whole[big].astype(np.float64) + frac[big] / QTY_UNIT
    return out


# --------------------------------------------------------------------------------------------
# Shared pieces


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
    """r^2 with r = ln(p/p_prev); 0 where r is undefined (it then adds nothing to a sum)."""
    r = log_ratio(p, p_prev)
    r2 = r * r
    r2[np.isnan(r2)] = 0.0
    return r2


def window_sums(values: np.ndarray, steps: int, lo: int, hi: int) -> np.ndarray:
    """For each position i in ``[lo, hi)``: ``values[i-steps+1] + ... + values[i]``, added
    oldest first. Each result depends only on its own ``steps`` values and their order, never
    on where ``values`` starts: both forms get the same bits. Needs ``lo >= steps - 1``."""
    first = lo - steps + 1
    acc = values[first : hi - steps + 1].copy()
    for k in range(1, steps):
        acc += values[first + k : hi - steps + 1 + k]
    return acc


def _running(values: np.ndarray) -> np.ndarray:
    """``out[i]`` = sum of ``values[:i]`` (int64)."""
    return np.concatenate(([0], np.cumsum(values, dtype=np.int64)))


def _window_ints(running: np.ndarray, steps: int, lo: int, hi: int) -> np.ndarray:
    """Integer window sums over ``(i - steps, i]`` for i in ``[lo, hi)`` from
    :func:`_running`: exact, so differences of running sums from the block's start are as
    good as any other order of addition."""
    return running[lo + 1 : hi + 1] - running[lo + 1 - steps : hi + 1 - steps]


def block_reach(spec: FeatureSpec) -> tuple[int, int]:
    """Steps a block must hold before its first row (windows) and after its last (labels)."""
    return spec.steps(spec.max_window_ms), spec.steps(spec.max_horizon_ms)


def derive_block(
    spec: FeatureSpec,
    ts: np.ndarray,
    floats: Mapping[str, np.ndarray],
    ints: Mapping[str, np.ndarray],
    lo: int,
    known_from: int,
    known_until: int,
) -> dict[str, np.ndarray]:
    """Feature, label and ``complete`` columns of the rows ``ts`` from a block of primitives.

    ``floats`` / ``ints`` hold the primitives of consecutive steps; row ``r`` is at block
    position ``lo + r``. The block holds :func:`block_reach` steps before the first row and
    after the last; steps outside the known data are padding (NaN floats, zero ints).
    """
    n = len(ts)
    hi = lo + n
    rows = slice(lo, hi)
    out: dict[str, np.ndarray] = {}
    p_all = floats["p"]
    p = p_all[rows]
    seen = floats["seen"][rows] > 0
    uncovered_step = ~(floats["cov"] > 0)  # padding counts as uncovered
    bucket_ok = seen & ~uncovered_step[rows]
    with np.errstate(invalid="ignore", divide="ignore"):
        bw, bf = ints["buy_w"][rows], ints["buy_f"][rows]
        sw, sf = ints["sell_w"][rows], ints["sell_f"][rows]
        vol = limbs_to_float(bw + sw, bf + sf)
        out["trade_count"] = np.where(bucket_ok, floats["count"][rows], NAN)
        out["volume"] = np.where(bucket_ok, vol, NAN)
        out["vwap"] = _div_or(floats["notional"][rows], vol, bucket_ok & (vol > 0), NAN)
        out["buy_volume"] = np.where(bucket_ok, limbs_to_float(bw, bf), NAN)
        out["sell_volume"] = np.where(bucket_ok, limbs_to_float(sw, sf), NAN)

        r2 = np.zeros(len(p_all))
        r2[1:] = r_squared(p_all[1:], p_all[:-1])
        uncovered = _running(uncovered_step)
        running = {k: _running(v) for k, v in ints.items()}
        for w in spec.windows_ms:
            s = duration_suffix(w)
            k = spec.steps(w)
            window_ok = seen & (_window_ints(uncovered, k, lo, hi) == 0)
            buy_w = _window_ints(running["buy_w"], k, lo, hi)
            buy_f = _window_ints(running["buy_f"], k, lo, hi)
            sell_w = _window_ints(running["sell_w"], k, lo, hi)
            sell_f = _window_ints(running["sell_f"], k, lo, hi)
            signed = limbs_to_float(buy_w - sell_w, buy_f - sell_f)
            total = limbs_to_float(buy_w + sell_w, buy_f + sell_f)
            out[f"signed_volume_{s}"] = np.where(window_ok, signed, NAN)
            imb = _div_or(signed, total, total > 0, 0.0)
            out[f"trade_imbalance_{s}"] = np.where(window_ok, imb, NAN)
            p_start = p_all[lo - k : hi - k]
            out[f"ret_{s}"] = log_ratio(p, p_start)
            # Every r in a covered window whose start price is known is defined.
            rv = np.sqrt(window_sums(r2, k, lo, hi))
            out[f"rv_{s}"] = np.where(window_ok & ~np.isnan(p_start), rv, NAN)

        bid, bsz = floats["bid_px"][rows], floats["bid_sz"][rows]
        ask, asz = floats["ask_px"][rows], floats["ask_sz"][rows]
        mid = (bid + ask) / 2.0
        spread = ask - bid
        out["spread"] = spread
        out["spread_bps"] = spread / mid * 1e4
        out["mid"] = mid
        size = bsz + asz
        out["microprice"] = (bid * asz + ask * bsz) / size
        out["obi_1"] = (bsz - asz) / size

        for k in spec.depth_levels:
            b, a = floats[f"bid_sum_{k}"][rows], floats[f"ask_sum_{k}"][rows]
            tot = b + a
            out[f"depth_imbalance_{k}"] = _div_or(b - a, tot, tot > 0, NAN)

        ko = floats["k_open"][rows]
        out["kline_ret"] = log_ratio(floats["k_close"][rows], ko)
        out["kline_range"] = (floats["k_high"][rows] - floats["k_low"][rows]) / ko
        kv = floats["k_volume"][rows]
        out["kline_taker_buy_ratio"] = _div_or(floats["k_taker_buy"][rows], kv, kv > 0, NAN)

        for h in spec.horizons_ms:
            k = spec.steps(h)
            out[f"fwd_ret_{duration_suffix(h)}"] = log_ratio(p_all[lo + k : hi + k], p)
        for h in spec.horizons_ms:
            k = spec.steps(h)
            fmid = (floats["bid_px"][lo + k : hi + k] + floats["ask_px"][lo + k : hi + k]) / 2.0
            out[f"fwd_mid_move_{duration_suffix(h)}_bps"] = (fmid - mid) / mid * 1e4

    complete = (ts - spec.max_window_ms >= known_from) & (ts + spec.max_horizon_ms <= known_until)
    optional = spec.nullable_by_definition()
    for name, values in out.items():
        if name not in optional:
            complete &= ~np.isnan(values)
    out["complete"] = complete
    return out
