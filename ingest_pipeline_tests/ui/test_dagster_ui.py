"""The Dagster UI in a real browser: headless Debian Chromium, driven by selenium through
Debian's chromedriver, against ``dagster dev`` on a temp instance. Screenshots of every view
land in ``test-artifacts/ui/`` (gitignored).

What it reads is what a person sees, after a 12-hour backfill launched the way the UI launches
one (ranged runs: the case where every hour used to show the range's numbers and its checks
"Missing" or "Skipped") and a streamer run terminated from the UI:

- the asset graph of each of the symbol's groups (node boxes, and lineage edges attributed to
  the boxes their ends touch), and the whole graph filtered by the symbol's tag;
- one hour's materialization: its row count equals the records of that hour's S3 object, its
  URI is that object's;
- a check's partition view: the 12 hours passed, none missing, skipped or failed;
- the terminated streamer run: Canceled, not Failure, with no failed step, and its status lines
  (starting, running, stopped) and the streamer's own log lines in the event log.

The expectations (groups, assets, tags, dependencies, check names) come from the Definitions as
the webserver loaded them, so the test follows the project as it grows. No timing assertion:
every wait is bounded only to fail with a message rather than hang.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import dagster as dg
import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.records import AGG_TRADES
from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline.storage.bronze import BronzeStore
from ingest_pipeline.timeutil import parse_hour
from ingest_pipeline_tests.dagster_harness import QUICK_BACKFILL_S, ROOT, DagsterDev
from ingest_pipeline_tests.deploy.tools import require

ARTIFACTS = ROOT / "test-artifacts" / "ui"
SYMBOLS = ("SYM0001USDT", "SYM0002USDT")  # quiet generated symbols
SYMBOL = SYMBOLS[0]
HOURS = [f"2024-08-08-{h:02d}:00" for h in range(12)]
PARTITION = HOURS[5]
# One asset is enough for the per-hour views; fewer REST pages to fetch on a busy machine.
MATERIALIZED = ("agg_trades",)
# Bounds for the backfill and the streamer's steps on a busy 2-core machine: only so that a
# stuck deployment fails with its log instead of hanging.
BACKFILL_TIMEOUT_S = 600
RUN_TIMEOUT_S = 240
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)
# A lineage edge belongs to two boxes when it starts inside one and its arrow ends at the
# other (the arrowhead stops ~5 px short); edges to nodes drawn outside a group view (another
# group, collapsed) end far from any box and are left out.
EDGE_TOLERANCE_PX = 8.0
GRAPH_JS = (Path(__file__).parent / "graph.js").read_text()

ASSET_NODES = """
{ assetNodes {
    assetKey { path } groupName dependencyKeys { path } tags { key value }
    assetChecksOrError { ... on AssetChecks { checks { name } } }
} }
"""
LAUNCH_RUN = """
mutation Launch($p: ExecutionParams!) {
  launchRun(executionParams: $p) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
TERMINATE = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
  }
}
"""

T = TypeVar("T")


def chromium_paths() -> tuple[str | None, str | None]:
    browser = next(
        (p for p in ("chromium", "chromium-browser") if shutil.which(p)),
        None,
    )
    return (shutil.which(browser) if browser else None), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser_paths() -> tuple[str, str]:
    browser, driver = chromium_paths()
    require(
        browser is not None and driver is not None,
        "Chromium and chromedriver not found on PATH: `apt-get install chromium "
        "chromium-driver` (Debian) to run the browser test of the Dagster UI",
    )
    try:
        import selenium  # noqa: F401
    except ImportError:
        require(False, "selenium is not installed: `pip install -e '.[dev]'`")
    assert browser and driver
    return browser, driver


@pytest.fixture
def chrome(browser_paths: tuple[str, str]) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = browser_paths
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1600,1200"):
        options.add_argument(flag)
    # Both paths given: selenium-manager has nothing to look up or download.
    service = Service(executable_path=driver, log_output=str(Path(profile) / "driver.log"))
    drv = webdriver.Chrome(service=service, options=options)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(
    get: Callable[[], T],
    ok: Callable[[T], bool],
    what: str,
    timeout: float = 60,
    page: Page | None = None,
) -> T:
    """Polls ``get`` until ``ok``; on timeout fails with the last value (and a screenshot of
    ``page``, named after ``what``)."""
    deadline = time.monotonic() + timeout
    value = get()
    while not ok(value):
        if time.monotonic() > deadline:
            if page is not None:
                page.shot("timeout-" + "".join(c if c.isalnum() else "_" for c in what)[:80])
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}"[:3000])
        time.sleep(0.3)
        value = get()
    return value


def graph_path(selection: str, groups: set[str]) -> str:
    """The global asset graph filtered by ``selection`` (what typing it into the filter bar
    gives: the query is part of the path, after ``~``), with ``groups`` opened: a view holding
    more than one group (a hierarchical group counts its parent) starts with all collapsed.
    The UI names a group globally or per code location, depending on a feature flag: both."""
    ids = [
        f"{prefix}{group}"
        for group in sorted(groups)
        for prefix in ("global@global:", "__repository__@ingest_pipeline.definitions:")
    ]
    return f"/asset-groups~{quote(selection, safe='')}/?expanded={quote(','.join(ids), safe='')}"


def key_str(path: list[str]) -> str:
    return "/".join(path)


class Page:
    def __init__(self, driver: Any, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    def open(self, path: str, size: tuple[int, int] = (1600, 1200)) -> None:
        self.driver.set_window_size(*size)
        self.driver.get(self.base_url + path)

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def graph(self) -> dict[str, Any]:
        return self.driver.execute_script(GRAPH_JS)

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def drawn_edges(graph: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (e["src"], e["dst"])
        for e in graph["edges"]
        if e["src"] is not None
        and e["dst"] not in (None, e["src"])
        and e["ds"] <= 1
        and e["dd"] <= EDGE_TOLERANCE_PX
    }


# dagster dev, a backfill run and a streamer run (each a process that loads the definitions)
# and a browser: ~3 min alone, more under a loaded CI machine's 2 cores; the suite's 300 s
# default is too tight for it.
@pytest.mark.timeout(900)
def test_ui_after_a_ranged_backfill_and_a_terminated_streamer_in_chromium(
    aws: EmbeddedAWS, chrome: Any, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    instance_yaml = (ROOT / "dagster.yaml").read_text()
    with SimulatorServer(SimulatorConfig(extra_symbols=len(SYMBOLS))) as sim:
        env = {
            "AWS_ENDPOINT_URL": aws.endpoint_url,
            "BINANCE_REST_URL": sim.url,
            "BINANCE_WS_URL": sim.url.replace("http://", "ws://"),
            "INGEST_SYMBOLS": ",".join(SYMBOLS),
            "INGEST_STREAMER_HEARTBEAT_SECONDS": "2",
            "INGEST_STREAMER_STATE_DIR": str(tmp_path / "streamer"),
        }
        with DagsterDev(home, env, instance_yaml, backfill_interval_s=QUICK_BACKFILL_S) as dagster:
            dagster.stop_silver()
            # What "Materialize selected" over 12 hours sends: one ranged run per the policy.
            backfill = dagster.launch_backfill([["bronze", SYMBOL, t] for t in MATERIALIZED], HOURS)
            status = dagster.wait_backfill(backfill, timeout_s=BACKFILL_TIMEOUT_S)
            assert status == "COMPLETED_SUCCESS", dagster.log_tail()
            nodes = dagster.graphql(ASSET_NODES)["assetNodes"]
            page = Page(chrome, dagster.url)
            # The UI's community pop-up would sit over the graph in every screenshot.
            page.open("/")
            page.driver.execute_script("window.localStorage.setItem('communityNux', '1')")
            check_graph_and_lineage(page, nodes)
            check_graph_filtered_by_symbol(page, nodes)
            with dg.DagsterInstance.from_config(str(home)) as instance:
                check_hour_metadata(page, aws, instance)
                check_partition_view_of_a_check(page, nodes, instance)
                check_terminated_streamer(page, dagster, instance)


def symbol_of(node: dict[str, Any]) -> str | None:
    return next((t["value"] for t in node["tags"] if t["key"] == "symbol"), None)


def check_graph_and_lineage(page: Page, nodes: list[dict[str, Any]]) -> None:
    by_key = {key_str(n["assetKey"]["path"]): n for n in nodes}
    groups: dict[str, set[str]] = {}
    for key, n in by_key.items():
        groups.setdefault(n["groupName"], set()).add(key)
    # One group per layer and symbol: the graph tells the symbols apart.
    bronze = f"bronze/{SYMBOL}"
    assert bronze in groups and f"bronze/{SYMBOLS[1]}" in groups, groups.keys()
    assert {f"bronze/{SYMBOL}/agg_trades", f"bronze/{SYMBOL}/trades"} <= groups[bronze]
    assert all(f"/{SYMBOL}/" in k for k in groups[bronze])

    # The symbol's groups (the other symbol's are drawn alike).
    for group, keys in sorted((g, k) for g, k in groups.items() if g.endswith(f"/{SYMBOL}")):
        expected_edges = {
            (key_str(dep["path"]), key)
            for key in keys
            for dep in by_key[key]["dependencyKeys"]
            if key_str(dep["path"]) in keys
        }
        # Tall enough that the whole group is laid out in view (the graph draws only what is).
        # The group's own page takes the name in one path segment, which the UI's router does
        # not decode ("bronze%2FSYM..."): the graph filtered by group is the same view.
        page.open(graph_path(f'group:"{group}"', {group}), (2400, 4000))
        graph = wait_for(
            page.graph,
            lambda g, keys=keys, want=expected_edges: (
                set(g["nodes"]) >= keys and drawn_edges(g) >= want
            ),
            f"the {group} graph to show its {len(keys)} assets and {len(expected_edges)} edges",
            page=page,
        )
        page.shot("graph-" + group.replace("/", "_"))
        drawn = drawn_edges(graph)
        within = {(s, d) for s, d in drawn if s in keys and d in keys}
        assert within == expected_edges, (group, within ^ expected_edges)

    # Across groups and one level up, on the asset's own lineage page: bronze trades <- agg_trades,
    # and a silver asset <- its bronze inputs when the project has silver assets.
    lineage_of = [f"bronze/{SYMBOL}/trades"]
    lineage_of += sorted(
        k
        for k in groups.get(f"silver/{SYMBOL}", ())
        if any(d["path"][0] == "bronze" for d in by_key[k]["dependencyKeys"])
    )[:1]
    for key in lineage_of:
        want = {(key_str(d["path"]), key) for d in by_key[key]["dependencyKeys"]}
        page.open(f"/assets/{key}?view=lineage&lineageScope=upstream&lineageDepth=1", (1600, 1600))
        wait_for(
            page.graph,
            lambda g, want=want: drawn_edges(g) >= want,
            f"the upstream edges of {key}: {sorted(want)}",
            page=page,
        )
        page.shot("lineage-" + key.replace("/", "_"))
    assert (f"bronze/{SYMBOL}/agg_trades", f"bronze/{SYMBOL}/trades") in {
        (key_str(d["path"]), f"bronze/{SYMBOL}/trades")
        for d in by_key[f"bronze/{SYMBOL}/trades"]["dependencyKeys"]
    }


def check_graph_filtered_by_symbol(page: Page, nodes: list[dict[str, Any]]) -> None:
    """The whole graph, filtered with ``tag:symbol=<SYMBOL>`` as typed in the UI's filter bar:
    every asset of the symbol, and nothing of the other one."""
    mine = {key_str(n["assetKey"]["path"]) for n in nodes if symbol_of(n) == SYMBOL}
    assert mine and all(f"/{SYMBOL}/" in k for k in mine)
    assert any(symbol_of(n) == SYMBOLS[1] for n in nodes)
    # Every group opened, the other symbol's too: were the filter ignored, its assets would show.
    page.open(graph_path(f"tag:symbol={SYMBOL}", {n["groupName"] for n in nodes}), (2400, 4000))
    graph = wait_for(
        page.graph,
        lambda g: set(g["nodes"]) >= mine,
        f"the graph filtered by tag:symbol={SYMBOL} to show its {len(mine)} assets",
        page=page,
    )
    page.shot(f"graph-tag-symbol-{SYMBOL}")
    assert set(graph["nodes"]) == mine, set(graph["nodes"]) ^ mine


def check_hour_metadata(page: Page, aws: EmbeddedAWS, instance: dg.DagsterInstance) -> None:
    """One hour of the ranged run shows its own object's numbers, not the range's."""
    key = ["bronze", SYMBOL, "agg_trades"]
    store = BronzeStore(
        aws_client("s3", aws.settings), aws.settings.bucket, aws.settings.bronze_prefix
    )
    records = store.read_hour(SYMBOL, AGG_TRADES, parse_hour(PARTITION))
    assert records, f"no object for {PARTITION}"
    uri = f"s3://{store.bucket}/{store.key(SYMBOL, AGG_TRADES, parse_hour(PARTITION))}"
    rows = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=HOURS), limit=100
    ).records
    counts = {r.partition_key: r.asset_materialization.metadata["dagster/row_count"].value
              for r in rows}  # fmt: skip
    assert set(counts) == set(HOURS)
    # Each hour its own object's count (a ranged run used to give every hour the range's).
    assert counts[PARTITION] == len(records)

    page.open(f"/assets/{key_str(key)}?view=partitions&partition={PARTITION}")
    text = wait_for(page.text, lambda t: uri in t, f"{PARTITION}'s metadata", page=page)
    page.shot("partition-agg_trades")
    lines = text.splitlines()
    # Metadata renders as label / value rows; integers with thousands separators.
    shown = lines[lines.index("dagster/row_count") + 1]
    assert shown.replace(",", "") == str(len(records)), (shown, len(records))
    assert lines[lines.index("dagster/uri") + 1] == uri
    assert "Materialized" in lines


def check_partition_view_of_a_check(
    page: Page, nodes: list[dict[str, Any]], instance: dg.DagsterInstance
) -> None:
    """A check's partition view after the ranged run: its 12 hours passed (in the counters and
    in the list), none skipped, failed or missing among them."""
    from selenium.webdriver.common.by import By

    key = ["bronze", SYMBOL, "agg_trades"]
    [node] = [n for n in nodes if n["assetKey"]["path"] == key]
    checks = sorted(c["name"] for c in node["assetChecksOrError"]["checks"])
    assert checks, "agg_trades has asset checks"
    check = checks[0]
    # Only the passed hours listed (the view's status filter, kept in the URL).
    page.open(f"/assets/{key_str(key)}?view=checks&checkDetail={check}&status=SUCCEEDED")
    # Two "Partitions" tabs: the asset's (top of the page) and the selected check's.
    tabs = wait_for(
        lambda: page.driver.find_elements(
            By.XPATH, "//*[@role='tab'][normalize-space()='Partitions']"
        ),
        lambda found: len(found) >= 2,
        f"the Partitions tab of check {check}",
        page=page,
    )
    tabs[-1].click()
    text = wait_for(
        page.text,
        lambda t: f"Passed ({len(HOURS)})" in t and all(h in t for h in HOURS),
        f"{check}: {len(HOURS)} hours passed",
        page=page,
    )
    page.shot(f"check-partitions-{check}")
    lines = text.splitlines()
    for status in ("Failed", "Skipped", "Execution Failed", "In Progress"):
        assert f"{status} (0)" in lines, (status, [ln for ln in lines if ln.startswith(status)])


def check_terminated_streamer(
    page: Page, dagster: DagsterDev, instance: dg.DagsterInstance
) -> None:
    """A streamer run launched and terminated as from the UI: Canceled, no failed step; its
    log says starting / running / stopped, and holds the streamer's own log lines."""
    params = {
        "selector": {**dagster.repository_selector(), "jobName": "realtime_streamer"},
        "runConfigData": {},
    }
    launched = dagster.graphql(LAUNCH_RUN, {"p": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    def messages() -> list[str]:
        return [e.user_message for e in instance.all_logs(run_id) if e.user_message]

    wait_for(
        messages,
        lambda ms: any(m.startswith("streamer running") for m in ms),
        "the streamer run to log that it is running",
        timeout=RUN_TIMEOUT_S,
    )
    result = dagster.graphql(TERMINATE, {"runId": run_id})["terminateRun"]
    assert result["__typename"] == "TerminateRunSuccess", result
    wait_for(
        lambda: instance.get_run_by_id(run_id).status,
        lambda s: s in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE),
        f"run {run_id} to end",
        timeout=RUN_TIMEOUT_S,
    )
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED
    types = {e.dagster_event_type for e in instance.all_logs(run_id) if e.is_dagster_event}
    assert dg.DagsterEventType.STEP_SUCCESS in types
    assert dg.DagsterEventType.STEP_FAILURE not in types
    lines = messages()
    status_lines = [m.split(":")[0] for m in lines if m.startswith("streamer ")]
    # As they happened: starting first, running, stopped last (no "streamer down" at start).
    assert status_lines[0].startswith("streamer starting"), status_lines
    assert any(s.startswith("streamer running") for s in status_lines), status_lines
    assert status_lines[-1] == "streamer stopped as requested, everything flushed", status_lines
    # The streamer's own logger (ingest_pipeline.streaming...), managed by the instance.
    assert any(m.startswith("streaming 2 symbols over") for m in lines), lines[:20]

    page.open(f"/runs/{run_id}")
    # Once its logs are loaded, the run page counts the step as succeeded, none errored.
    text = wait_for(
        page.text,
        lambda t: "Canceled" in t.splitlines() and "Succeeded (1)" in t.splitlines(),
        "the run page: Canceled, its step succeeded",
        page=page,
    )
    page.shot("run-streamer-terminated")
    lines = text.splitlines()
    assert "Errored (0)" in lines and "Failure" not in lines
