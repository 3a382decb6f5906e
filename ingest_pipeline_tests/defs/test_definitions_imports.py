"""What every Dagster process pays to start: each run worker, step process and code server
imports ``ingest_pipeline.definitions``. The streamer's runtime (aiohttp, prometheus) is
imported by its op alone, silver's (pandas, parquet) by the silver step alone, and dagster-aws
not at all (its package imports every component it has, ``dagster._core.test_utils`` included:
about a second per process)."""

from __future__ import annotations

import json
import subprocess
import sys

NOT_AT_DEFINITION_TIME = (
    "dagster_aws",
    "aiohttp",
    "prometheus_client",
    "pandas",
    "pyarrow.parquet",
)


def test_importing_the_definitions_leaves_the_runtime_only_modules_out() -> None:
    # A fresh interpreter: this test session has imported all of them already.
    probe = (
        "import json, sys\n"
        "import ingest_pipeline.definitions as d\n"
        "assert d.defs.resolve_all_job_defs()\n"
        f"print(json.dumps(sorted(m for m in {NOT_AT_DEFINITION_TIME!r} if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout.splitlines()[-1]) == []
