"""A replay of the real capture looks live: simulator -> streamer -> Kinesis -> online engine
gives the offline features of the same capture shifted by the replay's offset.

96 seconds of the capture, across its 00:00 UTC boundary (and its file boundary), are played in
real time: the only speed at which receive-time BBA stamps can match the capture's (scaling
time would change every windowed feature); a slice keeps it short enough for the suite (~2.5
min, the slowest test here for that reason).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ingest_pipeline.aws import aws_client
from ingest_pipeline.binance.history import fetch_depth_snapshot
from ingest_pipeline.binance.rest import BinanceRestClient
from ingest_pipeline.features import (
    DEFAULT_SPEC,
    GridRange,
    SymbolInputs,
    compute_features,
    duration_suffix,
    rows_to_frame,
)
from ingest_pipeline.records import BBA, DEPTH_DELTA, DEPTH_SNAPSHOT, PRODUCER_EPOCH, TRADE
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.storage.kinesis_reader import is_depth_snapshot
from ingest_pipeline.streaming import Streamer
from ingest_pipeline.streaming.online_features import OnlineFeatureConsumer
from ingest_pipeline.timeutil import floor_hour, from_ms, to_ms
from ingest_pipeline_tests.features.capture import capture_records
from ingest_pipeline_tests.paths import CAPTURES
from ingest_pipeline_tests.streaming.conftest import (
    FAST_PRODUCER,
    Running,
    make_config,
    read_stream,
    sim_get,
    sim_post,
    with_sim,
)
from ingest_pipeline_tests.streaming.test_online_features import assert_parity

SYMBOLS = ("BTCUSDT", "ETHUSDT")
BIN = Path(sys.executable).parent


def utc(*args: int) -> int:
    return to_ms(datetime(*args, tzinfo=UTC))


def iso(ms: int) -> str:
    return from_ms(ms).isoformat()


@dataclasses.dataclass
class SimProcess:
    """The base URL of a simulator run by the CLI (what the helpers need of a simulator)."""

    url: str


# The slice played (recorded receive time) and the grid compared (capture time, before the
# shift). Event times run ~1.27 s ahead of receive times in this capture: the grid starts 3 s
# into the slice so that every record it needs is played.
SLICE = (utc(2024, 8, 8, 23, 59, 12), utc(2024, 8, 9, 0, 0, 48))
GRID = (utc(2024, 8, 8, 23, 59, 15), utc(2024, 8, 9, 0, 0, 45))
BBA_COLUMNS = ("spread", "spread_bps", "mid", "microprice", "obi_1")


def shifted_capture(symbol: str, offset: int) -> dict[str, list[dict[str, Any]]]:
    """The capture's records (our normalizers on the recorded lines) moved by ``offset``."""
    out: dict[str, list[dict[str, Any]]] = {TRADE: [], BBA: [], DEPTH_DELTA: []}
    for data_type, rec in capture_records(symbol):
        if data_type in out:
            out[data_type].append(dict(rec, event_ts=rec["event_ts"] + offset))
    return out


def last_bba_before(bbas: list[dict[str, Any]], grid: np.ndarray) -> np.ndarray:
    """Update id of the BBA "at ts" (the last with event_ts < ts, ties by update id)."""
    ets = np.array([b["event_ts"] for b in bbas], np.int64)
    uid = np.array([b["update_id"] for b in bbas], np.int64)
    order = np.lexsort((uid, ets))
    last = np.searchsorted(ets[order], grid, side="left") - 1
    return np.where(last >= 0, uid[order][np.maximum(last, 0)], -1)


def bba_cells(moved: np.ndarray) -> dict[str, np.ndarray]:
    """The cells of each BBA column that read the BBA of a row in ``moved``: the row itself,
    and for a label the row ``N`` before it."""
    out = {col: moved for col in BBA_COLUMNS}
    for n in DEFAULT_SPEC.horizons_ms:
        ahead = np.zeros_like(moved)
        k = n // DEFAULT_SPEC.step_ms
        ahead[:-k] = moved[k:]
        out[f"fwd_mid_move_{duration_suffix(n)}_bps"] = moved | ahead
    return out


