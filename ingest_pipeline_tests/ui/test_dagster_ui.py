"""The Dagster UI in a real browser: headless Debian Chromium, driven by selenium through
Debian's chromedriver, against ``dagster dev`` on a temp instance with one materialized
partition. Screenshots land in ``test-artifacts/ui/`` (gitignored).

What it reads is what a person sees: the asset graph of every group (node boxes, and lineage
edges attributed to the boxes their ends touch), a partition's materialization metadata, the
asset's check results. The expectations (groups, assets, dependencies, check names) come from
the Definitions as the webserver loaded them, so the test follows the project as it grows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import pytest

from ingest_pipeline.standins.moto_server import EmbeddedAWS
from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline_tests.dagster_harness import BIN, ROOT, DagsterDev
from ingest_pipeline_tests.deploy.tools import require

ARTIFACTS = ROOT / "test-artifacts" / "ui"
SYMBOLS = ("SYM0001USDT", "SYM0002USDT")  # quiet generated symbols
SYMBOL = SYMBOLS[0]
PARTITION = "2024-08-08-00:00"
MATERIALIZED = ("agg_trades", "trades")
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
    assetKey { path } groupName dependencyKeys { path }
    assetChecksOrError { ... on AssetChecks { checks { name } } }
} }
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


def wait_for(get: Callable[[], T], ok: Callable[[T], bool], what: str, timeout: float = 20) -> T:
    deadline = time.monotonic() + timeout
    value = get()
    while not ok(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}"[:3000])
        time.sleep(0.3)
        value = get()
    return value


def materialize_one_partition(home: Path, env: dict[str, str]) -> None:
    """`dagster asset materialize` against the same instance, before the webserver starts."""
    select = ",".join(f"bronze/{SYMBOL}/{t}" for t in MATERIALIZED)
    result = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "ingest_pipeline.definitions",
         "--select", select, "--partition", PARTITION],
        cwd=ROOT, env={**os.environ, **env, "DAGSTER_HOME": str(home)},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]


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


def test_asset_graph_partition_metadata_and_checks_in_chromium(
    aws: EmbeddedAWS, chrome: Any, tmp_path: Path
) -> None:
    started = time.monotonic()
    home = tmp_path / "home"
    home.mkdir()
    instance_yaml = (ROOT / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text(instance_yaml)
    with SimulatorServer(SimulatorConfig(extra_symbols=len(SYMBOLS))) as sim:
        env = {
            "AWS_ENDPOINT_URL": aws.endpoint_url,
            "BINANCE_REST_URL": sim.url,
            "INGEST_SYMBOLS": ",".join(SYMBOLS),
        }
        materialize_one_partition(home, env)
        with DagsterDev(home, env, instance_yaml) as dagster:
            nodes = dagster.graphql(ASSET_NODES)["assetNodes"]
            page = Page(chrome, dagster.url)
            check_graph_and_lineage(page, nodes)
            check_partition_and_checks(page, nodes, home)
    assert time.monotonic() - started < 120  # the whole test, dagster dev included


def check_graph_and_lineage(page: Page, nodes: list[dict[str, Any]]) -> None:
    by_key = {key_str(n["assetKey"]["path"]): n for n in nodes}
    groups: dict[str, set[str]] = {}
    for key, n in by_key.items():
        groups.setdefault(n["groupName"], set()).add(key)
    assert "bronze" in groups, groups.keys()
    assert {f"bronze/{SYMBOL}/agg_trades", f"bronze/{SYMBOL}/trades"} <= groups["bronze"]

    # The UI's community pop-up would sit over the graph in every screenshot.
    page.open("/")
    page.driver.execute_script("window.localStorage.setItem('communityNux', '1')")

    for group, keys in sorted(groups.items()):
        expected_edges = {
            (key_str(dep["path"]), key)
            for key in keys
            for dep in by_key[key]["dependencyKeys"]
            if key_str(dep["path"]) in keys
        }
        # Tall enough that the whole group is laid out in view (the graph draws only what is).
        page.open(f"/locations/ingest_pipeline.definitions/asset-groups/{group}", (2400, 4000))
        graph = wait_for(
            page.graph,
            lambda g, keys=keys, want=expected_edges: (
                set(g["nodes"]) >= keys and drawn_edges(g) >= want
            ),
            f"the {group} graph to show its {len(keys)} assets and {len(expected_edges)} edges",
        )
        page.shot(f"graph-{group}")
        drawn = drawn_edges(graph)
        within = {(s, d) for s, d in drawn if s in keys and d in keys}
        assert within == expected_edges, (group, within ^ expected_edges)

    # Across groups and one level up, on the asset's own lineage page: bronze trades <- agg_trades,
    # and a silver asset <- its bronze inputs when the project has silver assets.
    lineage_of = [f"bronze/{SYMBOL}/trades"]
    lineage_of += sorted(
        k
        for k in groups.get("silver", ())
        if f"/{SYMBOL}/" in k and any(d["path"][0] == "bronze" for d in by_key[k]["dependencyKeys"])
    )[:1]
    for key in lineage_of:
        want = {(key_str(d["path"]), key) for d in by_key[key]["dependencyKeys"]}
        page.open(f"/assets/{key}?view=lineage&lineageScope=upstream&lineageDepth=1", (1600, 1600))
        wait_for(
            page.graph,
            lambda g, want=want: drawn_edges(g) >= want,
            f"the upstream edges of {key}: {sorted(want)}",
        )
        page.shot("lineage-" + key.replace("/", "_"))
    assert (f"bronze/{SYMBOL}/agg_trades", f"bronze/{SYMBOL}/trades") in {
        (key_str(d["path"]), f"bronze/{SYMBOL}/trades")
        for d in by_key[f"bronze/{SYMBOL}/trades"]["dependencyKeys"]
    }


def check_partition_and_checks(page: Page, nodes: list[dict[str, Any]], home: Path) -> None:
    key = ["bronze", SYMBOL, "agg_trades"]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [record] = instance.fetch_materializations(dg.AssetKey(key), limit=10).records
    metadata = record.asset_materialization.metadata
    records, s3_uri = str(metadata["records"].value), str(metadata["s3_uri"].value)
    assert s3_uri.startswith("s3://") and s3_uri.endswith(".jsonl.gz")

    page.open(f"/assets/{key_str(key)}?view=partitions&partition={PARTITION}")
    text = wait_for(page.text, lambda t: s3_uri in t, f"{PARTITION}'s metadata with {s3_uri}")
    page.shot("partition-agg_trades")
    lines = text.splitlines()
    # Metadata renders as label / value rows.
    assert lines[lines.index("records") + 1] == records, records
    assert lines[lines.index("s3_uri") + 1] == s3_uri
    assert "Materialized" in lines

    [node] = [n for n in nodes if n["assetKey"]["path"] == key]
    checks = sorted(c["name"] for c in node["assetChecksOrError"]["checks"])
    assert checks, "agg_trades has asset checks"
    page.open(f"/assets/{key_str(key)}?view=checks")
    text = wait_for(
        page.text,
        lambda t: all(c in t for c in checks) and "Evaluation result" in t,
        f"the check results of {key_str(key)}: {checks}",
    )
    page.shot("checks-agg_trades")
    lines = text.splitlines()
    for name in checks:
        assert lines[lines.index(name) + 1] == "Succeeded", (name, lines[lines.index(name) + 1])
    assert PARTITION in lines
