"""Benchmark: one symbol-day (~2M synthetic trades, 86,400 rows) through trade_features.

Each measurement runs in its own subprocess so peak RSS (``ru_maxrss``) is that run's alone:
``gen`` (generate the trades only: the baseline RSS), ``pandas`` (our offline
``trade_features``) and, when polars is importable, ``polars`` (the same columns written in
polars as a reference). Prints wall time (median of repeats, compute only) and peak RSS.

    .venv/bin/python bench/trade_features.py [--trades 2000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

DAY0 = 1_717_200_000_000  # 2024-06-01 UTC
DAY_MS = 86_400_000
STEP = 1000
WINDOWS = (10_000, 60_000, 300_000)
HORIZONS = (10_000, 60_000)


def make_trades(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(DAY0, DAY0 + DAY_MS, n)).astype(np.int64)
    price = np.round(60_000 * np.exp(np.cumsum(rng.normal(0, 5e-5, n))), 2)
    return {
        "event_ts": ts,
        "trade_id": np.arange(n, dtype=np.int64) + 3_000_000_000,
        "price": price,
        "qty": np.round(rng.exponential(0.02, n) + 1e-5, 5),
        "is_buyer_maker": rng.random(n) < 0.5,
    }


def run_pandas(trades: dict[str, np.ndarray]) -> tuple[float, int]:
    from ingest_pipeline.features import GridRange, trade_features

    rng = GridRange(DAY0, DAY0 + DAY_MS, DAY0, DAY0 + DAY_MS)
    t = time.perf_counter()
    frame = trade_features(trades, rng)
    return time.perf_counter() - t, len(frame)


def run_polars(trades: dict[str, np.ndarray]) -> tuple[float, int]:
    """The same definitions in polars: bucket sums by group_by, windows by rolling sums over
    the full grid, p by forward fill of each bucket's last price."""
    import polars as pl

    t = time.perf_counter()
    df = pl.DataFrame(trades)
    n_steps = DAY_MS // STEP
    grid = pl.DataFrame({"j": pl.int_range(0, n_steps + 1, eager=True)})
    buckets = (
        df.with_columns(
            j=((pl.col("event_ts") - DAY0) // STEP + 1),
            notional=pl.col("price") * pl.col("qty"),
            buy=pl.when(~pl.col("is_buyer_maker")).then(pl.col("qty")).otherwise(0.0),
            sell=pl.when(pl.col("is_buyer_maker")).then(pl.col("qty")).otherwise(0.0),
        )
        .group_by("j")
        .agg(
            count=pl.len().cast(pl.Float64),
            volume=pl.col("qty").sum(),
            notional=pl.col("notional").sum(),
            buy=pl.col("buy").sum(),
            sell=pl.col("sell").sum(),
            last=pl.col("price").last(),
        )
    )
    g = grid.join(buckets, on="j", how="left").sort("j")
    g = g.with_columns(
        pl.col("count", "volume", "notional", "buy", "sell").fill_null(0.0),
        p=pl.col("last").forward_fill(),
    )
    g = g.with_columns(r2=(pl.col("p") / pl.col("p").shift(1)).log().pow(2).fill_null(0.0))
    seen = pl.col("p").is_not_null()
    exprs = [
        pl.when(seen).then(pl.col("count")).alias("trade_count"),
        pl.when(seen).then(pl.col("volume")).alias("volume"),
        pl.when(seen & (pl.col("volume") > 0))
        .then(pl.col("notional") / pl.col("volume"))
        .alias("vwap"),
        pl.when(seen).then(pl.col("buy")).alias("buy_volume"),
        pl.when(seen).then(pl.col("sell")).alias("sell_volume"),
    ]
    for w in WINDOWS:
        n = w // STEP
        s = f"{w // 1000}s"
        b = pl.col("buy").rolling_sum(n, min_samples=1)
        se = pl.col("sell").rolling_sum(n, min_samples=1)
        exprs += [
            pl.when(seen).then(b - se).alias(f"signed_volume_{s}"),
            pl.when(seen)
            .then(pl.when(b + se > 0).then((b - se) / (b + se)).otherwise(0.0))
            .alias(f"trade_imbalance_{s}"),
            (pl.col("p") / pl.col("p").shift(n)).log().alias(f"ret_{s}"),
            pl.when(pl.col("p").shift(n).is_not_null())
            .then(pl.col("r2").rolling_sum(n, min_samples=1).clip(0.0).sqrt())
            .alias(f"rv_{s}"),
        ]
    for h in HORIZONS:
        n = h // STEP
        exprs.append((pl.col("p").shift(-n) / pl.col("p")).log().alias(f"fwd_ret_{h // 1000}s"))
    out = g.select(pl.col("j"), *exprs).filter(pl.col("j") >= 1)
    return time.perf_counter() - t, out.height


def child(mode: str, n: int, repeat: int) -> None:
    trades = make_trades(n)
    times, rows = [], 0
    for _ in range(repeat if mode != "gen" else 0):
        elapsed, rows = (run_pandas if mode == "pandas" else run_polars)(trades)
        times.append(elapsed)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "mode": mode,
                "rows": rows,
                "median_s": statistics.median(times) if times else 0.0,
                "min_s": min(times) if times else 0.0,
                "peak_rss_mib": peak_kib / 1024,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trades", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.trades, args.repeat)
        return
    modes = ["gen", "pandas"]
    try:
        import polars  # noqa: F401

        modes.append("polars")
    except ImportError:
        print("polars not installed: no reference run")
    results = {}
    for mode in modes:
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--trades", str(args.trades),
             "--repeat", str(args.repeat)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(results[mode])
    if "polars" in results:
        ratio = results["pandas"]["median_s"] / results["polars"]["median_s"]
        print(f"pandas/polars wall-time ratio: {ratio:.2f} (goal <= 1.5)")
    print(f"pandas peak RSS: {results['pandas']['peak_rss_mib']:.0f} MiB (goal < 1024)")


if __name__ == "__main__":
    main()
