"""Asset checks shared by bronze, the stream archive and silver: one result per hour partition.

A check is a pure rule (``ingest_pipeline.quality``, or silver's frame rules) applied to what a
run wrote for one hour. Whatever the run covers, one hour or a range of a backfill, each hour
gets its own ``AssetCheckEvaluation``, and it counts as *that hour's* status in every view of the
UI (the check's partition list and counters as well as the hour's panel) only if:

- it names the hour (``partition``): ``AssetCheckResult`` has no partition, and Dagster gives it
  the run's partition only when the run has a ``dagster/partition`` tag, which backfill runs
  never have, even over one hour (their range tags leave every hour's check SKIPPED);
- it names the materialization it checked (``target_materialization_data``): Dagster counts an
  evaluation as current only when that is the partition's latest materialization. So the
  evaluations come *after* the run's materializations are stored: the asset yields them after
  its ``MaterializeResult`` (or ``AssetMaterialization`` events), then looks its own run's
  materializations up (:func:`this_run_materializations`).

Yielded, not logged: a yielded failed evaluation of a blocking check fails the step once the
body ends (downstream steps of the run do not start); ``context.log_event`` would bypass that.
The check outputs must then be optional, which a ``multi_asset(can_subset=True)`` gives.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

# Not re-exported by dagster (1.13): the pointer from an evaluation to the materialization it
# checked. Public alternatives do not exist for partitioned checks of ranged runs.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from ingest_pipeline import quality
from ingest_pipeline.timeutil import from_ms


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
    """The verdict's numbers (what the check's plot draws over time) and details; the summary
    is the evaluation's description."""
    meta: dict[str, Any] = {
        name: dg.MetadataValue.int(value)
        if isinstance(value, int)
        else dg.MetadataValue.float(float(value))
        for name, value in v.numbers.items()
    }
    if v.details:
        meta["details"] = dg.MetadataValue.json(v.details)
    return meta


def hour_partition_key(hour_ms: int) -> str:
    return f"{from_ms(hour_ms):%Y-%m-%d-%H:%M}"


def this_run_materializations(
    context: dg.AssetExecutionContext, asset_key: dg.AssetKey, partitions: Sequence[str]
) -> dict[str, AssetCheckEvaluationTargetMaterializationData]:
    """This run's stored materializations of ``asset_key`` for ``partitions`` (the latest one
    when a partition was materialized twice): what an evaluation of that hour checked.

    Read through the asset's records, not the run's events: Dagster compares the storage id
    with the partition's latest materialization in the asset index, and the sqlite storage of
    ``dagster dev`` numbers a run's events apart from that index (same ids only in one-database
    storages such as PostgreSQL or an ephemeral instance)."""
    run_id = context.run.run_id
    # Newest first: this run's come before any older run's of the same hours.
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=list(partitions)),
        limit=2 * len(partitions),
    ).records
    out: dict[str, AssetCheckEvaluationTargetMaterializationData] = {}
    for r in records:
        if r.run_id != run_id or r.partition_key is None or r.partition_key in out:
            continue
        out[r.partition_key] = AssetCheckEvaluationTargetMaterializationData(
            storage_id=r.storage_id, run_id=run_id, timestamp=r.timestamp
        )
    return out


def hour_evaluations(
    context: dg.AssetExecutionContext,
    asset_key: dg.AssetKey,
    checks: Sequence[Check],
    verdicts: Mapping[int, Mapping[str, quality.Verdict]],
    fail_on_blocking: bool = True,
) -> Iterator[dg.AssetCheckEvaluation]:
    """One evaluation per hour and selected check, each naming this run's materialization of
    its hour. Call (and yield from) it after the hours' materializations were yielded.

    Once all are yielded, a failed blocking check fails the step with a ``dg.Failure`` naming
    the hours and checks (``fail_on_blocking``; Dagster would fail it anyway, with its own
    stack trace and no hour)."""
    selected = context.selected_asset_check_keys
    wanted = [c for c in checks if dg.AssetCheckKey(asset_key, c.name) in selected]
    if not wanted or not verdicts:
        return
    targets = this_run_materializations(
        context, asset_key, [hour_partition_key(h) for h in verdicts]
    )
    blocked: list[str] = []
    for hour, by_check in sorted(verdicts.items()):
        partition = hour_partition_key(hour)
        target = targets.get(partition)
        if target is None:
            # Never expected: every hour with verdicts was materialized just before.
            context.log.warning(
                f"{'/'.join(asset_key.path)} {partition}: no materialization of this run "
                "found; its check results will not count as the hour's status"
            )
        for c in wanted:
            v = by_check[c.name]
            if c.blocking and not v.passed and c.severity == dg.AssetCheckSeverity.ERROR:
                blocked.append(f"{from_ms(hour):%Y-%m-%d %H}h {c.name} ({v.summary})")
            yield dg.AssetCheckEvaluation(
                asset_key=asset_key,
                check_name=c.name,
                passed=v.passed,
                metadata=verdict_metadata(v),
                severity=c.severity,
                description=v.summary,
                blocking=c.blocking,
                partition=partition,
                target_materialization_data=target,
            )
    if blocked and fail_on_blocking:
        raise dg.Failure(
            description=f"{'/'.join(asset_key.path)}: {len(blocked)} blocking check(s) failed, "
            f"downstream assets of this run do not run: {'; '.join(blocked[:5])}"
            + (f"; and {len(blocked) - 5} more" if len(blocked) > 5 else ""),
        )
