"""A real Dagster deployment for tests: ``dagster dev`` (webserver + daemon) in a temp home.

Backfills go through the GraphQL mutation the UI itself sends, ``launchPartitionBackfill``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from ingest_pipeline.standins.moto_server import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Its sitecustomize shortens the backfill daemon's pause when a test asks for it.
BOOT = Path(__file__).resolve().parent / "dagster_boot"
# The pause tests ask for (Dagster's is 30 s): each backfill needs one iteration to request its
# runs, more as their hours land, and one to file itself done.
QUICK_BACKFILL_S = 2

LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on UnauthorizedError { message }
  }
}
"""

BACKFILL_STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numCancelable }
    ... on PythonError { message }
  }
}
"""

REPOS = (
    "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
)
SENSOR_STATE = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { id status } }
  }
}
"""
STOP_SENSOR = """
mutation Stop($id: String!) {
  stopSensor(id: $id) { __typename ... on PythonError { message } }
}
"""


class DagsterDev:
    """``dagster dev`` on a free loopback port; stopped with its whole process group."""

    def __init__(
        self,
        home: Path,
        env: Mapping[str, str],
        instance_yaml: str,
        workspace: Path = ROOT / "workspace.yaml",
        *,
        backfill_interval_s: int | None = None,
    ) -> None:
        """``backfill_interval_s``: the backfill daemon's pause between iterations instead of
        Dagster's 30 s (see ``dagster_boot/sitecustomize.py``)."""
        self.home = home
        self.workspace = workspace
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        (home / "dagster.yaml").write_text(instance_yaml)
        self.env = {
            **os.environ,
            **env,
            "DAGSTER_HOME": str(home),
            "DAGSTER_DISABLE_TELEMETRY": "1",
        }
        if backfill_interval_s is not None:
            path = os.pathsep.join(p for p in (str(BOOT), os.environ.get("PYTHONPATH")) if p)
            self.env["PYTHONPATH"] = path
            self.env["TEST_DAGSTER_BACKFILL_INTERVAL_SECONDS"] = str(backfill_interval_s)
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DagsterDev:
        with open(self.home / "dagster-dev.log", "wb") as log:
            self._proc = subprocess.Popen(
                [str(BIN / "dagster"), "dev", "-w", str(self.workspace),
                 "-h", "127.0.0.1", "-p", str(self.port)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                # Its own session: SIGTERM reaches dagster dev with default handling, and the
                # whole group (webserver, daemon, code server, runs) can be stopped together.
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited: {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/server_info", timeout=2).ok and self._loaded():
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        self.__exit__()
        raise RuntimeError(f"dagster dev did not come up: {self.log_tail()}")

    def _loaded(self) -> bool:
        data = self.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
        )
        entries = data["workspaceOrError"]["locationEntries"]
        return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self._proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self._proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._proc = None

    def log_tail(self, chars: int = 4000) -> str:
        path = self.home / "dagster-dev.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        resp.raise_for_status()
        body = resp.json()
        if body.get("errors"):
            raise RuntimeError(body["errors"])
        return body["data"]

    def stop_silver(self) -> None:
        """For tests of bronze only: silver's automation would launch feature runs as bronze
        hours land, minutes of CPU on a 2-core machine that the test neither waits for nor
        checks."""
        self.stop_sensor("silver_automation")

    def repository_selector(self) -> dict[str, str]:
        """The location and name of the workspace's (one) repository, as selectors name it."""
        repo = self.graphql(REPOS)["repositoriesOrError"]["nodes"][0]
        return {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"]}

    def stop_sensor(self, name: str) -> None:
        """What the UI's sensor toggle sends: the sensor is STOPPED in the instance."""
        selector = {**self.repository_selector(), "sensorName": name}
        state = self.graphql(SENSOR_STATE, {"selector": selector})["sensorOrError"]
        stopped = self.graphql(STOP_SENSOR, {"id": state["sensorState"]["id"]})["stopSensor"]
        if stopped["__typename"] != "StopSensorMutationResult":
            raise RuntimeError(stopped)

    def launch_backfill(self, asset_paths: Sequence[Sequence[str]], partitions: list[str]) -> str:
        """What the UI sends for "Materialize selected" over a partition range."""
        params = {
            "assetSelection": [{"path": list(p)} for p in asset_paths],
            "partitionNames": partitions,
            "fromFailure": False,
        }
        result = self.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(result)
        return result["backfillId"]

    def wait_backfill(self, backfill_id: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        status = "?"
        while time.monotonic() < deadline:
            result = self.graphql(BACKFILL_STATUS, {"id": backfill_id})
            status = result["partitionBackfillOrError"]["status"]
            if status not in ("REQUESTED", "CANCELING", "FAILING"):
                return status
            time.sleep(0.5)
        raise TimeoutError(f"backfill {backfill_id} still {status}: {self.log_tail()}")


def check_partition_statuses(
    instance: Any, check_key: Any, partitions_def: Any
) -> dict[str, set[str]]:
    """A partitioned check's hours by status, as the UI's counters and partition list compute
    them (``AssetCheckState``): SUCCEEDED, FAILED, SKIPPED, IN_PROGRESS, EXECUTION_FAILED; an
    hour in none of them shows as "Missing"."""
    state = instance.event_log_storage.get_asset_check_state([(check_key, partitions_def)])
    return {
        status.value: set(subset.subset_value.get_partition_keys())
        for status, subset in state[check_key].subsets.items()
        if not subset.is_empty
    }
