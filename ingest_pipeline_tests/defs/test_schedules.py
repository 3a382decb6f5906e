from datetime import UTC, datetime

import dagster as dg

from ingest_pipeline.definitions import defs


def tick(name: str, at: datetime) -> list[str]:
    schedule = defs.resolve_schedule_def(name)
    result = schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=at))
    return [r.partition_key for r in result.run_requests]


def test_history_schedule_takes_the_hour_just_closed() -> None:
    at = datetime(2026, 11, 25, 18, 5, tzinfo=UTC)
    assert defs.resolve_schedule_def("bronze_history_hourly_schedule").cron_schedule == "5 * * * *"
    assert tick("bronze_history_hourly_schedule", at) == ["2026-11-25-17:00"]


def test_snapshot_schedule_takes_the_hour_in_progress() -> None:
    at = datetime(2026, 11, 25, 18, 5, tzinfo=UTC)
    assert tick("depth_snapshot_hourly_schedule", at) == ["2026-11-25-18:00"]


def test_jobs_split_history_from_live_book() -> None:
    history = defs.resolve_job_def("bronze_history_hourly").asset_layer.selected_asset_keys
    snapshots = defs.resolve_job_def("depth_snapshot_hourly").asset_layer.selected_asset_keys
    symbols = defs.resolve_asset_graph().get_all_asset_keys()
    assert {k.path[-1] for k in history} == {"agg_trades", "trades", "klines_1m"}
    assert {k.path[-1] for k in snapshots} == {"depth_snapshot"}
    archive = defs.resolve_job_def("bronze_archive_hourly").asset_layer.selected_asset_keys
    assert {k.path[-1] for k in archive} == {"trade", "bba", "depth_delta"}
    assert history | snapshots | archive == {k for k in symbols if k.path[0] == "bronze"}
