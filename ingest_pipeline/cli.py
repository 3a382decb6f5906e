"""``ingest-pipeline``: the simulator, the embedded AWS and an end-to-end demo.

Every error a user can cause ends in one line on stderr, ``ingest-pipeline: error: ...``, and
an exit code of its own (the table is ``EXIT_CODES``, documented in the README); a traceback
means a bug."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from ingest_pipeline.logsafety import configure_logging
from ingest_pipeline.settings import InvalidEndpoint, SettingsError, load_settings
from ingest_pipeline.symbols import UnsafeSymbol, parse_symbols
from ingest_pipeline.timeutil import HOUR_MS, floor_hour, from_ms, now_ms

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_STATE_DIR = 4
EXIT_SPILL_LOCKED = 5
EXIT_HEALTH_PORT = 6
EXIT_AWS = 7
EXIT_STANDINS = 8
EXIT_INTERRUPTED = 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "the work failed: the streamer stopped without flushing every record (they "
    "stay in the spill directory for the next start), or a demo partition failed",
    EXIT_USAGE: "a command-line argument is malformed or out of range (symbols given with "
    "--symbols included)",
    EXIT_CONFIG: "the configuration is invalid: the config file or an environment variable "
    "(INGEST_SYMBOLS, BINANCE_WS_URL, ...), an unsafe symbol, a malformed endpoint URL",
    EXIT_STATE_DIR: "the state directory (spill and dead-letter files) cannot be created or "
    "written",
    EXIT_SPILL_LOCKED: "another streamer holds the spill directory's lock",
    EXIT_HEALTH_PORT: "the /health and /metrics server cannot listen on --health-host/port",
    EXIT_AWS: "AWS (S3 or Kinesis) refused the call or could not be reached",
    EXIT_STANDINS: "a local stand-in (embedded AWS, simulator) needs the [standins] extra, "
    "which is not installed",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C) outside a graceful stop",
}


class CliError(Exception):
    """An error the user can act on: one line on stderr and ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its default prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        _print_error(f"{message} (see {self.prog} --help)", self.prog)
        raise SystemExit(EXIT_USAGE)


def _print_error(message: str, prog: str = "ingest-pipeline") -> None:
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)


# --- argument types: a bad value is a usage error naming the flag ------------------------


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0..65535 (0: a free port)")
    return port


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a number of seconds > 0")
    return seconds


