"""Continuity across streamer processes, over real sockets (simulator, moto): a ``kill -9``,
a stop beyond the fill maximum, a frozen process woken after its successor took over, depth
resync snapshots and the online book recovering from them, an unlisted symbol.

The truth is the simulator's REST ``historicalTrades`` (what Binance says happened), never what
the simulator sent on the WebSocket: it sends nothing while nobody subscribes, which is exactly
where a restart's hole is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.binance.rest import BinanceRestClient
from ingest_pipeline.records import PRODUCER_EPOCH
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.kinesis_reader import is_depth_snapshot
from ingest_pipeline.streaming import Streamer
from ingest_pipeline.streaming.continuity import GapStore
from ingest_pipeline.streaming.online_features import OnlineFeatureConsumer
from ingest_pipeline.streaming.streamer import UnknownSymbolError
from ingest_pipeline_tests.dagster_harness import ROOT
from ingest_pipeline_tests.streaming.conftest import Running, make_config, sim_post, with_sim
from ingest_pipeline_tests.streaming.streamer_proc import spec

SYMBOLS = ("BTCUSDT", "ETHUSDT")
# A killed process's lease lapses in seconds, so the test's successor need not wait long.
FAST_LEASE = {"lease_ttl_s": 3.0, "lease_renew_s": 0.5}


def is_nan(x: Any) -> bool:
    return x is None or x != x


def read_all(settings: Settings, stream: str) -> list[tuple[dict[str, Any], int]]:
    """Every record of every shard with its arrival time (ms), oldest shard first."""
    kinesis = aws_client("kinesis", settings)
    out: list[tuple[dict[str, Any], int]] = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        it = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while it:
            resp = kinesis.get_records(ShardIterator=it, Limit=10_000)
            for r in resp["Records"]:
                out.append((orjson.loads(r["Data"]),
                            int(r["ApproximateArrivalTimestamp"].timestamp() * 1000)))  # fmt: skip
            if not resp["Records"] and resp.get("MillisBehindLatest", 0) == 0:
                break
            it = resp.get("NextShardIterator")
    return out


def rest_ids(settings: Settings, symbol: str, first: int, last: int) -> list[int]:
    client = BinanceRestClient(settings.binance_rest_url)
    return [t["id"] for p in client.historical_trades_range(symbol, first, last) for t in p.items]


def check_continuous(settings: Settings, first_ids: dict[str, int]) -> dict[str, Any]:
    """From each symbol's first streamed id to its last, every id REST knows is on the trade
    stream, and the first occurrences come in id order. Returns figures."""
    records = read_all(settings, settings.kinesis_trade_stream)
    figures: dict[str, Any] = {}
    for sym in SYMBOLS:
        ids = [r["trade_id"] for r, _ in records if r["symbol"] == sym]
        first, last = first_ids[sym], max(ids)
        truth = rest_ids(settings, sym, first, last)
        assert truth == list(range(first, last + 1)), "the simulator numbers trades densely"
        got = {i for i in ids if i >= first}
        missing = sorted(set(truth) - got)
        assert not missing, f"{sym}: {len(missing)} ids missing, e.g. {missing[:5]}"
        seen: set[int] = set()
        order = [i for i in ids if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]
        assert order == sorted(order), f"{sym}: trades not in id order on the stream"
        figures[sym] = {"ids": len(truth), "duplicates": len(ids) - len(set(ids))}
    return figures


class Proc:
    """A streamer process (``streamer_proc``) and its health lines."""

    def __init__(self, settings: Settings, tmp: Path, **config: Any) -> None:
        self.lines: list[dict[str, Any]] = []
        self.log = open(tmp / "stderr.log", "wb")
        self.p = subprocess.Popen(
            [sys.executable, "-m", "ingest_pipeline_tests.streaming.streamer_proc",
             spec(settings, tmp, **config)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(json.loads(line))

    def wait_for(self, cond: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.lines and cond(self.lines[-1]):
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.1)
        self.p.kill()
        tail = (Path(self.log.name).read_bytes()[-3000:]).decode(errors="replace")
        raise AssertionError(f"timed out waiting for {what}: {self.lines[-1:]}\n{tail}")

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)
        self.log.close()


def first_streamed(settings: Settings) -> dict[str, int]:
    records = read_all(settings, settings.kinesis_trade_stream)
    return {s: min(r["trade_id"] for r, _ in records if r["symbol"] == s) for s in SYMBOLS}


def test_kill_9_leaves_no_hole(sim_factory: Any, stream_settings: Settings, tmp_path: Path) -> None:
    sim = sim_factory()
    settings = with_sim(stream_settings, sim)
    (tmp_path / "a").mkdir()
    a = Proc(settings, tmp_path / "a", **FAST_LEASE)
    try:
        # Every symbol has trades on Kinesis, and a checkpoint was written since.
        a.wait_for(lambda h: h["acked_symbols"] == len(SYMBOLS), 60, "A streaming")
        since = a.lines[-1]["renewals"]
        a.wait_for(lambda h: h["renewals"] >= since + 2, 30, "A's checkpoint")
        os.kill(a.p.pid, signal.SIGKILL)
        killed = time.monotonic()
        a.p.wait(10)
    finally:
        a.close()
    time.sleep(3.0)  # trades keep happening: the hole B must fill
    b = Streamer(settings, make_config(tmp_path / "b", **FAST_LEASE))
    run = Running(b)
    run.wait_for(lambda: b.state == "running" and b.records_out["trade"] > 0, 60, "B streaming")
    run.wait_for(lambda: len(b.fills) >= len(SYMBOLS) and not any(
        st.fill for st in b._trades.values()), 60, "B's fills")  # fmt: skip
    time.sleep(1.0)
    final = run.stop()
    assert b.takeover["epoch"] == 2 and not b.takeover["previous_released"]
    assert set(b.takeover["sources"].values()) == {"checkpoint+tail"}
    figures = check_continuous(settings, first_streamed(settings))
    start_fills = [f for f in b.fills if f["at_start"]]
    filled = {f["symbol"]: f["filled"] for f in start_fills}
    assert all(n > 0 for n in filled.values()), start_fills
    assert final["trade_ids_unfilled"] == 0
    # The REST weight of this restart: exchangeInfo, the fills' pages, one depth snapshot per
    # symbol (1000 levels: 50, plus 1 for the server time), each counted by the pacer.
    pages = sum(f["pages"] for f in b.fills)
    tries = sum(r["tries"] for r in b.resyncs)
    assert tries >= len(SYMBOLS) and pages >= len(SYMBOLS)
    assert b.pacer.spent == 20 + 25 * pages + 51 * tries
    print(
        f"restart of {len(SYMBOLS)} symbols: REST weight {b.pacer.spent} "
        f"({pages} historicalTrades pages, {tries} depth snapshots)"
    )
    print(
        f"kill -9: hole filled {filled} ids, B up {b.takeover} "
        f"{time.monotonic() - killed:.1f} s after the kill; fills {start_fills}; {figures}"
    )


def test_downtime_beyond_the_fill_maximum_is_a_gap_record(
    sim_factory: Any, stream_settings: Settings, tmp_path: Path
) -> None:
    sim = sim_factory()
    settings = with_sim(stream_settings, sim)
    a = Streamer(settings, make_config(tmp_path / "a"))
    run = Running(a)
    run.wait_for(lambda: a.records_out["trade"] > 20, 60, "A streaming")
    run.stop()
    assert a.lease is not None and a.lease.lost == "released"
    time.sleep(2.5)
    # resume_wait_s: a loaded machine may take seconds to connect; the first live trade must
    # bound the hole for the newest part to be the one filled.
    b = Streamer(settings, make_config(tmp_path / "b", backfill_max_trades=3, resume_wait_s=15))
    run = Running(b)
    run.wait_for(lambda: b.records_out["trade"] > 5 and len(b.fills) >= 2, 60, "B filling")
    final = run.stop()
    gaps = {g["symbol"]: g for g in b.gap_records}
    assert "BTCUSDT" in gaps, b.gap_records  # ~30 trades in 2.5 s: more than 3
    store = GapStore(aws_client("s3", settings), settings.bucket, "streamer")
    records = read_all(settings, settings.kinesis_trade_stream)
    first = first_streamed(settings)
    for sym in SYMBOLS:
        ids = sorted({r["trade_id"] for r, _ in records if r["symbol"] == sym})
        truth = rest_ids(settings, sym, first[sym], ids[-1])
        gap = gaps.get(sym)
        if gap is None:  # a quiet symbol: its hole was within the maximum
            assert ids == truth
            continue
        (stored,) = store.list(sym)
        assert (stored["first_id"], stored["last_id"]) == (gap["first_id"], gap["last_id"])
        assert stored["epoch"] == 2 and "backfill_max_trades" in stored["reason"]
        # Every id is either on Kinesis or in the gap record, never both; the gap starts
        # right after A's last trade, and B filled the newest 3 before its live ones.
        in_gap = set(range(gap["first_id"], gap["last_id"] + 1))
        assert set(ids) | in_gap == set(truth) and not set(ids) & in_gap
        assert gap["first_id"] - 1 in ids
        # Its span in time: the trades on either side of it (the archive's coverage).
        times = {r["trade_id"]: r["event_ts"] for r, _ in records if r["symbol"] == sym}
        assert stored["from_ts"] == times[gap["first_id"] - 1]
        assert stored["to_ts"] == times[gap["last_id"] + 1]
        (fill,) = [f for f in b.fills if f["symbol"] == sym and f["at_start"]]
        assert fill["filled"] == 3 and fill["from_id"] == gap["first_id"]
    assert final["trade_ids_unfilled"] == sum(g["ids"] for g in gaps.values())
    assert final["continuity"]["gap_records"] == len(gaps)


def test_frozen_process_is_fenced_when_it_wakes(
    sim_factory: Any, stream_settings: Settings, tmp_path: Path
) -> None:
    sim = sim_factory()
    settings = with_sim(stream_settings, sim)
    lease = FAST_LEASE
    (tmp_path / "a").mkdir()
    a = Proc(settings, tmp_path / "a", **lease)
    try:
        a.wait_for(lambda h: (h["acked"] or 0) > 50, 60, "A streaming")
        os.kill(a.p.pid, signal.SIGSTOP)
        frozen_at = time.time()
        time.sleep(3.5)  # past A's lease (ttl 3 s + 1 s skew counted by the taker)
        b = Streamer(settings, make_config(tmp_path / "b", **lease))
        run = Running(b)
        run.wait_for(lambda: b.records_out["trade"] > 0, 60, "B streaming")
        time.sleep(1.0)
        woke_at = time.time()
        os.kill(a.p.pid, signal.SIGCONT)
        code = a.p.wait(30)
        exited_after = time.time() - woke_at
        time.sleep(1.0)
        final = run.stop()
    finally:
        a.close()
    assert code == 3, f"A exited {code}: {a.lines[-1:]}"
    assert "lease" in a.lines[-1]["lease_lost"]
    assert b.epoch == 2 and final["continuity"]["lease"]["lost"] == "released"
    # Never two producers: every record of epoch 1 arrived before the first of epoch 2.
    last_a = first_b = None
    for stream in settings.kinesis_streams:
        for rec, arrived in read_all(settings, stream):
            if rec.get(PRODUCER_EPOCH) == 1:
                last_a = max(last_a or 0, arrived)
            elif rec.get(PRODUCER_EPOCH) == 2:
                first_b = min(first_b or 10**15, arrived)
    assert last_a is not None and first_b is not None
    assert last_a < first_b, f"epoch 1 record arrived {last_a - first_b} ms after epoch 2 began"
    assert last_a <= frozen_at * 1000 + 1000
    check_continuous(settings, first_streamed(settings))
    print(
        f"frozen A exited {exited_after:.1f} s after waking; last epoch-1 record "
        f"{first_b - last_a} ms before the first epoch-2 one"
    )


def test_depth_gap_resyncs_the_online_book_from_the_stream(
    sim_factory: Any, stream_settings: Settings, tmp_path: Path
) -> None:
    sim = sim_factory()
    settings = dataclasses.replace(with_sim(stream_settings, sim), symbols=("BTCUSDT",))
    # The grid starts before the streamer's first diff: every diff reaches the engine.
    start = (int(time.time() * 1000) // 1000 - 1) * 1000
    s = Streamer(settings, make_config(tmp_path))
    run = Running(s)
    run.wait_for(lambda: s.counts["depth_snapshots"] >= 1, 60, "the start snapshot")
    time.sleep(2.0)
    sim_post(sim, "/_sim/ws/faults", {"skip_depth_next": 1})
    run.wait_for(lambda: s.counts["depth_snapshots"] >= 2, 30, "the resync snapshot")
    time.sleep(5.0)
    final = run.stop()
    assert final["gaps"] == 1 and final["continuity"]["depth_resyncs"]["published"] == 2
    depth = [r for r, _ in read_all(settings, settings.kinesis_depth_stream)]
    end = max(r["event_ts"] for r in depth if not is_depth_snapshot(r)) // 1000 * 1000
    snaps = [r for r in depth if is_depth_snapshot(r)]
    gap = next(r for r in depth if r.get("gap"))
    assert snaps[1]["last_update_id"] + 1 >= gap["first_update_id"]
    assert depth.index(snaps[1]) > depth.index(gap)  # published after the diffs it bridges to
    # The online engine, reading the streams only (no bronze), syncs from the start snapshot,
    # breaks at the gap and resyncs from the streamer's snapshot.
    rows: list[dict[str, Any]] = []
    consumer = OnlineFeatureConsumer(aws_client("kinesis", settings), settings, rows.append,
                                     symbols=("BTCUSDT",), start_ms=start, end_ms=end)  # fmt: skip
    consumer.run(threading.Event())
    book = consumer.engines["BTCUSDT"].book
    assert book.stats.snapshots_used == 2 and book.stats.gaps == 1
    (gap_e,) = book.stats.gap_times
    assert consumer.stats.snapshots_fed == 2
    broken = [r["ts"] for r in rows if r["ts"] > gap_e and is_nan(r["depth_imbalance_5"])]
    after = [r for r in rows if r["ts"] > gap_e + 2000]
    assert len(after) >= 2 and not any(is_nan(r["depth_imbalance_5"]) for r in after)
    recovered_s = (max(broken) - gap_e) / 1000 if broken else 0.0
    print(
        f"book recovered {recovered_s:.1f} s after the gap (<= one grid step when 0); "
        f"snapshot published {final['continuity']['depth_resyncs']['last'][-1]['seconds']} s "
        "after the gap was seen"
    )
    assert recovered_s <= 2.0


def test_unlisted_symbol_stops_the_start(
    sim_factory: Any, stream_settings: Settings, tmp_path: Path
) -> None:
    sim = sim_factory()
    settings = dataclasses.replace(with_sim(stream_settings, sim),
                                   symbols=("BTCUSDT", "NOPEUSDT"))  # fmt: skip
    s = Streamer(settings, make_config(tmp_path))
    with pytest.raises(UnknownSymbolError, match="NOPEUSDT"):
        s.run_until(duration_s=30)
    assert s.lease is None and sum(s.records_out.values()) == 0 and not s.shards
