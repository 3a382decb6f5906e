"""Archive assets through Dagster (moto Kinesis + S3): the hour lands in bronze with its checks;
an hour still open (plus grace) is skipped; an hour beyond retention fails clearly."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import dagster as dg
import orjson
import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.defs.archive import ARCHIVE_KINDS, KinesisResource, build_archive_asset
from ingest_pipeline.defs.bronze import bronze_key
from ingest_pipeline.defs.resources import build_resources
from ingest_pipeline.records import BBA, DEPTH_DELTA, DEPTH_SNAPSHOT, TRADE
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.streaming import StreamerConfig
from ingest_pipeline.streaming.continuity import GapStore
from ingest_pipeline.timeutil import HOUR_MS, floor_hour, from_ms, now_ms

SYMBOL = "BTCUSDT"


@pytest.fixture
def archive_settings(aws_settings: Settings) -> Settings:
    tag = uuid.uuid4().hex[:8]
    s = dataclasses.replace(
        aws_settings,
        kinesis_trade_stream=f"trade-{tag}",
        kinesis_bba_stream=f"bba-{tag}",
        kinesis_depth_stream=f"depth-{tag}",
        symbols=(SYMBOL,),
    )
    kinesis = aws_client("kinesis", s)
    for name in s.kinesis_streams:
        kinesis.create_stream(StreamName=name, ShardCount=1)
    for name in s.kinesis_streams:
        kinesis.get_waiter("stream_exists").wait(
            StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50}
        )
    return s


def put(settings: Settings, stream: str, records: list[dict[str, Any]]) -> None:
    resp = aws_client("kinesis", settings).put_records(
        StreamName=stream,
        Records=[{"Data": orjson.dumps(r), "PartitionKey": r["symbol"]} for r in records],
    )
    assert resp["FailedRecordCount"] == 0


def base(ts: int) -> dict[str, Any]:
    return {"symbol": SYMBOL, "event_ts": ts, "ingest_ts": ts + 3, "source": "sbe"}


def materialize(
    settings: Settings, data_type: str, hour: int, grace_s: float
) -> dg.ExecuteInJobResult:
    asset = build_archive_asset(SYMBOL, ARCHIVE_KINDS[data_type], settings)
    resources = {
        "bronze": build_resources(settings)["bronze"],
        "kinesis": KinesisResource(
            region_name=settings.region,
            endpoint_url=settings.aws_endpoint_url,
            grace_seconds=grace_s,
        ),
    }
    with dg.DagsterInstance.ephemeral() as instance:
        return dg.materialize(
            [asset],
            resources=resources,
            partition_key=f"{from_ms(hour):%Y-%m-%d-%H:%M}",
            instance=instance,
            raise_on_error=False,
        )


def checks_of(result: dg.ExecuteInJobResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_closed_hour_lands_with_checks(archive_settings: Settings) -> None:
    s = archive_settings
    hour = floor_hour(now_ms()) - HOUR_MS
    t = hour + 1000
    trades = [{**base(t + i), "trade_id": i, "price": 1.0, "qty": 1.0, "is_buyer_maker": True}
              for i in (1, 2, 3, 7, 8, 12)]  # fmt: skip
    put(s, s.kinesis_trade_stream, trades + trades[:2])  # redelivered: dropped
    bbas = [{**base(t + i), "update_id": u, "bid_px": 1.0, "bid_sz": 1.0, "ask_px": 2.0,
             "ask_sz": 1.0} for i, u in enumerate((10, 11, 15, 14))]  # fmt: skip
    put(s, s.kinesis_bba_stream, bbas)
    chain = [(1, 5), (6, 9), (12, 20), (21, 22), (30, 31)]
    depth = [{**base(t + i), "first_update_id": a, "final_update_id": b, "bids": [], "asks": []}
             for i, (a, b) in enumerate(chain)]  # fmt: skip
    depth[2]["gap"] = True
    put(s, s.kinesis_depth_stream, depth)
    # The grace ends just after these arrivals: the hour is "closed" now, the records are in.
    time.sleep(0.3)
    grace = (now_ms() - (hour + HOUR_MS)) / 1000 - 0.1

    result = materialize(s, TRADE, hour, grace)
    # The hour is written; the blocking gap check then fails the step (downstream must wait),
    # in one line naming the hour and the check.
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert error.cls_name == "Failure"
    assert (
        f"bronze/{SYMBOL}/trade: 1 blocking check(s) failed, downstream assets of this run do "
        f"not run: {from_ms(hour):%Y-%m-%d %H}h ids_contiguous (2 gap(s)" in error.message
    )
    meta = result.asset_materializations_for_node(f"bronze__{SYMBOL}__trade")[0].metadata
    assert meta["dagster/row_count"].value == 6 and meta["write_action"].value == "created"
    assert meta["kinesis_duplicates"].value == 2
    assert meta["first_trade_id"].value == 1 and meta["last_trade_id"].value == 12
    ids = checks_of(result)["ids_contiguous"]
    assert not ids.passed and ids.partition == f"{from_ms(hour):%Y-%m-%d-%H:%M}"
    assert ids.metadata["details"].value["gaps"] == ["4..6", "9..11"]
    assert ids.metadata["gaps"].value == 2 and ids.metadata["missing_ids"].value == 6
    store = BronzeStore(aws_client("s3", s), s.bucket, s.bronze_prefix)
    assert [r["trade_id"] for r in store.read_hour(SYMBOL, TRADE, hour)] == [1, 2, 3, 7, 8, 12]

    result = materialize(s, BBA, hour, grace)
    bba = checks_of(result)["update_ids_increasing"]
    assert not bba.passed and "15 -> 14" in str(bba.metadata["details"].value)
    assert bba.metadata["not_increasing"].value == 1

    result = materialize(s, DEPTH_DELTA, hour, grace)
    chain_check = checks_of(result)["depth_chain"]
    assert not chain_check.passed and chain_check.metadata["missing_update_ids"].value == 9
    failure = chain_check.metadata["details"].value
    assert failure["break_list"] == [
        "u=9 -> U=12 (2 update ids missing)",
        "u=22 -> U=30 (7 update ids missing)",
    ]
    assert failure["marked_gap"] == 1
    assert len(store.read_hour(SYMBOL, DEPTH_DELTA, hour)) == 5


def test_recorded_streamer_gaps_leave_the_trade_hour_uncovered_not_failed(
    archive_settings: Settings,
) -> None:
    s = archive_settings
    hour = floor_hour(now_ms()) - HOUR_MS
    t = hour + 10_000
    trades = [{**base(t + i * 1000), "trade_id": i, "price": 1.0, "qty": 1.0,
               "is_buyer_maker": True} for i in (1, 2, 3, 7, 8, 12, 13)]  # fmt: skip
    put(s, s.kinesis_trade_stream, trades)
    # The streamer recorded 4..6 as a gap (a downtime longer than its fill maximum), between
    # the times of trades 3 and 7; 9..11 it did not record: a hole nobody explains.
    gaps = GapStore(aws_client("s3", s), s.bucket, StreamerConfig().state_prefix)
    gaps.write(SYMBOL, 4, 6, from_ts=t + 3000, to_ts=t + 7000, reason="test")
    time.sleep(0.3)
    grace = (now_ms() - (hour + HOUR_MS)) / 1000 - 0.1

    result = materialize(s, TRADE, hour, grace)
    ids = checks_of(result)["ids_contiguous"]
    assert not ids.passed and ids.metadata["details"].value["gaps"] == ["4..6", "9..11"]
    store = BronzeStore(aws_client("s3", s), s.bucket, s.bronze_prefix)
    # The object's coverage leaves out the recorded gap's time, both ends included.
    assert store.coverage(SYMBOL, TRADE, hour) == ((hour, t + 3000), (t + 7001, hour + HOUR_MS))

    # Once the streamer's record explains every hole, the hour passes (silver treats the
    # uncovered span as unknown).
    gaps.write(SYMBOL, 9, 11, from_ts=t + 8000, to_ts=t + 12000, reason="test")
    result = materialize(s, TRADE, hour, grace)
    ids = checks_of(result)["ids_contiguous"]
    assert ids.passed and "recorded streamer gaps" in ids.description
    assert ids.metadata["gaps"].value == 2 and ids.metadata["missing_ids"].value == 6
    assert store.coverage(SYMBOL, TRADE, hour) == (
        (hour, t + 3000),
        (t + 7001, t + 8000),
        (t + 12001, hour + HOUR_MS),
    )


def test_stream_depth_snapshots_join_the_hours_captures(archive_settings: Settings) -> None:
    s = archive_settings
    hour = floor_hour(now_ms()) - HOUR_MS
    t = hour + 1000
    store = BronzeStore(aws_client("s3", s), s.bucket, s.bronze_prefix)
    book = {"bids": [["10.0", "1.0"]], "asks": [["11.0", "2.0"]], "source": "rest"}
    # The hourly REST capture of that hour, already in bronze.
    rest = {"symbol": SYMBOL, "timestamp": t, "ingest_ts": t + 5, "last_update_id": 3, **book}
    store.write_hour(SYMBOL, DEPTH_SNAPSHOT, hour, [rest])
    # On the stream: diffs, and the streamer's resync snapshots (with its lease epoch).
    chain = [(1, 5), (6, 9), (14, 20), (21, 22)]
    depth: list[dict[str, Any]] = [
        {**base(t + i), "first_update_id": a, "final_update_id": b, "bids": [], "asks": [],
         "epoch": 4} for i, (a, b) in enumerate(chain)
    ]  # fmt: skip
    depth[2]["gap"] = True
    snap = {"symbol": SYMBOL, "timestamp": t + 3, "ingest_ts": t + 4, "last_update_id": 15,
            **book, "epoch": 4}  # fmt: skip
    snap_next_hour = {**snap, "timestamp": hour + HOUR_MS + 5, "last_update_id": 99}
    put(s, s.kinesis_depth_stream, [*depth[:3], snap, depth[3], snap_next_hour])
    time.sleep(0.3)
    grace = (now_ms() - (hour + HOUR_MS)) / 1000 - 0.1

    result = materialize(s, DEPTH_DELTA, hour, grace)
    meta = result.asset_materializations_for_node(f"bronze__{SYMBOL}__depth_delta")[0].metadata
    diffs = store.read_hour(SYMBOL, DEPTH_DELTA, hour)
    assert [d["final_update_id"] for d in diffs] == [5, 9, 20, 22]
    assert not any("epoch" in d for d in diffs)
    snaps = store.read_hour(SYMBOL, DEPTH_SNAPSHOT, hour)
    assert [x["last_update_id"] for x in snaps] == [3, 15]  # the capture, then the resync
    assert snaps[0] == rest and "epoch" not in snaps[1] and snaps[1]["timestamp"] == t + 3
    assert meta["stream_depth_snapshots"].value == 1
    assert meta["depth_snapshot_records"].value == 2
    assert meta["depth_snapshot_write_action"].value == "replaced"
    # The snapshot of the next hour is that hour's business.
    assert store.head(SYMBOL, DEPTH_SNAPSHOT, hour + HOUR_MS) is None
    # A re-run finds the same records: both objects stay untouched.
    again = materialize(s, DEPTH_DELTA, hour, grace)
    meta = again.asset_materializations_for_node(f"bronze__{SYMBOL}__depth_delta")[0].metadata
    assert meta["depth_snapshot_write_action"].value == "unchanged"


def test_open_hour_is_skipped_and_old_hour_fails(archive_settings: Settings) -> None:
    s = archive_settings
    hour = floor_hour(now_ms()) - HOUR_MS
    skipped = materialize(s, TRADE, hour, grace_s=2 * 3600)
    assert skipped.success
    assert not skipped.asset_materializations_for_node(f"bronze__{SYMBOL}__trade")
    assert not skipped.get_asset_check_evaluations()
    store = BronzeStore(aws_client("s3", s), s.bucket, s.bronze_prefix)
    assert store.head(SYMBOL, TRADE, hour) is None

    old = materialize(s, TRADE, hour - 30 * HOUR_MS, grace_s=60)
    assert not old.success
    failure = old.get_step_failure_events()[0].step_failure_data.error
    assert "keeps records 24 h (RetentionPeriodHours)" in failure.message
    assert bronze_key(SYMBOL, TRADE) == dg.AssetKey(["bronze", SYMBOL, TRADE])


def test_archive_assets_keys_kinds_and_schedule() -> None:
    from datetime import UTC, datetime

    from ingest_pipeline.definitions import defs, settings

    job = defs.resolve_job_def("bronze_archive_hourly")
    keys = job.asset_layer.selected_asset_keys
    assert keys == {bronze_key(s, t) for s in settings.symbols for t in (TRADE, BBA, DEPTH_DELTA)}
    graph = defs.resolve_asset_graph()
    for key in keys:
        node = graph.get(key)
        assert node.group_name == f"bronze/{key.path[1]}" and node.kinds == {"s3", "kinesis"}
        assert node.tags["layer"] == "bronze" and node.tags["data_type"] == key.path[-1]
    schedule = defs.resolve_schedule_def("bronze_archive_hourly_schedule")
    at = datetime(2026, 11, 25, 18, 5, tzinfo=UTC)
    tick = schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=at))
    assert [r.partition_key for r in tick.run_requests] == ["2026-11-25-17:00"]
    # The grace has passed when the schedule fires.
    assert settings.archive_grace_seconds < 5 * 60