def frame_of(rows: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [{k: (np.nan if v is None else v) for k, v in r.items()} for r in rows]
    return rows_to_frame(rows).reset_index(drop=True)


def test_replay_through_streamer_and_online_engine_equals_offline(
    stream_settings: Settings, tmp_path: Path
) -> None:
    # The simulator runs as its own process (the CLI), as it would beside a streamer: sharing
    # one interpreter lock with the streamer would delay the receive stamps.
    proc = subprocess.Popen(
        [str(BIN / "ingest-pipeline"), "simulator", "--replay", str(CAPTURES),
         "--replay-from", iso(SLICE[0]), "--replay-until", iso(SLICE[1])],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        sim = SimProcess(proc.stdout.readline().strip())  # type: ignore[union-attr]
        settings = with_sim(stream_settings, sim)  # type: ignore[arg-type]
        producer = dataclasses.replace(FAST_PRODUCER, linger_s=0.25)
        streamer = Streamer(settings, make_config(tmp_path, producer=producer))
        run = Running(streamer)  # its subscription starts the replay
        run.wait_for(lambda: sim_get(sim, "/_sim/replay/status")["started"], what="replay")
        offset = sim_get(sim, "/_sim/replay/status")["offset_ms"]
        start, end = GRID[0] + offset, GRID[1] + offset
        assert offset % 1000 == 0
        # The live book the bronze depth_snapshot asset would take, once the grid has begun: a
        # replay's REST depth is the capture's book as far as it has been played.
        run.wait_for(
            lambda: sim_get(sim, "/api/v3/time")["serverTime"] > start,
            timeout=30,
            what="the grid start",
        )
        store = BronzeStore(aws_client("s3", settings), settings.bucket, settings.bronze_prefix)
        snaps = {}
        client = BinanceRestClient(sim.url)
        for symbol in SYMBOLS:
            snap = fetch_depth_snapshot(client, symbol, 1000).records[0]
            store.write_hour(symbol, DEPTH_SNAPSHOT, floor_hour(snap["timestamp"]), [snap])
            snaps[symbol] = snap
        run.wait_for(
            lambda: sim_get(sim, "/_sim/replay/status")["finished"],
            timeout=(SLICE[1] - SLICE[0]) / 1000 + 60,
            what="the end of the slice",
        )
        final = run.stop()
        replay = sim_get(sim, "/_sim/replay/status")
        print(f"simulator: {replay['late_frames']} of {replay['sent']} frames published 1 ms or "
              f"more late (max {replay['max_late_ms']} ms)")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert final["gaps"] == 0 and final["malformed"] == 0 and final["trades_backfilled"] == 0

    # The online engine reads the streams once the replay is over: its result does not depend
    # on when it reads (steps close on event time), and a quiet machine while the streamer
    # stamps keeps the BBA transit times short.
    rows: list[dict[str, Any]] = []
    consumer = OnlineFeatureConsumer(
        aws_client("kinesis", settings),
        settings,
        rows.append,
        symbols=SYMBOLS,
        start_ms=start,
        end_ms=end,
        bronze=store,
    )
    stop = threading.Event()
    timer = threading.Timer(120, stop.set)
    timer.start()
    try:
        consumer.run(stop)
    finally:
        timer.cancel()
    assert consumer.finished, consumer.summary()
    assert consumer.summary()["late"] == {}

    # The records as the archive lands them: without the producer's lease epoch, the depth
    # stream's snapshots (the streamer's resync points) apart from its diffs.
    streamed = {
        data_type: [
            {k: v for k, v in r.items() if k != PRODUCER_EPOCH}
            for r in read_stream(settings, stream)
        ]  # fmt: skip
        for data_type, stream in (
            (TRADE, settings.kinesis_trade_stream),
            (BBA, settings.kinesis_bba_stream),
            (DEPTH_DELTA, settings.kinesis_depth_stream),
        )
    }
    resyncs = [r for r in streamed[DEPTH_DELTA] if is_depth_snapshot(r)]
    streamed[DEPTH_DELTA] = [r for r in streamed[DEPTH_DELTA] if not is_depth_snapshot(r)]
    rng = GridRange(start, end, start, end)
    for symbol in SYMBOLS:
        want = shifted_capture(symbol, offset)
        got = {t: [r for r in recs if r["symbol"] == symbol] for t, recs in streamed.items()}
        _check_records(symbol, want, got, (start, end), (SLICE[0] + offset, SLICE[1] + offset))
        # The online engine synced from these as well (offline, the archive puts them in
        # bronze depth_snapshot next to the hourly capture).
        book_snaps = [snaps[symbol], *(r for r in resyncs if r["symbol"] == symbol)]
        assert len(book_snaps) == 2  # the start's resync, no gap after it

        online = frame_of([r for r in rows if r["symbol"] == symbol])
        # The offline form on the records the streamer stamped: equal, bit for bit.
        on_streamed = compute_features(
            symbol,
            SymbolInputs(got[TRADE], got[BBA], book_snaps, got[DEPTH_DELTA]),
            rng,
        ).frame
        assert_parity(on_streamed, online)
        # The offline form on the capture itself, shifted.
        res = compute_features(
            symbol,
            SymbolInputs(want[TRADE], want[BBA], book_snaps, want[DEPTH_DELTA]),
            rng,
        )
        offline = res.frame
        assert res.book is not None and res.book.gaps == 0 and len(res.book.bridges) == 1
        assert len(offline) == (end - start) // 1000
        # Every column equal, the BBA columns included: except where a bookTicker sent in the
        # last milliseconds before a grid step was stamped after it (its transit time); there
        # the BBA columns are those of what the streamer received (checked above).
        grid = offline["ts"].to_numpy()
        moved = last_bba_before(want[BBA], grid) != last_bba_before(got[BBA], grid)
        print(f"{symbol}: {int(moved.sum())} of {len(grid)} rows got their BBA across a step")
        expected = offline.copy()
        for col, cells in bba_cells(moved).items():
            expected.loc[cells, col] = on_streamed.loc[cells, col]
        assert_parity(expected, online)
        live = offline[offline.ts > start + 3000]  # after the book bridged the snapshot
        assert live["depth_imbalance_10"].notna().all() and live["mid"].notna().all()
        assert live["vwap"].notna().sum() > 60 and live["ret_60s"].notna().any()


def _check_records(
    symbol: str,
    want: dict[str, list[dict[str, Any]]],
    got: dict[str, list[dict[str, Any]]],
    grid: tuple[int, int],
    played: tuple[int, int],
) -> None:
    """Trades and diffs on Kinesis are the capture's with shifted times, field for field, over
    the grid; the BBAs are every bookTicker of the slice played, with the capture's values,
    stamped no earlier than their shifted receive time."""

    def inside(recs: list[dict[str, Any]], lo: int, hi: int) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "ingest_ts"} for r in recs
                if lo <= r["event_ts"] < hi]  # fmt: skip

    for data_type in (TRADE, DEPTH_DELTA):
        assert inside(got[data_type], *grid) == inside(want[data_type], *grid), data_type
    recorded = {b["update_id"]: b for b in inside(want[BBA], *played)}
    assert sorted(b["update_id"] for b in got[BBA]) == sorted(recorded)
    values = ("bid_px", "bid_sz", "ask_px", "ask_sz")
    for b in got[BBA]:
        assert [b[k] for k in values] == [recorded[b["update_id"]][k] for k in values]
    lags = np.array([b["event_ts"] - recorded[b["update_id"]]["event_ts"] for b in got[BBA]])
    assert lags.min() >= 0, "a bookTicker left before its shifted receive time"
    p50, p99 = np.percentile(lags, [50, 99])
    print(f"{symbol}: BBA stamp - shifted receive time: p50 {p50} ms, p99 {p99} ms")


