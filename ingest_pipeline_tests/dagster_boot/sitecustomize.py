"""Imported at start-up by every Python process of a test's ``dagster dev`` (``DagsterDev`` puts
this folder first on ``PYTHONPATH``; nothing else is on it).

In the daemon process only, and only when ``DagsterDev`` was given a backfill interval: the
backfill daemon's pause between iterations. Dagster hard-codes it (30 s, not configurable in
dagster.yaml), and a backfill needs at least one iteration to request its runs and another to
see them done, so tests spent most of their time waiting for it. Everything else in the
daemon, and its backfill logic, stays Dagster's own.
"""

import os
import sys

_INTERVAL = os.environ.get("TEST_DAGSTER_BACKFILL_INTERVAL_SECONDS")

if _INTERVAL and sys.orig_argv[1:3] == ["-m", "dagster._daemon"]:
    import dagster._daemon.controller as _controller

    # The backfill loop reads this module attribute at each start of its loop (an import
    # inside execute_backfill_iteration_loop): fail loudly should a Dagster upgrade move it.
    if not isinstance(getattr(_controller, "DEFAULT_DAEMON_INTERVAL_SECONDS", None), int):
        raise RuntimeError("dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS is gone")
    _controller.DEFAULT_DAEMON_INTERVAL_SECONDS = int(_INTERVAL)
