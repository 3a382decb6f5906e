"""deploy/: the IAM policy is least-privilege and covers what the code calls; the instance
config validates; shard sizing from the real captures."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys
from types import ModuleType
from typing import Any

import pytest
import yaml

from ingest_pipeline.settings import load_settings
from ingest_pipeline.streaming import StreamerConfig
from ingest_pipeline_tests.dagster_harness import ROOT
from ingest_pipeline_tests.paths import CAPTURES

DEPLOY = ROOT / "deploy"
POLICY = DEPLOY / "iam-policy.json"

# Every action the policy may grant: the calls the pipeline makes, nothing broader.
KNOWN_ACTIONS = {
    "s3:GetObject",
    "s3:PutObject",
    "s3:ListBucket",
    "kinesis:PutRecords",
    "kinesis:DescribeStreamSummary",
    "kinesis:ListShards",
    "kinesis:GetShardIterator",
    "kinesis:GetRecords",
}
# boto3 method the code calls -> IAM action it needs (HEAD is authorized as GetObject).
BOTO3_ACTIONS = {
    "get_object": "s3:GetObject",
    "head_object": "s3:GetObject",
    "put_object": "s3:PutObject",
    "list_objects_v2": "s3:ListBucket",
    "delete_object": "s3:DeleteObject",
    "copy_object": "s3:PutObject",
    "put_records": "kinesis:PutRecords",
    "put_record": "kinesis:PutRecord",
    "describe_stream_summary": "kinesis:DescribeStreamSummary",
    "describe_stream": "kinesis:DescribeStream",
    "list_shards": "kinesis:ListShards",
    "get_shard_iterator": "kinesis:GetShardIterator",
    "get_records": "kinesis:GetRecords",
}
# Code that talks to the embedded emulator only, never to AWS under this policy.
EMULATOR_ONLY = {"localstack.py", "simulator"}
ACCOUNT = r"(?:\d{12}|ACCOUNT_ID)"


@pytest.fixture(scope="module")
def policy() -> dict[str, Any]:
    return json.loads(POLICY.read_text())


@pytest.fixture(scope="module")
def prod() -> Any:
    return load_settings("prod", environ={})


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def granted(policy: dict[str, Any]) -> dict[str, set[str]]:
    """action -> resources it is granted on."""
    out: dict[str, set[str]] = {}
    for st in policy["Statement"]:
        for action in as_list(st["Action"]):
            out.setdefault(action, set()).update(as_list(st["Resource"]))
    return out


def test_policy_shape_is_least_privilege(policy: dict[str, Any]) -> None:
    assert policy["Version"] == "2012-10-17"
    sids = [st["Sid"] for st in policy["Statement"]]
    assert len(sids) == len(set(sids))
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow", st["Sid"]
        # Only positive, explicit lists: no NotAction/NotResource, no principal (identity policy).
        assert set(st) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, st["Sid"]
        for action in as_list(st["Action"]):
            assert "*" not in action and "?" not in action, (st["Sid"], action)
            assert action in KNOWN_ACTIONS, (st["Sid"], action)
        for resource in as_list(st["Resource"]):
            assert resource != "*" and resource.startswith("arn:aws:"), (st["Sid"], resource)


def test_policy_resources_are_the_prod_prefixes_and_streams(
    policy: dict[str, Any], prod: Any
) -> None:
    # The data prefixes, and the streamer's state (lease, checkpoint, gap records).
    prefixes = {prod.bronze_prefix, prod.silver_prefix, prod.deadletter_prefix,
                StreamerConfig().state_prefix}  # fmt: skip
    streams = {prod.kinesis_trade_stream, prod.kinesis_bba_stream, prod.kinesis_depth_stream}
    bucket_arn = f"arn:aws:s3:::{prod.bucket}"
    object_arns = {f"{bucket_arn}/{p}/*" for p in prefixes}
    stream_arn = re.compile(rf"^arn:aws:kinesis:{prod.region}:{ACCOUNT}:stream/([A-Za-z0-9_.-]+)$")
    actions = granted(policy)

    # Objects: read-write under those prefixes, nowhere else in the bucket.
    assert actions["s3:GetObject"] == object_arns
    assert actions["s3:PutObject"] == object_arns
    # Listing: the bucket, only with a prefix under one of them.
    assert actions["s3:ListBucket"] == {bucket_arn}
    [listing] = [st for st in policy["Statement"] if "s3:ListBucket" in as_list(st["Action"])]
    assert as_list(listing["Action"]) == ["s3:ListBucket"]
    allowed = set(listing["Condition"]["StringLike"]["s3:prefix"])
    assert allowed == {f"{p}/*" for p in prefixes}
    assert listing["Condition"].keys() == {"StringLike"}

    # Kinesis: the three streams of the region, producer and archive-reader actions.
    for action in KNOWN_ACTIONS - {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}:
        names = set()
        for arn in actions[action]:
            match = stream_arn.match(arn)
            assert match, (action, arn)
            names.add(match.group(1))
        assert names == streams, action


def boto3_calls_in_package() -> dict[str, set[str]]:
    """boto3 method -> files of ingest_pipeline/ that call it (``.method(``)."""
    pattern = re.compile(r"\.(" + "|".join(BOTO3_ACTIONS) + r")\(")
    out: dict[str, set[str]] = {}
    for path in (ROOT / "ingest_pipeline").rglob("*.py"):
        rel = path.relative_to(ROOT / "ingest_pipeline")
        if rel.parts[0] in EMULATOR_ONLY:
            continue
        for match in pattern.finditer(path.read_text()):
            out.setdefault(match.group(1), set()).add(str(rel))
    return out


def test_policy_grants_every_aws_call_the_code_makes(policy: dict[str, Any]) -> None:
    calls = boto3_calls_in_package()
    assert {"put_object", "get_object", "put_records", "get_records"} <= calls.keys(), calls
    actions = granted(policy)
    missing = {m: files for m, files in calls.items() if BOTO3_ACTIONS[m] not in actions}
    assert not missing, f"the code calls these, deploy/iam-policy.json does not grant: {missing}"


def test_deploy_instance_yaml_shape() -> None:
    """What docs/deployment.md promises; loading it for real is in test_postgres_backfill."""
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    db = config["storage"]["postgres"]["postgres_db"]
    for field in ("hostname", "port", "db_name", "username", "password"):
        assert set(db[field]) == {"env"}, field  # from the environment, never inline
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "dagster/backfill", "limit": 4} in limits
    assert config["run_launcher"]["class"] == "EcsRunLauncher"
    assert config["run_launcher"]["module"] == "dagster_aws.ecs"


@functools.cache
def load_sizing() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shard_sizing", DEPLOY / "shard_sizing.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["shard_sizing"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_shards_needed_takes_the_binding_limit() -> None:
    sizing = load_sizing()
    assert sizing.shards_needed(0, 0) == 1
    assert sizing.shards_needed(1000, 0, utilization=1.0) == 1
    assert sizing.shards_needed(1001, 0, utilization=1.0) == 2
    assert sizing.shards_needed(10, 3 * 1024 * 1024, utilization=1.0) == 3
    assert sizing.shards_needed(900, 0, utilization=0.5) == 2
    with pytest.raises(ValueError):
        sizing.shards_needed(1, 1, utilization=0)


def test_shard_sizing_from_the_real_captures() -> None:
    sizing = load_sizing()
    files = sizing.capture_files(CAPTURES)
    assert len(files) == 4
    rates = sizing.measure(files)
    assert set(rates) == {"trade", "bba", "depth_delta"}
    for rate in rates.values():
        assert rate.symbols == 2 and rate.records > 1000
        assert rate.peak_records_per_s >= rate.p99_records_per_s >= 0
        assert rate.peak_records_per_s >= rate.mean_records_per_s
    # Depth diffs are large and at most 10/s per symbol (@depth@100ms); trades and BBAs are
    # small, so the 1,000 records/s limit binds them, not the 1 MiB/s one.
    depth = rates["depth_delta"]
    assert depth.bytes_per_record > 5 * rates["trade"].bytes_per_record
    assert depth.peak_records_per_s <= 2 * 10 + 2
    for t in ("trade", "bba"):
        r = rates[t]
        assert r.peak_records_per_s / 1000 > r.peak_bytes_per_s / (1024 * 1024), t
        assert r.shards() >= 1
    # The table in docs/deployment.md is this script's output on these captures.
    doc = (ROOT / "docs" / "deployment.md").read_text()
    assert sizing.table(rates) in doc
