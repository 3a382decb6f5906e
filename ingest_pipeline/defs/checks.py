"""Asset checks shared by the bronze and archive factories: one result per hour partition.

A check is a pure rule from ``ingest_pipeline.quality`` applied to what a run landed for one
hour. A one-hour run yields the hour's result; a ranged run (backfill policy) logs one
evaluation per hour and yields one overall result, which is what ``blocking`` acts on.
"""

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from ingest_pipeline import quality
from ingest_pipeline.timeutil import from_ms

warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*")


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    # Applied to what the asset landed for one hour (the asset factory decides the type).
    rule: Callable[[Any], quality.Verdict]
    # Blocking: a failure stops downstream assets of the same run from consuming the hour.
    blocking: bool = False
    # WARN: a failure is worth a look, not an error (e.g. an hour with incomplete rows).
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR


def check_specs(
    asset_key: dg.AssetKey, checks: Sequence[Check], partitions_def: dg.PartitionsDefinition
) -> list[dg.AssetCheckSpec]:
    # Partitioned checks: the UI shows a result per hour, not one per run.
    return [
        dg.AssetCheckSpec(
            c.name,
            asset=asset_key,
            description=c.description
            + (" (warning)" if c.severity == dg.AssetCheckSeverity.WARN else ""),
            blocking=c.blocking,
            partitions_def=partitions_def,
        )
        for c in checks
    ]


def verdict_metadata(v: quality.Verdict) -> dict[str, Any]:
    meta: dict[str, Any] = {"summary": dg.MetadataValue.text(v.summary)}
    if v.details:
        meta["details"] = dg.MetadataValue.json(v.details)
    for name, value in v.numbers.items():
        meta[name] = dg.MetadataValue.float(float(value))
    return meta


def hour_partition_key(hour_ms: int) -> str:
    return f"{from_ms(hour_ms):%Y-%m-%d-%H:%M}"


def check_results(
    context: dg.AssetExecutionContext,
    asset_key: dg.AssetKey,
    checks: Sequence[Check],
    verdicts: dict[str, list[tuple[int, quality.Verdict]]],
) -> list[dg.AssetCheckResult]:
    """Check results of a run: per hour, plus the run's overall result.

    A one-hour run yields the hour's result (Dagster files it under the run's partition). An
    AssetCheckResult carries no partition, so a ranged run logs each hour's evaluation itself,
    then yields one overall result, which is what blocking acts on.
    """
    results = []
    for check in checks:
        hours = verdicts[check.name]
        if len(hours) > 1:
            for hour, v in hours:
                context.log_event(
                    dg.AssetCheckEvaluation(
                        asset_key=asset_key,
                        check_name=check.name,
                        passed=v.passed,
                        metadata=verdict_metadata(v),
                        severity=check.severity,
                        description=v.summary,
                        blocking=check.blocking,
                        partition=hour_partition_key(hour),
                    )
                )
        results.append(overall_result(check, hours))
    return results


def overall_result(
    check: Check,
    verdicts: list[tuple[int, quality.Verdict]],
    asset_key: dg.AssetKey | None = None,
) -> dg.AssetCheckResult:
    """One result for the run (``asset_key``: needed when the step has several assets)."""
    failed = [(h, v) for h, v in verdicts if not v.passed]
    if len(verdicts) == 1:
        summary = verdicts[0][1].summary
    elif failed:
        summary = f"{len(failed)} of {len(verdicts)} hours fail"
    else:
        summary = f"all {len(verdicts)} hours pass"
    meta: dict[str, Any] = {"summary": dg.MetadataValue.text(summary)}
    if len(verdicts) == 1:
        meta.update(verdict_metadata(verdicts[0][1]))
    if failed:
        meta["failures"] = dg.MetadataValue.json(
            {f"{from_ms(h):%Y-%m-%d %H}h": {"summary": v.summary, **v.details} for h, v in failed}
        )
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check.name,
        passed=not failed,
        severity=check.severity,
        metadata=meta,
        description=summary,
    )
