"""``ingest-pipeline``: the simulator, the embedded AWS and an end-to-end demo."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ingest_pipeline.localstack import EmbeddedAWS
from ingest_pipeline.logsafety import configure_logging
from ingest_pipeline.settings import load_settings
from ingest_pipeline.timeutil import HOUR_MS, floor_hour, from_ms, now_ms

# The shared real captures beside the repository (see ../shared/data/binance-capture/README.md).
DEFAULT_CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance-capture"


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def cmd_simulator(args: argparse.Namespace) -> int:
    from ingest_pipeline.simulator.server import SimulatorConfig, SimulatorServer

    config = SimulatorConfig(
        replay_path=args.replay,
        replay_speed=args.replay_speed,
        replay_shift=not args.replay_recorded_times,
        replay_from_ms=_parse_time(args.replay_from) if args.replay_from else None,
        replay_until_ms=_parse_time(args.replay_until) if args.replay_until else None,
    )
    server = SimulatorServer(config, host=args.host, port=args.port)
    server.start()
    print(server.url, flush=True)
    try:
        _wait_for_signal()
    finally:
        server.stop()
    return 0


def cmd_local_aws(args: argparse.Namespace) -> int:
    settings = load_settings()
    with EmbeddedAWS(settings, host=args.host, port=args.port) as aws:
        print(aws.endpoint_url, flush=True)
        _wait_for_signal()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Embedded AWS + simulator, the last three closed hours of agg_trades, a summary."""
    import dagster as dg

    from ingest_pipeline.defs.bronze import build_agg_trades_asset
    from ingest_pipeline.defs.resources import build_resources
    from ingest_pipeline.simulator.server import SimulatorConfig, SimulatorServer

    base = load_settings()
    symbols = tuple(args.symbols.split(",")) if args.symbols else ("BTCUSDT", "ETHUSDT")
    started = time.monotonic()
    with EmbeddedAWS(base) as aws, SimulatorServer(SimulatorConfig()) as sim:
        settings = dataclasses.replace(aws.settings, binance_rest_url=sim.url, symbols=symbols)
        print(f"embedded AWS at {aws.endpoint_url}, Binance simulator at {sim.url}")
        assets = [build_agg_trades_asset(s, settings) for s in symbols]
        resources = build_resources(settings)
        last = floor_hour(now_ms()) - HOUR_MS
        hours = [last - 2 * HOUR_MS, last - HOUR_MS, last]
        with dg.DagsterInstance.ephemeral() as instance:
            for hour in hours:
                key = f"{from_ms(hour):%Y-%m-%d-%H:%M}"
                result = dg.materialize(
                    assets,
                    resources=resources,
                    partition_key=key,
                    instance=instance,
                    run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                )
                if not result.success:
                    print(f"partition {key} failed", file=sys.stderr)
                    return 1
                checks = result.get_asset_check_evaluations()
                failed = [c.check_name for c in checks if not c.passed]
                for event in result.get_asset_materialization_events():
                    meta = event.materialization.metadata
                    print(
                        f"  {key}  {meta['s3_uri'].value}\n"
                        f"      {meta['records'].value:>7} aggTrades, ids "
                        f"{meta['first_trade_id'].value}..{meta['last_trade_id'].value}, "
                        f"{meta['bytes'].value} bytes, {meta['write_action'].value}"
                    )
                print(
                    f"      checks: {len(checks) - len(failed)}/{len(checks)} passed"
                    + (f", failed: {', '.join(failed)}" if failed else "")
                )
    print(f"demo done in {time.monotonic() - started:.1f} s; everything it started is stopped")
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    """Binance WebSocket -> Kinesis until SIGTERM/SIGINT (or ``--duration`` seconds)."""
    import asyncio

    from ingest_pipeline.streaming import Streamer, StreamerConfig

    settings = load_settings()
    symbols = tuple(s.strip().upper() for s in args.symbols.split(",")) if args.symbols else None
    if symbols:
        settings = dataclasses.replace(settings, symbols=symbols)
    config = StreamerConfig(
        symbols=symbols,
        deadletter_dir=os.path.join(args.state_dir, "deadletter"),
        spill_dir=os.path.join(args.state_dir, "spill"),
        health_host=args.health_host,
        health_port=args.health_port,
        progress_interval_s=args.progress,
    )
    streamer = Streamer(settings, config)

    async def main() -> None:
        stop = asyncio.Event()
        if args.duration:
            asyncio.get_running_loop().call_later(args.duration, stop.set)
        await streamer.run(stop, install_signal_handlers=True)

    asyncio.run(main())
    health = streamer.health()
    print(streamer.progress_line(), flush=True)
    print(f"status {health['status']}, malformed {health['malformed']}", flush=True)
    return 0 if streamer.flushed_clean else 1


def cmd_load_capture(args: argparse.Namespace) -> int:
    """Real Binance captures -> bronze (trade, bba, depth_delta, depth_snapshot by hour)."""
    from ingest_pipeline.aws import aws_client
    from ingest_pipeline.capture_loader import load_capture
    from ingest_pipeline.storage.bronze import BronzeStore, write_rejects

    settings = load_settings()
    s3 = aws_client("s3", settings)
    store = BronzeStore(s3, settings.bucket, settings.bronze_prefix)
    symbols = [s.strip() for s in args.symbols.split(",")] if args.symbols else None

    def rejects(symbol: str, data_type: str, hour: int, items: list) -> str:
        return write_rejects(
            s3, settings.bucket, settings.deadletter_prefix, symbol, data_type, hour, items
        )

    summary = load_capture(Path(args.path), store, symbols, rejects)
    for w in summary.written:
        print(f"  {w.uri}: {w.records} records, {w.action}")
    hours = ", ".join(f"{from_ms(h):%Y-%m-%d %H}h" for h in summary.hours())
    print(
        f"{summary.lines} lines -> {len(summary.written)} bronze objects ({hours}); "
        f"{summary.rejected} rejected"
        + (f" (kept at {summary.rejects_at})" if summary.rejected else "")
    )
    return 0


