"""The asset graph as a reviewed file: an unintended change to keys, deps, groups, kinds, owners,
tags, partitions, backfill policies, checks, automation conditions, jobs, schedules or sensors
shows up as a diff of ``asset_graph.json``. After an intended change, regenerate it with
``UPDATE_ASSET_GRAPH=1 pytest ingest_pipeline_tests/defs/test_asset_graph_snapshot.py`` and
commit the file with the change."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from ingest_pipeline.defs.build import build_definitions
from ingest_pipeline.settings import load_settings

SNAPSHOT = Path(__file__).with_name("asset_graph.json")


def _condition(c: dg.AutomationCondition | None) -> Any:
    if c is None:
        return None
    out: dict[str, Any] = {"type": type(c).__name__}
    if c.get_label():
        out["label"] = c.get_label()
    if c.children:
        out["children"] = [_condition(x) for x in c.children]
    return out


def graph_of(defs: dg.Definitions) -> dict[str, Any]:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "owners": list(node.owners),
            "tags": {
                k: v for k, v in sorted(node.tags.items()) if not k.startswith("dagster/kind/")
            },
            "partitions": str(node.partitions_def) if node.partitions_def else None,
            "backfill_policy": str(node.backfill_policy) if node.backfill_policy else None,
            "automation_condition": _condition(node.automation_condition),
            "checks": {
                ck.name: {"blocking": graph.get(ck).blocking}
                for ck in sorted(node.check_keys, key=lambda c: c.name)
            },
        }
    schedules = {}
    for s in defs.schedules or []:
        sd = defs.resolve_schedule_def(s.name)
        schedules[sd.name] = {
            "cron": sd.cron_schedule,
            "job": sd.job_name,
            "default_status": sd.default_status.value,
            "timezone": sd.execution_timezone,
        }
    sensors = {
        s.name: {
            "type": type(s).__name__,
            "default_status": s.default_status.value,
            "minimum_interval_seconds": s.minimum_interval_seconds,
        }
        for s in defs.sensors or []
    }
    jobs = {}
    for job in defs.resolve_all_job_defs():
        if job.name.startswith("__"):
            continue
        selected = job.asset_layer.selected_asset_keys if job.asset_layer else set()
        jobs[job.name] = sorted(k.to_user_string() for k in selected)
    return {"assets": assets, "jobs": jobs, "schedules": schedules, "sensors": sensors}


def test_asset_graph_matches_the_reviewed_snapshot() -> None:
    got = json.dumps(graph_of(build_definitions(load_settings("local", environ={}))), indent=1)
    if os.environ.get("UPDATE_ASSET_GRAPH"):
        SNAPSHOT.write_text(got + "\n", encoding="utf-8")
    want = SNAPSHOT.read_text(encoding="utf-8").rstrip("\n")
    diff = "\n".join(difflib.unified_diff(want.splitlines(), got.splitlines(), "reviewed", "now"))
    assert got == want, f"the asset graph changed (see the module docstring):\n{diff[:6000]}"


def test_definitions_module_is_built_the_one_way() -> None:
    from ingest_pipeline import definitions

    assert graph_of(definitions.defs) == graph_of(build_definitions(definitions.settings))
