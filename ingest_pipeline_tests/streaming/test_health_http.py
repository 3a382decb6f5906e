"""``/health`` and ``/metrics`` over HTTP after every kind of link event (issue 14: the first
reconnect made ``/health`` answer 500 for good, its shard snapshot keyed by an enum).

Each case runs a real streamer against the simulator with two connections (two symbols, three
streams per connection), provokes one event on the wire, waits until the streamer has counted
it, then asks both endpoints over a real socket: 200 with strict JSON, and Prometheus text that
parses and carries the event."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from ingest_pipeline.binance.stream import LinkEnd
from ingest_pipeline.settings import Settings
from ingest_pipeline.standins.simulator import SimulatorServer
from ingest_pipeline.streaming import Streamer
from ingest_pipeline.streaming.health import health_json
from ingest_pipeline_tests.streaming.conftest import (
    Running,
    make_config,
    sim_get,
    sim_post,
    with_sim,
)


def get_health(streamer: Streamer) -> dict[str, Any]:
    resp = requests.get(f"{streamer.health_url}/health", timeout=5)
    assert resp.status_code == 200, resp.text[:2000]
    assert resp.headers["Content-Type"].startswith("application/json")
    return json.loads(resp.text)  # strict: the stdlib parser, not the encoder that wrote it


def get_reconnect_metrics(streamer: Streamer) -> dict[str, float]:
    resp = requests.get(f"{streamer.health_url}/metrics", timeout=5)
    assert resp.status_code == 200, resp.text[:2000]
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    assert "streamer_messages_in" in families
    return {
        s.labels["reason"]: s.value
        for s in families["streamer_reconnects"].samples
        if s.name == "streamer_reconnects_total"
    }


def all_connected(streamer: Streamer) -> bool:
    return bool(streamer.shards) and all(sh.connected for sh in streamer.shards)


def reasons(streamer: Streamer) -> dict[str, int]:
    total: dict[str, int] = {}
    for sh in streamer.shards:
        for reason, n in sh.reconnect_reasons.items():
            total[reason] = total.get(reason, 0) + n
    return total


def first_conn(sim: SimulatorServer) -> list[int]:
    return sim_get(sim, "/_sim/ws/stats")["connection_ids"][:1]


def _drop(sim: SimulatorServer, run: Running) -> str:
    sim_post(sim, "/_sim/ws/drop", {"ids": first_conn(sim)})
    return LinkEnd.CLOSED.value


def _stall(sim: SimulatorServer, run: Running) -> str:
    # Silent socket: no data, no pings; the watchdog gives up after data_timeout_s (2 s).
    sim_post(sim, "/_sim/ws/stall", {"ids": first_conn(sim), "seconds": 6})
    return LinkEnd.STALLED.value


def _server_shutdown(sim: SimulatorServer, run: Running) -> str:
    sim_post(sim, "/_sim/ws/shutdown", {"ids": first_conn(sim)})
    return LinkEnd.SERVER_SHUTDOWN.value


def _rollover(sim: SimulatorServer, run: Running) -> str:
    return LinkEnd.ROLLOVER.value  # max_age_s is short in this case: it comes by itself


def _ping_timeout(sim: SimulatorServer, run: Running) -> str:
    # The client stops answering the server's pings; the server closes with 1008 "Pong timeout"
    # after ws_pong_timeout, exactly what Binance does to a client that does not pong.
    run.pongs_off = True
    run.wait_for(
        lambda: sim_get(sim, "/_sim/ws/stats")["dropped_pong_timeout"] >= 1,
        timeout=10,
        what="the server's pong timeout",
    )
    run.pongs_off = False
    return LinkEnd.CLOSED.value


def _malformed(sim: SimulatorServer, run: Running) -> str:
    sim_post(sim, "/_sim/ws/faults", {"malformed_rate": 0.2})
    run.wait_for(lambda: run.streamer.counts["malformed"] >= 3, what="malformed frames")
    sim_post(sim, "/_sim/ws/faults", {"malformed_rate": 0.0})
    return ""


def _connect_failure(sim: SimulatorServer, run: Running) -> str:
    # The simulator admits two connection attempts per window (ws_connect_limit=2) and answers
    # the next ones 429: the dropped shard's reconnects fail while the other stays connected.
    sim_post(sim, "/_sim/ws/drop", {"ids": first_conn(sim)})
    run.wait_for(
        lambda: any(
            (sh.last_error or "").startswith("connect:") and sh.attempts >= sh.connects + 1
            for sh in run.streamer.shards
        ),
        what="a failed connect",
    )
    return LinkEnd.CLOSED.value


EVENTS: dict[str, tuple[Callable[[SimulatorServer, Running], str], dict[str, Any]]] = {
    "connect": (lambda sim, run: "", {}),
    "drop": (_drop, {}),
    "stall": (_stall, {}),
    "server_ping_timeout": (_ping_timeout, {"ws_ping_interval": 0.2, "ws_pong_timeout": 0.6}),
    "server_shutdown": (_server_shutdown, {}),
    "rollover": (_rollover, {}),
    "malformed_frame": (_malformed, {}),
    "connect_failure": (_connect_failure, {"ws_connect_limit": 2}),
}


@pytest.mark.parametrize("event", list(EVENTS))
def test_health_and_metrics_answer_after_every_link_event(
    event: str,
    sim_factory: Callable[..., SimulatorServer],
    stream_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provoke, sim_config = EVENTS[event]
    sim = sim_factory(**sim_config)
    settings = with_sim(stream_settings, sim)
    base = make_config(tmp_path)
    stream_cfg = base.stream
    if event == "rollover":
        stream_cfg = dataclasses.replace(stream_cfg, max_age_s=1.5)
    config = make_config(tmp_path, health_port=0, max_streams_per_connection=3, stream=stream_cfg)
    streamer = Streamer(settings, config)
    run = Running(streamer)
    run.pongs_off = False  # type: ignore[attr-defined]
    real_pong = aiohttp.ClientWebSocketResponse.pong

    async def pong(self: aiohttp.ClientWebSocketResponse, message: bytes = b"") -> None:
        if not run.pongs_off:  # type: ignore[attr-defined]
            await real_pong(self, message)

    monkeypatch.setattr(aiohttp.ClientWebSocketResponse, "pong", pong)
    try:
        run.wait_for(
            lambda: all_connected(streamer) and streamer.messages_in["depth_delta"] > 0,
            what="both connections streaming",
        )
        assert len(streamer.shards) == 2
        reason = provoke(sim, run)
        if reason:
            run.wait_for(lambda: reasons(streamer).get(reason, 0) >= 1, what=reason)
        if event != "connect_failure":
            run.wait_for(lambda: all_connected(streamer), what="reconnected")

        body = get_health(streamer)
        assert body["status"] in ("ok", "degraded")
        assert body["connections"]["shards"] == 2
        assert body["symbols_count"] == 2
        if reason:
            assert body["reconnect_reasons"].get(reason, 0) >= 1
            assert sum(sh["reconnect_reasons"].get(reason, 0) for sh in body["shards"]) >= 1
            assert get_reconnect_metrics(streamer).get(reason, 0) >= 1
        else:
            get_reconnect_metrics(streamer)
        if event == "malformed_frame":
            assert body["malformed"] >= 3
        if event == "connect_failure":
            assert body["status"] == "degraded"
            assert body["connections"]["connected"] == 1
            failed = [sh for sh in body["shards"] if not sh["connected"]]
            assert failed and "429" in failed[0]["last_error"]
    finally:
        run.stop()


def test_health_json_encodes_any_key_or_value_type() -> None:
    payload = {"reasons": {LinkEnd.STALLED: 2, 7: "x"}, "end": LinkEnd.ROLLOVER, "p": Path("/a")}
    assert json.loads(health_json(payload)) == {
        "reasons": {"stalled": 2, "7": "x"},
        "end": "rollover",
        "p": "/a",
    }
