"""Bronze write path: normalize + serialize + gzip + PUT of 1M aggTrades, against (a) a naive
writer (``json.dumps`` + ``GzipFile`` line by line) and (b) bare gzip of the same bytes, in the
same run, into the embedded moto server. The naive writer is written as one would write it
(GzipFile's defaults, level 9); bare gzip uses our level, on the same bytes.
Not a test: ``python bench/write_path.py [N]``.

Each figure is the median of a few repetitions; ratios compare figures of this one run.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import statistics
import sys
import time
import zlib
from collections.abc import Callable

from ingest_pipeline.aws import aws_client
from ingest_pipeline.binance.normalize import agg_trade_from_rest, normalize_page
from ingest_pipeline.records import AGG_TRADES
from ingest_pipeline.settings import load_settings
from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline.storage.bronze import (
    DEFAULT_GZIP_LEVEL,
    BronzeStore,
    encode_with_fingerprint,
    prepare_records,
)

HOUR = 1_723_161_600_000
REPEAT = 3


def raw_agg_trades(n: int) -> list[dict]:
    """Binance-shaped aggTrades spread over one hour (wire strings, as a page would hold)."""
    rng = random.Random(1)
    return [
        {
            "a": 1_000_000 + i, "p": f"{60_000 + rng.random() * 100:.8f}",
            "q": f"{rng.random():.8f}", "f": 2 * i, "l": 2 * i + 1,
            "T": HOUR + i * 3_599_999 // n, "m": bool(i & 1), "M": True,
        }
        for i in range(n)
    ]  # fmt: skip


def median_s(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(n: int) -> None:
    raw = raw_agg_trades(n)
    with EmbeddedAWS(load_settings("local", environ={})) as aws:
        settings = aws.settings
        s3 = aws_client("s3", settings)
        store = BronzeStore(s3, settings.bucket, "bench-ours")

        def ours() -> None:
            records, _ = normalize_page(agg_trade_from_rest, raw, symbol="BTCUSDT", ingest_ts=HOUR)
            # A fresh prefix each time: the measured path is a first write, not a no-op re-run.
            store.prefix = f"bench-ours-{time.perf_counter_ns()}"
            store.write_hour("BTCUSDT", AGG_TRADES, HOUR, records)

        def naive() -> None:
            records, _ = normalize_page(agg_trade_from_rest, raw, symbol="BTCUSDT", ingest_ts=HOUR)
            buf = io.BytesIO()
            with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
                for r in records:
                    gz.write((json.dumps(r) + "\n").encode())
            s3.put_object(Bucket=settings.bucket, Key="bench-naive/x.jsonl.gz", Body=buf.getvalue())

        records, _ = normalize_page(agg_trade_from_rest, raw, symbol="BTCUSDT", ingest_ts=HOUR)
        ordered, _ = prepare_records(records, AGG_TRADES, HOUR, "BTCUSDT")
        jsonl = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in ordered)

        def bare_gzip() -> None:
            zlib.compress(jsonl, DEFAULT_GZIP_LEVEL, wbits=31)

        def stage_ours() -> None:
            encode_with_fingerprint(ordered, DEFAULT_GZIP_LEVEL)

        def stage_naive() -> None:
            buf = io.BytesIO()
            with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
                for r in ordered:
                    gz.write((json.dumps(r) + "\n").encode())

        t_ours, t_naive, t_bare = median_s(ours), median_s(naive), median_s(bare_gzip)
        s_ours, s_naive = median_s(stage_ours), median_s(stage_naive)

    print(f"{n:,} aggTrades, gzip level {DEFAULT_GZIP_LEVEL}, median of {REPEAT}")
    print("whole path (normalize + serialize + gzip + PUT to moto):")
    print(f"  ours  {t_ours:6.2f} s  {n / t_ours:>10,.0f} rec/s")
    print(
        f"  naive {t_naive:6.2f} s  {n / t_naive:>10,.0f} rec/s   ours is {t_naive / t_ours:.1f}x"
    )
    print("serialize + gzip stage alone (same records):")
    print(
        f"  ours  {s_ours:6.2f} s   naive {s_naive:6.2f} s   ours is {s_naive / s_ours:.1f}x naive"
    )
    print(f"  bare gzip of the same bytes {t_bare:6.2f} s   ours is {s_ours / t_bare:.2f}x of it")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
