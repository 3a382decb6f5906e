"""The pieces of durable continuity, without sockets: id ranges, resume points, the ack
frontier, the REST pacer, and the streamer's in-order trade path driven by hand."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest_pipeline.binance.rest import Page
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.kinesis import producer_client
from ingest_pipeline.streaming.continuity import (
    AckTracker,
    FencedError,
    WeightPacer,
    missing_ranges,
    restart_weight,
    resume_points,
    to_ranges,
)
from ingest_pipeline_tests.streaming.conftest import read_stream
from ingest_pipeline_tests.streaming.test_streamer_unit import make, trade


def test_ranges() -> None:
    assert to_ranges([5, 3, 4, 4, 9, 10, 12]) == [(3, 5), (9, 10), (12, 12)]
    assert missing_ranges(1, 12, [(3, 5), (9, 10)]) == [(1, 2), (6, 8), (11, 12)]
    assert missing_ranges(3, 5, [(1, 9)]) == []
    assert missing_ranges(1, 4, []) == [(1, 4)]


def test_resume_joins_checkpoint_and_tail() -> None:
    checkpoint = {"written_at_ms": 1, "symbols": {
        "A": {"trade_id": 100, "trade_ts": 5000, "depth_u": 7},
        "B": {"trade_id": 50, "trade_ts": 900},
    }}  # fmt: skip
    tail = {
        # The checkpoint lags: the tail holds what was acked after it (and a bit before).
        "A": {i: 4000 + i * 10 for i in (98, 99, 100, 101, 102, 103, 107, 108)},
        # Nothing of B since the checkpoint.
        "B": {},
        # C has no checkpoint entry: the tail's first id is where its record starts.
        "C": {20: 1, 21: 2, 23: 3},
    }
    r = resume_points(checkpoint, tail, ["A", "B", "C", "D"])
    assert (r["A"].frontier, r["A"].present, r["A"].depth_u) == (103, [(107, 108)], 7)
    assert r["A"].source == "checkpoint+tail" and r["A"].frontier_ts == 5030
    assert (r["B"].frontier, r["B"].present, r["B"].source) == (50, [], "checkpoint")
    assert r["B"].frontier_ts == 900
    assert (r["C"].frontier, r["C"].present, r["C"].source) == (21, [(23, 23)], "tail")
    assert (r["D"].frontier, r["D"].source, r["D"].frontier_ts) == (None, "none", None)
    # A lost checkpoint write: the tail alone carries the state forward.
    assert resume_points(None, tail, ["A"])["A"].frontier == 103


class FakeKinesis:
    def __init__(self, refuse: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.refuse = refuse
        self.calls = 0

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls += 1
        out = []
        for r in Records:
            tid = orjson.loads(r["Data"]).get("trade_id")
            refused = {"ErrorCode": "ProvisionedThroughputExceededException"}
            out.append(refused if tid in self.refuse else {"SequenceNumber": "1"})
        return {"Records": out, "FailedRecordCount": sum("ErrorCode" in o for o in out)}


def entries(sym: str, ids: list[int]) -> list[dict[str, Any]]:
    return [{"Data": orjson.dumps({"symbol": sym, "trade_id": i, "event_ts": i * 100}),
             "PartitionKey": sym} for i in ids]  # fmt: skip


def test_ack_frontier_stops_below_a_refused_entry() -> None:
    client = FakeKinesis(refuse={13})
    t = AckTracker(client, "trades")
    t.seed({"A": (9, 900)})
    t.put_records(StreamName="trades", Records=entries("A", [10, 11, 12, 13, 14, 15]))
    # 14 and 15 are stored but 13 is not (yet): the frontier stays at 12 (its time unknown).
    assert t.snapshot() == {"A": (12, None)}
    client.refuse = set()
    t.put_records(StreamName="trades", Records=entries("A", [13]))
    t.put_records(StreamName="trades", Records=entries("A", [16]))
    assert t.snapshot() == {"A": (16, 1600)}
    # Other streams are passed through untouched.
    t.put_records(StreamName="depth", Records=entries("A", [99]))
    assert t.snapshot() == {"A": (16, 1600)}


def test_gate_is_asked_right_before_the_request_leaves(stream_settings: Settings) -> None:
    """On a real boto3 client: a refused gate stops the call after it was built and signed,
    before anything reaches Kinesis (moto over HTTP here)."""
    client = producer_client(stream_settings)
    stream = stream_settings.kinesis_trade_stream
    held = [True]
    t = AckTracker(client, stream, gate=lambda: held[0])
    t.put_records(StreamName=stream, Records=entries("A", [1, 2]))
    held[0] = False
    with pytest.raises(FencedError):
        t.put_records(StreamName=stream, Records=entries("A", [3]))
    assert t.refused_calls == 1 and t.snapshot() == {"A": (2, 200)}
    assert [r["trade_id"] for r in read_stream(stream_settings, stream)] == [1, 2]


def test_pacer_spreads_weight() -> None:
    now = [0.0]
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    async def run() -> None:
        # 10 weight/s, burst 100; its own clock and sleep (other threads' loops sleep too)
        pacer = WeightPacer(600, 100, monotonic=lambda: now[0], sleep=fake_sleep)
        for _ in range(4):
            await pacer.acquire(50)
        assert pacer.spent == 200

    asyncio.run(run())
    # 100 of burst, then 100 more at 10/s: 10 s of waiting in total.
    assert sum(sleeps) == pytest.approx(10.0)


def test_pacer_serves_urgent_requests_first() -> None:
    order: list[str] = []

    async def run() -> None:
        pacer = WeightPacer(60_000, 10)  # 1000 weight/s: a request of 10 waits ~10 ms

        async def ask(name: str, urgent: bool) -> None:
            await pacer.acquire(10, urgent=urgent)
            order.append(name)

        await pacer.acquire(10)  # the burst is used up
        # fill-0 is being served (waiting for tokens) when the others ask, resyncs first.
        await asyncio.gather(ask("fill-0", True), ask("resync-1", False),
                             ask("resync-2", False), ask("fill-1", True),
                             ask("fill-2", True))  # fmt: skip

    asyncio.run(run())
    assert order == ["fill-0", "fill-1", "fill-2", "resync-1", "resync-2"]


def test_restart_weight_figures() -> None:
    # Resync at 1000 levels (weight 50) + server time, one historicalTrades page per symbol.
    assert restart_weight(2, 50) == 20 + 2 * (25 + 1 + 50) == 172
    assert restart_weight(200, 50) == 15_220
    # At the default budget (3000/min) a restart of 200 symbols takes ~5 min of REST, and
    # never more than half of the IP's 6000/min.
    assert restart_weight(200, 50) / 3000 == pytest.approx(5.07, abs=0.01)


# --- the in-order trade path, driven by hand on an event loop -----------------------------


class FakeRest:
    """historicalTrades from a list of ids; counts pages."""

    def __init__(self, ids: range) -> None:
        self.ids = ids
        self.pages = 0

    def get(self, path: str, params: dict[str, Any], weight: int) -> Page:
        assert path == "/api/v3/historicalTrades"
        self.pages += 1
        start, limit = params["fromId"], params["limit"]
        items = [
            {"id": i, "price": "1.5", "qty": "2", "quoteQty": "3", "time": 5,
             "isBuyerMaker": True, "isBestMatch": True}
            for i in self.ids if start <= i < start + limit
        ]  # fmt: skip
        return Page(items, 1)


def drive(tmp_path: Path, frontier: int | None, live: list[int], rest_ids: range,
          max_fill: int = 1000, open_ended: bool = False) -> tuple[list[int], Any]:  # fmt: skip
    from ingest_pipeline.streaming.streamer import Streamer

    s, sink = make(tmp_path)
    s.cfg = __import__("dataclasses").replace(s.cfg, backfill_max_trades=max_fill, fill_delay_s=0)
    rest = FakeRest(rest_ids)
    s._rest = rest  # type: ignore[assignment]
    s._trades["BTCUSDT"].last = frontier

    async def main() -> None:
        s._loop = asyncio.get_running_loop()
        s._stop = asyncio.Event()
        if open_ended:
            s._start_fill("BTCUSDT", open_ended=True)
        for tid in live:
            s.on_frame(trade(tid), 1000)
            await asyncio.sleep(0)
        while s._tasks:
            await asyncio.gather(*list(s._tasks))

    asyncio.run(main())
    assert isinstance(s, Streamer)
    ids = [r["trade_id"] for st, _, r in sink.records if "trade_id" in r]
    return ids, s


def test_hole_is_filled_before_the_held_live_trades(tmp_path: Path) -> None:
    ids, s = drive(tmp_path, frontier=None, live=[10, 11, 15, 16, 17, 20], rest_ids=range(1, 30))
    assert ids == list(range(10, 21))
    assert s.counts["trades_backfilled"] == 5 and s.counts["trade_ids_unfilled"] == 0


def test_restart_fill_runs_before_any_live_trade(tmp_path: Path) -> None:
    # Frontier 100 from the previous process; REST has up to 140; live starts at 131: the
    # fill covers 101..130, then the live trades follow (the stream brings 134.. itself).
    ids, s = drive(tmp_path, frontier=100, live=[131, 132, 133], rest_ids=range(1, 141),
                   open_ended=True)  # fmt: skip
    assert ids == list(range(101, 134))
    assert s.fills[0]["at_start"] and s.fills[0]["from_id"] == 101


def test_hole_longer_than_the_maximum_becomes_a_gap_record(tmp_path: Path) -> None:
    ids, s = drive(tmp_path, frontier=100, live=[200, 201], rest_ids=range(1, 300), max_fill=30)
    # The newest 30 ids before the live ones are filled; 101..169 are reported, not hidden.
    assert ids == list(range(170, 202))
    reason = "hole longer than 30 ids (backfill_max_trades)"
    # Its span in time: from the frontier's trade (unknown here) to the first trade after it.
    assert s.gap_records == [
        {"symbol": "BTCUSDT", "first_id": 101, "last_id": 169, "ids": 69, "reason": reason,
         "from_ts": None, "to_ts": 5}
    ]  # fmt: skip
    assert s.counts["trade_ids_unfilled"] == 69
    assert s.health()["continuity"]["gap_ids"] == 69
