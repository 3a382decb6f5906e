"""Live latency and CPU of the streamer: simulator send -> PutRecords acknowledged.

The simulator runs in a process of its own (as Binance would: it must not share the GIL with
the streamer measured). The real ``Streamer`` connects to it over WebSockets and produces into
(a) ``NoopKinesisClient`` and (b) the embedded moto server, wrapped so that the time each
PutRecords call returns is recorded per record. Latency is ``ack time - E``: the simulator
stamps ``E`` (same host clock, ms) when it formats a frame. Depth records carry ``E`` as their
``event_ts``; trade records carry ``T``, so trade frames' ``E`` is noted on receipt by id;
bookTicker has no event time and is counted, not timed. Reports p50/p99/max latency, the
message rate reached and the streamer process's CPU (user+sys, all threads) per 1k msg/s.

    python bench/stream_latency.py rate   [--sink noop|moto|both] [--seconds 20]   # ~5k msg/s
    python bench/stream_latency.py market [--symbols 1500] [--seconds 20]           # whole market
    python bench/stream_latency.py simcost                                          # simulator

``rate``: 40 busy symbols (100 trades/s each) with their bookTicker and depth@100ms streams.
``market``: ``SimulatorConfig(extra_symbols=N)`` quiet symbols plus the default ones, 3 streams
each, over several connections, into the no-op sink. ``simcost``: the simulator's own cost of
one depth batch (``book_diff`` + formatting), the full level-by-level diff as the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from typing import Any

import orjson

from ingest_pipeline.settings import load_settings
from ingest_pipeline.simulator.market import Market, SymbolSpec, default_universe
from ingest_pipeline.simulator.server import SimulatorConfig, SimulatorServer
from ingest_pipeline.storage.kinesis import NoopKinesisClient, producer_client
from ingest_pipeline.streaming import Streamer, StreamerConfig

BUSY = 40


def busy_symbols() -> list[SymbolSpec]:
    return [
        SymbolSpec(f"BUSY{i:02d}USDT", f"BUSY{i:02d}", "USDT", "0.01", "0.0001", 1000.0 + i,
                   360_000, seed=i)
        for i in range(BUSY)
    ]  # fmt: skip


def _serve(cfg: SimulatorConfig, q: Any) -> None:
    server = SimulatorServer(cfg).start()
    q.put(server.url)
    while True:
        time.sleep(3600)


def start_simulator(cfg: SimulatorConfig) -> tuple[mp.Process, str]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(cfg, q), daemon=True)
    proc.start()
    return proc, q.get(timeout=300)


class TimedClient:
    """Wraps a Kinesis client: notes when each PutRecords returns, per record."""

    def __init__(self, inner: Any, trade_e: dict[tuple[str, int], int]) -> None:
        self.inner = inner
        self.trade_e = trade_e
        self.lat_ms: list[float] = []
        self.untimed = 0
        self.measuring = False

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        out = self.inner.put_records(StreamName=StreamName, Records=Records)
        now = time.time() * 1000
        if not self.measuring:
            return out
        lat = self.lat_ms
        for rec, res in zip(Records, out["Records"], strict=True):
            if res.get("ErrorCode"):
                continue
            data = rec["Data"]
            if b'"trade_id"' in data:
                r = orjson.loads(data)
                e = self.trade_e.pop((r["symbol"], r["trade_id"]), None)
            elif b'"first_update_id"' in data or b'"final_update_id"' in data:
                i = data.find(b'"event_ts":') + 11
                e = int(data[i : data.find(b",", i)])
            else:
                e = None
            if e is None:
                self.untimed += 1
            else:
                lat.append(now - e)
        return out


def run_streamer(
    url: str, symbols: list[str], sink: str, seconds: float, warmup: float, linger: float | None
) -> dict:
    base = load_settings("local", environ={"BINANCE_WS_URL": url.replace("http", "ws"),
                                           "BINANCE_REST_URL": url})  # fmt: skip
    aws = None
    if sink == "moto":
        from ingest_pipeline.localstack import EmbeddedAWS

        aws = EmbeddedAWS(base).__enter__()
        settings = aws.settings
        inner = producer_client(settings)
    else:
        settings, inner = base, NoopKinesisClient()
    trade_e: dict[tuple[str, int], int] = {}
    client = TimedClient(inner, trade_e)
    with tempfile.TemporaryDirectory() as tmp:
        # Latency of the hot path only: no lease/checkpoint in S3 (the noop sink has no S3).
        cfg = StreamerConfig(symbols=tuple(symbols), deadletter_dir=f"{tmp}/dl",
                             spill_dir=f"{tmp}/sp", backfill_max_trades=0,
                             continuity=False)  # fmt: skip
        if linger is not None:
            cfg = dataclasses.replace(
                cfg, producer=dataclasses.replace(cfg.producer, linger_s=linger)
            )
        s = Streamer(settings, cfg, kinesis_client=client)
        handle = s.on_frame

        def on_frame(raw: Any, ingest_ts: int, link: Any = None) -> bool:
            if client.measuring and '"e":"trade"' in raw[:60]:
                i = raw.find('"E":') + 4
                e = int(raw[i : raw.find(",", i)])
                j = raw.find('"t":', i) + 4
                k = raw.find('"s":"', i) + 5
                trade_e[(raw[k : raw.find('"', k)], int(raw[j : raw.find(",", j)]))] = e
            return handle(raw, ingest_ts, link)

        s.on_frame = on_frame  # type: ignore[method-assign]
        result: dict[str, Any] = {}

        async def main() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(s.run(stop))
            await asyncio.sleep(warmup)
            n0 = sum(s.messages_in.values())
            c0, t0 = os.times(), time.monotonic()
            client.measuring = True
            await asyncio.sleep(seconds)
            client.measuring = False
            c1, t1 = os.times(), time.monotonic()
            n1 = sum(s.messages_in.values())
            cpu = (c1.user - c0.user) + (c1.system - c0.system)
            result.update(rate=(n1 - n0) / (t1 - t0), cpu=cpu / (t1 - t0),
                          by_type=dict(s.messages_in), links=len(s.shards))  # fmt: skip
            stop.set()
            await task

        asyncio.run(main())
    if aws is not None:
        aws.__exit__(None, None, None)
    lat = sorted(client.lat_ms)
    if lat:
        q = statistics.quantiles(lat, n=100, method="inclusive")
        result.update(p50=q[49], p99=q[98], max=lat[-1], timed=len(lat))
    result["untimed"] = client.untimed
    return result


def report(label: str, r: dict) -> None:
    per_k = r["cpu"] / (r["rate"] / 1000) if r["rate"] else float("nan")
    print(f"{label}: {r['rate']:,.0f} msg/s over {r.get('links')} connections, "
          f"latency E->ack p50 {r.get('p50', float('nan')):.1f} ms, "
          f"p99 {r.get('p99', float('nan')):.1f} ms, max {r.get('max', float('nan')):.0f} ms "
          f"({r.get('timed', 0):,} timed, {r['untimed']:,} bookTicker untimed); "
          f"streamer CPU {r['cpu']:.0%} of a core = {per_k:.3f} core per 1k msg/s")  # fmt: skip


def simcost(n: int = 3000) -> None:
    """The simulator's cost per depth batch and symbol, old (full diff) vs new, same run."""
    from ingest_pipeline.simulator.market import format_units
    from ingest_pipeline.simulator.ws import _levels, _SymbolState

    m = Market(default_universe(3))
    for sym in ("BTCUSDT", "SYM0001USDT"):
        model = m[sym]
        pd, qd = model.spec.price_decimals, model.spec.qty_decimals
        st = _SymbolState(model, sym.lower(), f'"{sym}"')
        b0 = model.batch_of(int(time.time() * 1000)) - 2 * n
        figures = {}
        for label, diff_fn, fmt in (
            ("full diff + plain formatting", model._book_diff_full, "plain"),
            ("book_diff + cached formatting", model.book_diff, "cached"),
        ):
            t = time.perf_counter()
            levels = 0
            for b in range(b0, b0 + n):
                d = diff_fn(b)
                levels += d.bid_px.size + d.ask_px.size
                if fmt == "plain":
                    for px, qty in ((d.bid_px, d.bid_qty), (d.ask_px, d.ask_qty)):
                        pairs = zip(px.tolist(), qty.tolist(), strict=True)
                        ",".join(f'["{format_units(p, pd)}","{format_units(q, qd)}"]'
                                 for p, q in pairs)  # fmt: skip
                else:
                    _levels(st, d.bid_px, d.bid_qty, pd, qd)
                    _levels(st, d.ask_px, d.ask_qty, pd, qd)
            figures[label] = (time.perf_counter() - t) / n
            print(f"{sym:>12} {label:<30} {figures[label] * 1e6:8.1f} us/batch "
                  f"({levels / n:.0f} levels/diff)")  # fmt: skip
        old, new = figures.values()
        print(f"{sym:>12} new/old {new / old:.3f} ({old / new:.1f}x faster); one core serves "
              f"{1 / new / 10:,.0f} depth@100ms symbols (was {1 / old / 10:,.0f})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("rate", "market", "simcost"))
    ap.add_argument("--sink", choices=("noop", "moto", "both"), default="both")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--symbols", type=int, default=1500)
    ap.add_argument("--linger", type=float, default=None, help="producer linger_s (default 0.05)")
    args = ap.parse_args()
    if args.mode == "simcost":
        simcost()
        return
    if args.mode == "rate":
        specs = busy_symbols()
        cfg = SimulatorConfig(symbols=specs)
        sinks = ("noop", "moto") if args.sink == "both" else (args.sink,)
    else:
        cfg = SimulatorConfig(extra_symbols=args.symbols)
        specs = cfg.all_symbols()
        sinks = ("noop",) if args.sink == "both" else (args.sink,)
    names = [s.symbol for s in specs if s.symbol.isascii()]
    proc, url = start_simulator(cfg)
    try:
        for sink in sinks:
            r = run_streamer(url, names, sink, args.seconds, args.warmup, args.linger)
            linger = args.linger if args.linger is not None else StreamerConfig().producer.linger_s
            report(f"{args.mode} {len(names)} symbols -> {sink}, linger {linger * 1000:g} ms", r)
    finally:
        proc.terminate()
        proc.join(10)


if __name__ == "__main__":
    main()
