"""Fetch path: one busy hour (~100k aggTrades) from the simulator with our client, against
python-binance's ``aggregate_trade_iter`` on the same simulator in the same run: records/s and
requests made. Not a test: ``python bench/fetch_path.py``.

python-binance runs in a separate virtualenv (it pins its own websockets/aiohttp), created on
first use under ``bench/.refenv``; our side runs in-process. Request counts come from the
simulator's own statistics, so both sides are counted the same way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import requests

from ingest_pipeline.binance.rest import BinanceRestClient
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline.standins.simulator.basics import SymbolSpec
from ingest_pipeline.timeutil import HOUR_MS, parse_hour

REF_ENV = Path(__file__).parent / ".refenv"
SYMBOL = "BUSYUSDT"
HOUR = parse_hour("2024-08-09-00:00")

# Both sides run in a process of their own, so that neither shares the GIL with the simulator.
OURS = """
import sys, time
from ingest_pipeline.binance.history import fetch_agg_trades
from ingest_pipeline.binance.rest import BinanceRestClient
url, symbol, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = BinanceRestClient(url)
t = time.perf_counter()
n = len(fetch_agg_trades(client, symbol, start).records)
print(n, time.perf_counter() - t)
"""

REFERENCE = """
import sys, time
from binance.client import Client
url, symbol, start, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
client = Client(ping=False)
client.API_URL = url + "/api"
t = time.perf_counter()
n = 0
for trade in client.aggregate_trade_iter(symbol, start_str=start):
    if trade["T"] >= end:
        break
    n += 1
print(n, time.perf_counter() - t)
"""


def reference_python() -> str:
    python = REF_ENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(REF_ENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "python-binance==1.0.37"], check=True
        )
    return str(python)


def requests_served(url: str) -> int:
    return (
        requests.get(f"{url}/_sim/stats", timeout=5).json()["by_path"].get("/api/v3/aggTrades", 0)
    )


def main() -> None:
    python = reference_python()
    busy = SymbolSpec(SYMBOL, "BUSY", "USDT", trades_per_hour=170_000)
    config = SimulatorConfig(symbols=[busy], weight_limit=10**9)
    with SimulatorServer(config) as sim:
        # Warm the simulator's cache of the hour so that neither side pays for its generation.
        BinanceRestClient(sim.url).agg_trades_page(SYMBOL, startTime=HOUR, limit=1)
        results = {}
        for name, exe, code in (
            ("ours", sys.executable, OURS),
            ("python-binance", python, REFERENCE),
        ):
            before = requests_served(sim.url)
            out = subprocess.run(
                [exe, "-c", code, sim.url, SYMBOL, str(HOUR), str(HOUR + HOUR_MS)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            n, secs = out.stdout.split()
            results[name] = (int(n), float(secs), requests_served(sim.url) - before)
    (n_ours, t_ours, ours_requests), (n_ref, t_ref, ref_requests) = results.values()
    assert n_ref == n_ours, (n_ref, n_ours)
    print(f"one hour of {SYMBOL}: {n_ours:,} aggTrades")
    for name, secs, reqs in (
        ("ours", t_ours, ours_requests),
        ("python-binance", t_ref, ref_requests),
    ):
        print(f"  {name:<15} {secs:6.2f} s  {n_ours / secs:>9,.0f} rec/s  {reqs} requests")
    print(
        f"  ours: {t_ref / t_ours:.1f}x the speed, {ours_requests / ref_requests:.2f}x the requests"
    )
    print("  (ours also normalizes every record; python-binance returns raw dicts)")


if __name__ == "__main__":
    main()
