"""The production instance config (deploy/dagster.yaml) on a real PostgreSQL: a concurrent
backfill through ``dagster dev`` (webserver + daemon), runs 4 at a time.

PostgreSQL: a throwaway cluster started here (initdb/pg_ctl from Debian's ``postgresql``
package, which `.ci/run` installs), not a system server. Only the ECS run launcher is left out:
runs are subprocesses here; everything else (storage, queue, tag limits, pools, monitoring) is
the file as deployed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ingest_pipeline.aws import aws_client
from ingest_pipeline.records import AGG_TRADES
from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.timeutil import HOUR_MS, from_ms, parse_hour
from ingest_pipeline_tests.dagster_harness import QUICK_BACKFILL_S, ROOT, DagsterDev
from ingest_pipeline_tests.deploy.postgres import ThrowawayPostgres, pg_bin
from ingest_pipeline_tests.deploy.tools import require

DEPLOY_YAML = ROOT / "deploy" / "dagster.yaml"
SYMBOLS = ("SYM0001USDT",)
FIRST_HOUR = "2024-08-20-00:00"
HOURS = 96  # BackfillPolicy.multi_run(24): 4 runs of 24 hours, all 4 at once
BACKFILL_LIMIT = 4
# What a storage problem looks like in a log: driver and ORM errors, lost connections.
STORAGE_ERRORS = re.compile(
    r"psycopg2|sqlalchemy\.exc|OperationalError|IntegrityError|DeadlockDetected|"
    r"deadlock detected|could not serialize|too many clients|connection .* closed",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    bindir = pg_bin()
    require(
        bindir is not None,
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or "
        "$PG_BIN: `apt-get install postgresql` to run the Postgres-backed deployment tests",
    )
    assert bindir is not None
    with ThrowawayPostgres(bindir) as pg:
        yield pg


def test_instance_yaml_of_deploy_loads_on_postgres(
    postgres: ThrowawayPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/dagster.yaml as shipped, ECS launcher included, builds an instance: every class
    validates its config, the storage migrates a fresh database."""
    for key, value in {
        **postgres.env,
        "DAGSTER_ECS_CLUSTER": "ingest-pipeline",
        "DAGSTER_PG_PASSWORD_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:111122223333:"
        "secret:dagster-pg-AbCdEf",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "dagster.yaml").write_text(DEPLOY_YAML.read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        from dagster_aws.ecs import EcsRunLauncher
        from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

        assert isinstance(instance.run_launcher, EcsRunLauncher)
        assert instance.run_launcher.secrets == [
            {"name": "DAGSTER_PG_PASSWORD", "valueFrom": postgres_secret_arn()}
        ]
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert {"key": "dagster/backfill", "limit": BACKFILL_LIMIT} in limits
        assert instance.get_runs() == []


def postgres_secret_arn() -> str:
    return "arn:aws:secretsmanager:eu-west-1:111122223333:secret:dagster-pg-AbCdEf"


def local_instance_yaml() -> str:
    """deploy/dagster.yaml without the ECS run launcher (runs are local subprocesses), and with
    the binance pool at the backfill limit. As deployed (2 slots, no run buffer) the queue holds
    a run back while its steps would wait for a pool slot, so only 2 runs of one step each would
    ever be in progress; here the simulator has no weight budget to protect and the point is
    4 runs writing to PostgreSQL at once."""
    config = yaml.safe_load(DEPLOY_YAML.read_text())
    del config["run_launcher"]
    config["concurrency"]["pools"]["default_limit"] = BACKFILL_LIMIT
    return yaml.safe_dump(config, sort_keys=False)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_concurrent_backfill_on_postgres(
    aws: EmbeddedAWS, postgres: ThrowawayPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hours = [parse_hour(FIRST_HOUR) + i * HOUR_MS for i in range(HOURS)]
    partitions = [f"{from_ms(h):%Y-%m-%d-%H:%M}" for h in hours]
    paths = [["bronze", s, AGG_TRADES] for s in SYMBOLS]
    home = tmp_path / "home"
    with SimulatorServer(SimulatorConfig(extra_symbols=2)) as sim:
        env = {
            **postgres.env,
            "AWS_ENDPOINT_URL": aws.endpoint_url,
            "BINANCE_REST_URL": sim.url,
            "INGEST_SYMBOLS": ",".join(SYMBOLS),
        }
        with DagsterDev(
            home, env, local_instance_yaml(), backfill_interval_s=QUICK_BACKFILL_S
        ) as dagster:
            dagster.stop_silver()
            backfill_id = dagster.launch_backfill(paths, partitions)
            status = dagster.wait_backfill(backfill_id, timeout_s=240)
            log = dagster.log_tail(200_000)
        assert status == "COMPLETED_SUCCESS", log[-4000:]

    for key, value in postgres.env.items():
        monkeypatch.setenv(key, value)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert len(runs) >= BACKFILL_LIMIT
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
        # In progress as the queue counts it: from launch (STARTING) to the end.
        stats = [instance.get_run_stats(r.run_id) for r in runs]
        spans = [(s.launch_time, s.end_time) for s in stats]
        assert max_overlap(spans) == BACKFILL_LIMIT, spans

        for run in runs:
            for record in instance.all_logs(run.run_id):
                event = record.dagster_event
                text = record.user_message + (
                    str(event.event_specific_data) if event is not None else ""
                )
                assert not STORAGE_ERRORS.search(text), (run.run_id, text[:2000])
                if event is not None:
                    assert not event.is_failure, (run.run_id, text[:2000])

        for path in paths:
            key = dg.AssetKey(path)
            assert instance.get_materialized_partitions(key) == set(partitions), path
            records = instance.fetch_materializations(key, limit=1000).records
            assert sorted(r.partition_key for r in records) == sorted(partitions), path
    assert not STORAGE_ERRORS.search(log), STORAGE_ERRORS.search(log)

    settings = aws.settings
    store = BronzeStore(aws_client("s3", settings), settings.bucket, settings.bronze_prefix)
    for symbol in SYMBOLS:
        for hour in hours:
            head = store.head(symbol, AGG_TRADES, hour)
            assert head is not None, (symbol, from_ms(hour))