def test_gap_fill_and_restart_fill_during_a_replay_fetch_the_replayed_trades(
    sim_factory: Any, stream_settings: Settings, tmp_path: Path
) -> None:
    """Trades missed on a dropped connection, and those after the last one received when the
    streamer stops on a replaced connection (filled by the next streamer, from the
    checkpoint), come from REST: in a replay, the capture's."""
    midnight = utc(2024, 8, 9)
    sim = sim_factory(
        replay_path=str(CAPTURES),
        replay_from_ms=midnight - 5_000,
        replay_until_ms=midnight + 40_000,
    )
    settings = with_sim(stream_settings, sim)
    streamer = Streamer(settings, make_config(tmp_path / "first"))
    run = Running(streamer)
    run.wait_for(lambda: streamer.messages_in["trade"] > 50, what="trades")

    def position() -> int:
        return sim_get(sim, "/_sim/replay/status")["position_ms"]

    # A connection that stops delivering, then drops: the trades held on it are lost; those
    # on the next connection show the hole, and it is fetched.
    ids = sim_get(sim, "/_sim/ws/stats")["connection_ids"]
    sim_post(sim, "/_sim/ws/stall", {"ids": ids, "seconds": 120})
    held_from = position()
    run.wait_for(lambda: position() > held_from + 1_000, what="a replayed second")
    sim_post(sim, "/_sim/ws/drop", {"ids": ids})
    run.wait_for(
        lambda: (
            streamer.counts["trades_backfilled"] > 0
            and not any(st.fill for st in streamer._trades.values())
        ),
        timeout=20,
        what="the gap filled",
    )
    # Nothing reaches the streamer any more, its connection is replaced, and it stops before
    # the new one delivers a trade: the next streamer asks REST for the trades after the last
    # one on Kinesis (its checkpoint).
    sim_post(sim, "/_sim/ws/stall", {"seconds": 120})
    sim_post(sim, "/_sim/ws/drop")
    stalled_at = position()
    run.wait_for(lambda: position() > stalled_at + 3_000, what="three replayed seconds")
    final = run.stop()
    gap_filled = final["trades_backfilled"]
    assert final["trade_ids_unfilled"] == 0
    successor = Streamer(settings, make_config(tmp_path / "second", resume_wait_s=0.5))
    run = Running(successor)
    run.wait_for(
        lambda: (
            len(successor.fills) >= len(SYMBOLS)
            and not any(st.fill for st in successor._trades.values())
        ),
        timeout=30,
        what="the successor's start fills",
    )
    after = run.stop()
    offset = sim_get(sim, "/_sim/replay/status")["offset_ms"]
    assert after["trade_ids_unfilled"] == 0 and successor.epoch == 2

    trades = read_stream(settings, settings.kinesis_trade_stream)
    gap_fills = 0
    for symbol in SYMBOLS:
        want = {r["trade_id"]: r for r in shifted_capture(symbol, offset)[TRADE]}
        mine = {r["trade_id"]: r for r in trades if r["symbol"] == symbol}
        fields = ("symbol", "trade_id", "event_ts", "price", "qty", "is_buyer_maker")
        for tid, rec in mine.items():
            assert {k: rec[k] for k in fields} == {k: want[tid][k] for k in fields}, tid
        ids = sorted(mine)
        assert ids == list(range(ids[0], ids[-1] + 1)), f"{symbol}: a hole in the trade ids"
        # The first streamer's live trades (epoch 1) end where it stopped; the successor's
        # fill starts after them.
        streamed = max(t for t, r in mine.items() if r["source"] != "rest" and r["epoch"] == 1)
        fetched = [t for t, r in mine.items() if r["source"] == "rest"]
        gap_fills += sum(1 for t in fetched if t < streamed)
        tail = [t for t in fetched if t > streamed and mine[t]["epoch"] == 2]
        assert tail, f"{symbol}: nothing recovered after the first streamer's last trade"
        # The REST answer itself: the capture's trades, same ids, shifted times.
        page = sim_get(sim, "/api/v3/historicalTrades", symbol=symbol, fromId=tail[0], limit=5)
        assert [(r["id"], r["time"], float(r["price"]), float(r["qty"])) for r in page] == [
            (t, want[t]["event_ts"], want[t]["price"], want[t]["qty"])
            for t in range(tail[0], tail[0] + 5)
        ]
    assert gap_fills > 0 and gap_filled > 0 and after["trades_backfilled"] > 0