def _non_negative(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if not 0 <= number < float("inf"):
            raise argparse.ArgumentTypeError(f"{value} must be >= 0")
        return number

    return parse


def _symbols(value: str) -> tuple[str, ...]:
    try:
        return parse_symbols(value)
    except UnsafeSymbol as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parse_time(value: str) -> int:
    """Epoch ms of an ISO time (no zone: UTC)."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO time such as 2024-08-09T13:00 (UTC unless a zone is given)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _time_or_now(value: str) -> int | None:
    return None if value == "now" else _parse_time(value)


# --- errors raised while a command runs --------------------------------------------------


def _is_spill_dir_locked(exc: BaseException) -> bool:
    """Another producer holds the spill directory (``storage.spill.SpillDirLockedError``)."""
    from ingest_pipeline.storage.spill import SpillDirLockedError

    return isinstance(exc, SpillDirLockedError)


def _classify(exc: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) of an error the user can act on; None for a bug."""
    from botocore.exceptions import BotoCoreError, ClientError

    from ingest_pipeline.standins import StandinsMissing
    from ingest_pipeline.streaming.health import HealthServerError

    if isinstance(exc, CliError):
        return str(exc), exc.code
    if isinstance(exc, SettingsError | InvalidEndpoint | UnsafeSymbol):
        return f"configuration: {exc}", EXIT_CONFIG
    if _is_spill_dir_locked(exc):
        return f"{exc} (is another streamer running with this --state-dir?)", EXIT_SPILL_LOCKED
    if isinstance(exc, HealthServerError):
        return str(exc), EXIT_HEALTH_PORT
    if isinstance(exc, BotoCoreError | ClientError):
        return f"AWS: {exc}", EXIT_AWS
    if isinstance(exc, StandinsMissing):
        return str(exc), EXIT_STANDINS
    return None


def _prepare_state_dir(state_dir: str) -> tuple[str, str]:
    """Create and probe the dead-letter and spill directories: (deadletter, spill)."""
    dirs = (os.path.join(state_dir, "deadletter"), os.path.join(state_dir, "spill"))
    for path in dirs:
        probe = os.path.join(path, f".write-probe-{os.getpid()}")
        try:
            os.makedirs(path, exist_ok=True)
            with open(probe, "wb") as fh:
                fh.write(b"ok")
            os.unlink(probe)
        except OSError as exc:
            where = exc.filename or path
            raise CliError(
                f"state directory {state_dir!r} is not usable: {where}: "
                f"{exc.strerror or exc} (set --state-dir to a writable directory)",
                EXIT_STATE_DIR,
            ) from None
    return dirs


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT/SIGTERM from now on: installed before a command's slow imports
    and setup, so a stop at any moment is a graceful one."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _wait_for_signal() -> None:
    _stop_on_signals().wait()


def cmd_simulator(args: argparse.Namespace) -> int:
    from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer

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
    from ingest_pipeline.standins.moto_server import EmbeddedAWS

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
    from ingest_pipeline.standins.moto_server import EmbeddedAWS
    from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer

    base = load_settings()
    symbols = args.symbols or ("BTCUSDT", "ETHUSDT")
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
                    _print_error(f"partition {key} failed")
                    return EXIT_FAILED
                checks = result.get_asset_check_evaluations()
                failed = [c.check_name for c in checks if not c.passed]
                for event in result.get_asset_materialization_events():
                    meta = event.materialization.metadata
                    print(
                        f"  {key}  {meta['dagster/uri'].value}\n"
                        f"      {meta['dagster/row_count'].value:>7} aggTrades, ids "
                        f"{meta['first_trade_id'].value}..{meta['last_trade_id'].value}, "
                        f"{meta['size'].value}, {meta['write_action'].value}"
                    )
                print(
                    f"      checks: {len(checks) - len(failed)}/{len(checks)} passed"
                    + (f", failed: {', '.join(failed)}" if failed else "")
                )
    print(f"demo done in {time.monotonic() - started:.1f} s; everything it started is stopped")
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    """Binance WebSocket -> Kinesis until SIGTERM/SIGINT (or ``--duration`` seconds)."""
    early_stop = _stop_on_signals()
    import asyncio

    from ingest_pipeline.streaming import Streamer, StreamerConfig

    settings = load_settings()
    symbols = args.symbols
    if symbols:
        settings = dataclasses.replace(settings, symbols=symbols)
    deadletter_dir, spill_dir = _prepare_state_dir(args.state_dir)
    config = StreamerConfig(
        symbols=symbols,
        deadletter_dir=deadletter_dir,
        spill_dir=spill_dir,
        health_host=args.health_host,
        health_port=args.health_port,
        progress_interval_s=args.progress,
    )
    streamer = Streamer(settings, config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if early_stop.is_set():  # a signal during setup, before the loop's handlers
            stop.set()
        if args.duration:
            loop.call_later(args.duration, stop.set)
        try:
            await streamer.run(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
    health = streamer.health()
    print(streamer.progress_line(), flush=True)
    print(f"status {health['status']}, malformed {health['malformed']}", flush=True)
    return EXIT_OK if streamer.flushed_clean else EXIT_FAILED


def cmd_load_capture(args: argparse.Namespace) -> int:
    """Real Binance captures -> bronze (trade, bba, depth_delta, depth_snapshot by hour)."""
    from ingest_pipeline.aws import aws_client
    from ingest_pipeline.capture_loader import CAPTURES_DIR, load_capture
    from ingest_pipeline.storage.bronze import BronzeStore, write_rejects

    settings = load_settings()
    s3 = aws_client("s3", settings)
    store = BronzeStore(s3, settings.bucket, settings.bronze_prefix)
    symbols = args.symbols

    def rejects(symbol: str, data_type: str, hour: int, items: list) -> str:
        return write_rejects(
            s3, settings.bucket, settings.deadletter_prefix, symbol, data_type, hour, items
        )

    summary = load_capture(Path(args.path or CAPTURES_DIR), store, symbols, rejects)
    for w in summary.written:
        print(f"  {w.uri}: {w.records} records, {w.action}")
    hours = ", ".join(f"{from_ms(h):%Y-%m-%d %H}h" for h in summary.hours())
    print(
        f"{summary.lines} lines -> {len(summary.written)} bronze objects ({hours}); "
        f"{summary.rejected} rejected"
        + (f" (kept at {summary.rejects_at})" if summary.rejected else "")
    )
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    """Kinesis streams -> online feature engines -> one JSON line per final row on stdout."""
    stop = _stop_on_signals()
    from ingest_pipeline.aws import aws_client
    from ingest_pipeline.storage.bronze import BronzeStore
    from ingest_pipeline.streaming.online_features import OnlineFeatureConsumer, row_json

    if not args.online:
        raise CliError(
            "features: only --online is implemented (offline features: the silver assets)",
            EXIT_USAGE,
        )
    settings = load_settings()
    symbols = args.symbols
    start = args.from_
    end = args.until
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
    if args.duration:
        timer = threading.Timer(args.duration, stop.set)
        timer.daemon = True
        timer.start()
    until = f" to {from_ms(end):%Y-%m-%d %H:%M:%S} UTC" if end else ""
    print(f"online features from {from_ms(consumer.start_ms):%Y-%m-%d %H:%M:%S} UTC{until}",
          file=sys.stderr)  # fmt: skip
    stats = consumer.run(stop)
    print(f"{stats.rows} rows; {consumer.summary()}", file=sys.stderr, flush=True)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ingest-pipeline",
        description=__doc__,
        epilog="exit codes: " + "; ".join(f"{c} {m}" for c, m in EXIT_CODES.items()),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    symbols_help = "comma-separated, e.g. BTCUSDT,ETHUSDT (ASCII letters are upper-cased)"
    sim = sub.add_parser("simulator", help="run the local Binance simulator until stopped")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=_port, default=0, help="0 picks a free port")
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
    aws.add_argument("--port", type=_port, default=0, help="0 picks a free port")
    aws.set_defaults(func=cmd_local_aws)
    demo = sub.add_parser("demo", help="end to end on the embedded defaults")
    demo.add_argument(
        "--symbols", type=_symbols, default=None, help=f"{symbols_help}; default BTCUSDT,ETHUSDT"
    )
    demo.set_defaults(func=cmd_demo)
    stream = sub.add_parser("stream", help="stream Binance trades/BBA/depth into Kinesis")
    stream.add_argument(
        "--symbols", type=_symbols, default=None, help=f"{symbols_help}; default from config"
    )
    stream.add_argument(
        "--duration", type=_positive_seconds, default=None, help="seconds, default: forever"
    )
    stream.add_argument(
        "--health-port", type=_port, default=None, help="serve /health, /metrics (0: free port)"
    )
    stream.add_argument("--health-host", default="127.0.0.1")
    stream.add_argument("--state-dir", default="var/streamer", help="spill + dead-letter dirs")
    stream.add_argument(
        "--progress", type=_non_negative(float), default=5.0, help="progress log every S s (0: off)"
    )
    stream.set_defaults(func=cmd_stream)
    load = sub.add_parser(
        "load-capture", help="load real Binance captures (hftbacktest format) into bronze"
    )
    load.add_argument(
        "path",
        nargs="?",
        default=None,
        help="a capture file or a directory of them (default: the repository's "
        "data/binance-capture)",
    )
    load.add_argument(
        "--symbols", type=_symbols, default=None, help=f"{symbols_help}; default: every file"
    )
    load.set_defaults(func=cmd_load_capture)
    feat = sub.add_parser("features", help="online features from the Kinesis streams")
    feat.add_argument("--online", action="store_true", help="the online engine (required)")
    feat.add_argument(
        "--symbols", type=_symbols, default=None, help=f"{symbols_help}; default from config"
    )
    feat.add_argument(
        "--from", dest="from_", type=_time_or_now, default=None, help="ISO time (UTC) or now"
    )
    feat.add_argument(
        "--until", type=_parse_time, default=None, help="ISO time (UTC): stop there, on the grid"
    )
    feat.add_argument(
        "--duration", type=_positive_seconds, default=None, help="seconds, default: forever"
    )
    feat.add_argument(
        "--lateness-ms", type=_non_negative(int), default=3000, help="allowed lateness"
    )
    feat.set_defaults(func=cmd_features)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging(os.environ.get("INGEST_LOG_LEVEL", "INFO"))
    args = build_parser().parse_args(argv)  # a bad argument: one line, EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _print_error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        classified = _classify(exc)
        if classified is None:
            raise  # a bug: the traceback is the report
        message, code = classified
        _print_error(message)
        return code


if __name__ == "__main__":
    sys.exit(main())
