"""End to end over real sockets: the simulator's WebSocket -> Streamer -> moto Kinesis."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import orjson
import requests

from ingest_pipeline.faultproxy import FaultProxy
from ingest_pipeline.localstack import EmbeddedAWS
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.kinesis_reader import is_depth_snapshot
from ingest_pipeline.streaming import Streamer
from ingest_pipeline_tests.streaming.conftest import (
    Running,
    emitted_ids,
    make_config,
    read_stream,
    sim_get,
    sim_post,
    with_sim,
)

SYMBOLS = ("BTCUSDT", "ETHUSDT")


def check_trades(settings: Settings, sim: Any, ordered: bool = False) -> dict[str, int]:
    """Every trade the simulator emitted is on the trade stream; after dedup by key each id is
    there once, and the ids of a symbol form one unbroken run (gaps were backfilled). With
    ``ordered``, a symbol's ids first reached the stream in id order: a hole's fill went out
    before the live trades after it."""
    records = read_stream(settings, settings.kinesis_trade_stream)
    by_symbol: dict[str, list[int]] = {}
    for r in records:
        by_symbol.setdefault(r["symbol"], []).append(r["trade_id"])
    dups = 0
    for symbol in SYMBOLS:
        emitted = set(emitted_ids(sim, f"{symbol.lower()}@trade"))
        got = by_symbol.get(symbol, [])
        unique = set(got)
        dups += len(got) - len(unique)
        assert emitted, f"simulator emitted no {symbol} trade"
        missing = emitted - unique
        assert not missing, (
            f"{symbol}: {len(missing)} emitted trades missing, e.g. {sorted(missing)[:5]}"
        )
        assert unique == set(range(min(unique), max(unique) + 1)), f"{symbol}: trade id hole"
        if ordered:
            seen: set[int] = set()
            first = [i for i in got if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]
            assert first == sorted(first), f"{symbol}: trade ids out of order on the stream"
    return {"records": len(records), "kinesis_duplicates": dups}


def test_every_trade_arrives_across_ws_faults(
    sim_factory: Any, stream_settings: Settings, tmp_path: Path
) -> None:
    # The server closes a connection at 4 s (its "24 h mark"); we roll over at 2.5 s.
    sim = sim_factory(ws_max_lifetime=4.0, ws_ping_interval=1.0)
    settings = with_sim(stream_settings, sim)
    stream_cfg = dataclasses.replace(make_config(tmp_path).stream, max_age_s=2.5)
    streamer = Streamer(settings, make_config(tmp_path, stream=stream_cfg, health_port=0))
    run = Running(streamer)
    run.wait_for(lambda: streamer.messages_in["trade"] > 5, what="first trades")
    sim_post(sim, "/_sim/ws/drop")  # abrupt TCP close, frames in flight lost
    run.wait_for(lambda: streamer.health()["reconnect_reasons"].get("closed", 0) >= 1)
    time.sleep(0.7)
    sim_post(sim, "/_sim/ws/shutdown")  # serverShutdown then close 1000
    run.wait_for(lambda: streamer.counts["server_shutdown"] >= 1, what="serverShutdown")
    run.wait_for(
        lambda: streamer.health()["reconnect_reasons"].get("rollover", 0) >= 1,
        timeout=6,
        what="rollover",
    )
    time.sleep(0.7)
    final = run.stop()
    assert final["status"] == "down" and final["state"] == "stopped"
    assert streamer.flushed_clean is True
    stats = sim_get(sim, "/_sim/ws/stats")
    assert stats["dropped_lifetime"] == 0, "the proactive rollover must beat the server's mark"
    figures = check_trades(settings, sim, ordered=True)
    assert final["kinesis"]["acknowledged"] == final["kinesis"]["put"]
    assert final["trade_ids_unfilled"] == 0
    print(
        figures,
        final["reconnect_reasons"],
        "backfilled",
        final["trades_backfilled"],
        "dups dropped",
        {k: v["duplicates"] for k, v in final["streams"].items()},
    )


def test_every_trade_arrives_across_kinesis_faults(
    sim_factory: Any, stream_settings: Settings, aws: EmbeddedAWS, tmp_path: Path
) -> None:
    sim = sim_factory()
    with FaultProxy(aws.endpoint_url, seed=3) as proxy:
        settings = with_sim(stream_settings, sim)
        via_proxy = dataclasses.replace(settings, aws_endpoint_url=proxy.url)
        streamer = Streamer(via_proxy, make_config(tmp_path))
        run = Running(streamer)
        run.wait_for(lambda: streamer.messages_in["trade"] > 5, what="first trades")
        proxy.throttle_fraction = 0.3  # partial PutRecords failures
        time.sleep(1.5)
        proxy.throttle_fraction = 0.0
        proxy.unreachable = True  # Kinesis unreachable for 10 s
        time.sleep(3.0)
        mid = streamer.health()
        time.sleep(7.0)
        proxy.unreachable = False
        run.wait_for(
            lambda: streamer.health()["kinesis"]["buffer_records"] < 50,
            timeout=20,
            what="producer catch-up",
        )
        final = run.stop()
    assert proxy.counters["throttled_entries"] > 0 and proxy.counters["refused"] > 0
    assert mid["status"] == "degraded" and mid["kinesis"]["circuit_state"] != "closed", mid
    assert final["kinesis"]["failed_entries"] > 0 and final["kinesis"]["retried"] > 0
    assert streamer.flushed_clean is True
    figures = check_trades(settings, sim)
    print(figures, final["kinesis"])


def test_malformed_gap_health_and_metrics(
    sim_factory: Any, stream_settings: Settings, tmp_path: Path
) -> None:
    sim = sim_factory()
    settings = with_sim(stream_settings, sim)
    streamer = Streamer(settings, make_config(tmp_path, health_port=0))
    run = Running(streamer)
    run.wait_for(lambda: streamer.messages_in["depth_delta"] > 4, what="first diffs")
    ok = requests.get(f"{streamer.health_url}/health", timeout=5)
    assert ok.status_code == 200 and ok.json()["status"] == "ok", ok.text
    # A depth gap injected by the simulator: detected, counted, marked, reported.
    sim_post(sim, "/_sim/ws/faults", {"skip_depth_next": 1})
    run.wait_for(lambda: sum(streamer.gaps.values()) >= 1, what="depth gap")
    time.sleep(0.5)
    health = requests.get(f"{streamer.health_url}/health", timeout=5)
    metrics = requests.get(f"{streamer.health_url}/metrics", timeout=5).text
    body = health.json()
    assert health.status_code == 200 and body["status"] == "degraded"
    assert any("depth gap" in r for r in body["reasons"])
    assert body["gaps"] == 1 and body["malformed"] == 0
    for t in ("trade", "bba", "depth_delta"):
        assert body["streams"][t]["last_message_age_s"] < 2.0
    assert body["kinesis"]["circuit_state"] == "closed"
    assert body["connections"] == {"shards": 1, "connected": 1}
    # Then malformed frames.
    sim_post(sim, "/_sim/ws/faults", {"malformed_rate": 0.05})
    run.wait_for(lambda: streamer.counts["malformed"] >= 6, timeout=15, what="malformed frames")
    sim_post(sim, "/_sim/ws/faults", {"malformed_rate": 0.0})
    time.sleep(0.5)
    final = run.stop()

    # Malformed frames: counted, and dead-lettered with the raw frame and the reason.
    sim_stats = sim_get(sim, "/_sim/ws/stats")
    assert final["malformed"] == sim_stats["malformed"] > 0
    lines = [orjson.loads(x) for f in (tmp_path / "deadletter").glob("*.jsonl")
             for x in f.read_bytes().splitlines()]  # fmt: skip
    assert len(lines) == final["malformed"]
    assert all(x["raw"] and x["reason"] for x in lines)
    assert any(x["reason"].startswith("invalid JSON") for x in lines)
    # Gaps: the injected one, plus one per lost (malformed) diff at most.
    assert sim_stats["skipped_depth"] == 1
    lost_diffs = sum("@depth@100ms" in x["raw"] for x in lines)
    assert 1 <= final["gaps"] <= 1 + lost_diffs
    on_stream = read_stream(settings, settings.kinesis_depth_stream)
    depth = [d for d in on_stream if not is_depth_snapshot(d)]
    marked = [d for d in depth if d.get("gap")]
    assert len(marked) == final["gaps"]
    for m in marked:
        chain = [d for d in depth if d["symbol"] == m["symbol"]]
        i = chain.index(m)
        assert chain[i]["first_update_id"] > chain[i - 1]["final_update_id"] + 1
        # A resync snapshot follows the gap on the stream, new enough to bridge to it.
        after = on_stream[on_stream.index(m) :]
        assert any(
            is_depth_snapshot(r) and r["symbol"] == m["symbol"]
            and r["last_update_id"] + 1 >= m["first_update_id"]
            for r in after
        ), f"no resync snapshot after the gap at U={m['first_update_id']}"  # fmt: skip
    first_gap = marked[0]
    # Malformed trade frames left holes in the id sequence: backfilled from REST, in order.
    check_trades(settings, sim, ordered=True)

    # /metrics: the registry of this streamer, with the values of /health.
    values = _samples(metrics)
    gap_sym = first_gap["symbol"]
    assert values[f'streamer_depth_gaps_total{{symbol="{gap_sym}"}}'] == 1.0
    assert values["streamer_malformed_total"] == 0
    assert values['streamer_kinesis_circuit_state{state="closed"}'] == 1.0
    assert values['streamer_messages_in_total{data_type="trade"}'] > 0
    assert values["streamer_connections_open"] == 1.0
    trade_stream = settings.kinesis_trade_stream
    assert f'streamer_receive_to_ack_seconds_bucket{{le="+Inf",stream="{trade_stream}"}}' in values


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_real_capture_replay_lands_exactly_the_capture(
    sim_factory: Any, stream_settings: Settings, tmp_path: Path
) -> None:
    from ingest_pipeline.simulator.replay import load_captures
    from ingest_pipeline_tests.paths import CAPTURES

    path = CAPTURES / "btcusdt_20240808.gz"
    cap = load_captures(path)["BTCUSDT"]
    want_trades = [orjson.loads(d)["t"] for _, s, d in cap.messages if s.endswith("@trade")]
    want_depth = [
        (o["U"], o["u"])
        for o in (orjson.loads(d) for _, s, d in cap.messages if s.endswith("@depth@100ms"))
    ]
    sim = sim_factory(replay_path=str(path), replay_speed=0.0)
    settings = dataclasses.replace(with_sim(stream_settings, sim), symbols=("BTCUSDT",))
    # ~40k records at once: on a loaded 2-core machine the moto server takes its time to take
    # them, and this test is about what lands, not how fast.
    streamer = Streamer(
        settings, make_config(tmp_path, backfill_max_trades=0, shutdown_flush_timeout_s=180)
    )
    run = Running(streamer)
    run.wait_for(
        lambda: (
            streamer.messages_in["trade"] >= len(want_trades)
            and streamer.messages_in["depth_delta"] >= len(want_depth)
        ),
        timeout=60,
        what="the whole capture",
    )
    final = run.stop(timeout=240)
    trades = [r["trade_id"] for r in read_stream(settings, settings.kinesis_trade_stream)]
    depth = [
        d for d in read_stream(settings, settings.kinesis_depth_stream) if not is_depth_snapshot(d)
    ]
    assert trades == want_trades
    assert [(d["first_update_id"], d["final_update_id"]) for d in depth] == want_depth
    assert final["gaps"] == 0 and final["malformed"] == 0
    assert not any(d.get("gap") for d in depth)
    print(
        "replayed",
        len(trades),
        "trades",
        len(depth),
        "diffs",
        final["streams"]["bba"]["records_out"],
        "bba",
    )


def test_watchdog_replaces_a_stalled_connection(
    sim_factory: Any, stream_settings: Settings, tmp_path: Path
) -> None:
    sim = sim_factory(ws_ping_interval=0.5)
    settings = with_sim(stream_settings, sim)
    streamer = Streamer(settings, make_config(tmp_path))
    run = Running(streamer)
    run.wait_for(lambda: streamer.messages_in["trade"] > 3, what="first trades")
    # The server keeps the socket (and answers our pings) but sends nothing: data silence.
    sim_post(sim, "/_sim/ws/stall", {"seconds": 4.0})
    run.wait_for(
        lambda: streamer.health()["reconnect_reasons"].get("stalled", 0) >= 1,
        timeout=6,
        what="stall detected",
    )
    run.wait_for(lambda: streamer.health()["connections"]["connected"] == 1, what="reconnected")
    n = streamer.messages_in["depth_delta"]
    run.wait_for(lambda: streamer.messages_in["depth_delta"] > n + 5, what="data again")
    final = run.stop()
    assert final["reconnect_reasons"] == {"stalled": 1}
    check_trades(settings, sim)


def test_cli_stream_stops_clean_on_sigterm(
    sim_factory: Any, stream_settings: Settings, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    sim = sim_factory()
    settings = with_sim(stream_settings, sim)
    # The CLI reads load_settings(): the local config + environment; stream names come from the
    # config, so the test's own streams are not used here: count acks in the summary instead.
    env = {
        **os.environ,
        "INGEST_ENV": "local",
        "BINANCE_WS_URL": settings.binance_ws_url,
        "BINANCE_REST_URL": settings.binance_rest_url,
        "AWS_ENDPOINT_URL": settings.aws_endpoint_url or "",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest_pipeline.cli", "stream", "--symbols", "BTCUSDT",
         "--progress", "0.5", "--state-dir", str(tmp_path / "state")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    # SIGTERM once records flow (the start reads exchangeInfo, the lease and the stream tail).
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if " out " in line and int(line.split(" out ")[1].split()[0]) > 0:
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "streamer stopped" in out and "in trade=" in out
    summary = out.strip().splitlines()[-2]
    put = int(summary.split(" out ")[1].split()[0])
    acked = int(summary.split("kinesis acked ")[1].split()[0])
    assert put == acked > 0, summary