def _parse_time(value: str) -> int:
    """Epoch ms of an ISO time (no zone: UTC)."""
    from datetime import UTC, datetime

    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def cmd_features(args: argparse.Namespace) -> int:
    """Kinesis streams -> online feature engines -> one JSON line per final row on stdout."""
    from ingest_pipeline.aws import aws_client
    from ingest_pipeline.storage.bronze import BronzeStore
    from ingest_pipeline.streaming.online_features import OnlineFeatureConsumer, row_json

    if not args.online:
        print("only --online is implemented (offline features: the silver assets)", file=sys.stderr)
        return 2
    settings = load_settings()
    symbols = tuple(s.strip().upper() for s in args.symbols.split(",")) if args.symbols else None
    start = None if args.from_ in (None, "now") else _parse_time(args.from_)
    end = _parse_time(args.until) if args.until else None
    out = sys.stdout.buffer

    def on_row(row: dict) -> None:
        out.write(row_json(row) + b"\n")
        out.flush()

    consumer = OnlineFeatureConsumer(
        aws_client("kinesis", settings),
        settings,
        on_row,
        symbols=symbols or settings.symbols,
        start_ms=start,
        end_ms=end,
        bronze=BronzeStore(aws_client("s3", settings), settings.bucket, settings.bronze_prefix),
        allowed_lateness_ms=args.lateness_ms,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.duration:
        timer = threading.Timer(args.duration, stop.set)
        timer.daemon = True
        timer.start()
    until = f" to {from_ms(end):%Y-%m-%d %H:%M:%S} UTC" if end else ""
    print(f"online features from {from_ms(consumer.start_ms):%Y-%m-%d %H:%M:%S} UTC{until}",
          file=sys.stderr)  # fmt: skip
    stats = consumer.run(stop)
    print(f"{stats.rows} rows; {consumer.summary()}", file=sys.stderr, flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingest-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulator", help="run the local Binance simulator until stopped")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=0, help="0 picks a free port")
    sim.add_argument(
        "--replay",
        default=None,
        help="replay a recorded capture (file, glob or folder) instead of the synthetic market; "
        "times move to now by one offset chosen at start (ids, prices, spacing kept)",
    )
    sim.add_argument("--replay-speed", type=float, default=1.0, help="1 looks live; 0 = max")
    sim.add_argument("--replay-from", default=None, help="ISO time (UTC), recorded receive time")
    sim.add_argument("--replay-until", default=None, help="ISO time (UTC), recorded receive time")
    sim.add_argument(
        "--replay-recorded-times", action="store_true", help="send the recorded bytes unshifted"
    )
    sim.set_defaults(func=cmd_simulator)
    aws = sub.add_parser("local-aws", help="run the embedded moto server (S3 + Kinesis)")
    aws.add_argument("--host", default="127.0.0.1")
    aws.add_argument("--port", type=int, default=0, help="0 picks a free port")
    aws.set_defaults(func=cmd_local_aws)
    demo = sub.add_parser("demo", help="end to end on the embedded defaults")
    demo.add_argument("--symbols", default=None, help="comma-separated, default BTCUSDT,ETHUSDT")
    demo.set_defaults(func=cmd_demo)
    stream = sub.add_parser("stream", help="stream Binance trades/BBA/depth into Kinesis")
    stream.add_argument("--symbols", default=None, help="comma-separated, default from config")
    stream.add_argument("--duration", type=float, default=None, help="seconds, default: forever")
    stream.add_argument("--health-port", type=int, default=None, help="serve /health, /metrics")
    stream.add_argument("--health-host", default="127.0.0.1")
    stream.add_argument("--state-dir", default="var/streamer", help="spill + dead-letter dirs")
    stream.add_argument("--progress", type=float, default=5.0, help="progress log every S s")
    stream.set_defaults(func=cmd_stream)
    load = sub.add_parser(
        "load-capture", help="load real Binance captures (hftbacktest format) into bronze"
    )
    load.add_argument(
        "path",
        nargs="?",
        default=str(DEFAULT_CAPTURES),
        help=f"a capture file or a directory of them (default {DEFAULT_CAPTURES})",
    )
    load.add_argument("--symbols", default=None, help="comma-separated, default: every file")
    load.set_defaults(func=cmd_load_capture)
    feat = sub.add_parser("features", help="online features from the Kinesis streams")
    feat.add_argument("--online", action="store_true", help="the online engine (required)")
    feat.add_argument("--symbols", default=None, help="comma-separated, default from config")
    feat.add_argument("--from", dest="from_", default=None, help="ISO time (UTC) or now")
    feat.add_argument("--until", default=None, help="ISO time (UTC): stop there, on the grid")
    feat.add_argument("--duration", type=float, default=None, help="seconds, default: forever")
    feat.add_argument("--lateness-ms", type=int, default=3000, help="allowed lateness")
    feat.set_defaults(func=cmd_features)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging(os.environ.get("INGEST_LOG_LEVEL", "INFO"))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
