"""Silver's automation condition: an hour is requested once its inputs (and the next hour's,
for labels) have landed with their blocking checks passed, and again when an input is updated.
The readiness part is custom (``InputsReady``) and therefore evaluated in the code server
(``build_silver_sensors`` in ``silver.py`` sets ``use_user_code_server``)."""

import functools
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from ingest_pipeline.defs.partitions import PARTITION_KEY_FORMAT


@functools.lru_cache(maxsize=2**18)
def _shift_partition(key: str, hours: int) -> str:
    # Cached: every tick shifts the same hours again (a code server lives long).
    dt = datetime.strptime(key, PARTITION_KEY_FORMAT).replace(tzinfo=UTC)
    return (dt + timedelta(hours=hours)).strftime(PARTITION_KEY_FORMAT)


# (upstream key, hour offsets)
Offsets = Sequence[tuple[dg.AssetKey, tuple[int, ...]]]


def _offsets_label(items: Offsets) -> str:
    def one(o: int) -> str:
        return "H" if o == 0 else f"H{o:+d}"

    return ", ".join(f"{'/'.join(k.path)}@{'|'.join(one(o) for o in offs)}" for k, offs in items)


class InputsReady(dg.AutomationCondition):
    """True for hour H when each ``required`` input is materialized at H + offset, and every
    input hour that is materialized (``required`` or ``optional``, e.g. the warm-up hour) has
    its blocking checks passed in the run that produced it or later.

    Why not the built-ins: ``any_deps_missing`` and ``all_deps_blocking_checks_passed`` see
    the whole mapped window ``[H-1, H+1]`` at once, so they cannot tell the optional warm-up
    hour from the needed label hour. This condition asks the event log directly, for the few
    hours still candidates once the cheap built-in parts of :func:`silver_condition` have
    narrowed them.
    """

    def __init__(self, required: Offsets, optional: Offsets = ()) -> None:
        self.required = tuple((k, tuple(o)) for k, o in required)
        self.optional = tuple((k, tuple(o)) for k, o in optional)

    @property
    def name(self) -> str:
        return "inputs_ready"

    @property
    def description(self) -> str:
        text = f"landed, blocking checks passed: {_offsets_label(self.required)}"
        if self.optional:
            text += f"; checks passed if landed: {_offsets_label(self.optional)}"
        return text

    def evaluate(self, context: Any) -> dg.AutomationResult:
        candidates = context.candidate_subset
        if candidates.is_empty:
            return dg.AutomationResult(context=context, true_subset=candidates)
        instance = context.asset_graph_view.instance
        inputs = self.required + self.optional
        # Cheap first, from the data rather than the candidates (after the first tick every
        # missing hour is one): the hours whose required inputs have all landed, one query per
        # input; the check lookups below are then only for those.
        landed = {key: instance.get_materialized_partitions(key) for key, _ in inputs}
        possible: set[str] | None = None
        for key, offs in self.required:
            for o in offs:
                hours = {_shift_partition(p, -o) for p in landed[key]}
                possible = hours if possible is None else possible & hours
        narrowed = candidates.compute_intersection_with_partition_keys(possible or set())
        keys = [] if narrowed.is_empty else narrowed.expensively_compute_partition_keys()
        wanted: dict[dg.AssetKey, set[str]] = {key: set() for key, _ in inputs}
        for key, offs in inputs:
            wanted[key].update(
                p for pk in keys for o in offs if (p := _shift_partition(pk, o)) in landed[key]
            )
        good = {
            key: _good_partitions(instance, context.asset_graph, key, parts)
            for key, parts in wanted.items()
        }
        ok = {pk for pk in keys if all(p in good[k] for k, p in self._hours(pk, wanted))}
        true_subset = (
            candidates.compute_intersection_with_partition_keys(ok)
            if ok
            else context.get_empty_subset()
        )
        return dg.AutomationResult(context=context, true_subset=true_subset)

    def _hours(
        self, pk: str, landed: Mapping[dg.AssetKey, set[str]]
    ) -> Iterator[tuple[dg.AssetKey, str]]:
        """The input hours of ``pk`` to vouch for: the required ones, and the optional ones
        that landed."""
        for key, offs in self.required:
            for o in offs:
                yield key, _shift_partition(pk, o)
        for key, offs in self.optional:
            for o in offs:
                if (p := _shift_partition(pk, o)) in landed[key]:
                    yield key, p


def _good_partitions(
    instance: dg.DagsterInstance, graph: Any, key: dg.AssetKey, partitions: set[str]
) -> set[str]:
    """Partitions of ``key`` whose blocking checks passed in the run that materialized them
    last, or in a later run. A few queries per input whatever the number of hours."""
    blocking = [ck for ck in graph.get(key).check_keys if graph.get(ck).blocking]
    if not blocking or not partitions:
        return set(partitions)
    storage = instance.event_log_storage
    ordered = sorted(partitions)
    good = set(ordered)
    for i in range(0, len(ordered), _CHUNK):
        chunk = ordered[i : i + _CHUNK]
        latest = storage.get_latest_storage_id_by_partition(
            key, DagsterEventType.ASSET_MATERIALIZATION, set(chunk)
        )
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, storage_ids=list(latest.values())),
            limit=len(latest),
        ).records
        made_by = {r.storage_id: r.run_id for r in records}
        good -= set(chunk) - set(latest)
        for ck in blocking:
            infos = {
                info.partition_key: info
                for info in storage.get_asset_check_partition_info([ck], partition_keys=chunk)
            }
            for partition, storage_id in latest.items():
                if not _vouches(infos.get(partition), storage_id, made_by.get(storage_id)):
                    good.discard(partition)
    return good


# Partition keys per query (SQL parameter limits).
_CHUNK = 500


def _vouches(info: Any, materialization_id: int, materialization_run: str | None) -> bool:
    """A passed check evaluation from the materializing run (a ranged run logs its hours'
    results before Dagster files the materializations), or one after the materialization."""
    if info is None or info.latest_execution_status != AssetCheckExecutionRecordStatus.SUCCEEDED:
        return False
    same_run = bool(materialization_run) and info.latest_planned_run_id == materialization_run
    return same_run or info.latest_check_event_storage_id > materialization_id


def silver_condition(required: Offsets, optional: Offsets = ()) -> dg.AutomationCondition:
    """Requested once its inputs have landed with their blocking checks passed (the hour and
    the next one where labels need it), and again whenever an input is updated; never while
    an input or the asset is running.

    The trigger is ``newly_missing | any_deps_updated`` latched until the asset is requested
    or updated. Unlike ``since_last_handled`` it is not reset by the condition's first
    evaluation: on the first tick every missing hour counts as newly missing, so a deployment
    that starts (or a sensor turned on) after bronze landed catches up. An hour that turns out
    to have no input is requested once and stays missing without being asked again.
    """
    handled = (
        dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()
    ).with_label("requested or updated")
    trigger = (
        dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()
    ).since(handled)
    return (
        trigger
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
        & InputsReady(required, optional)
    ).with_label("silver_inputs_landed")
