"""Test tiers, assigned at collection so that no test can sit in the wrong one.

- ``browser`` (a real Chromium: the tests under ``ui/``), ``postgres`` (a throwaway PostgreSQL
  cluster: tests using the ``postgres`` fixture), ``daemon`` (a real ``dagster dev`` with its
  daemon, marked by the test): minutes each, and the first two need system packages.
- ``integration``: crosses a real socket (moto server, simulator, fault proxy). Tests that use a
  server fixture are integration by construction; a test that starts a server itself says so
  with the marker.
- ``slow``: offline but long (days of simulated data, property tests, whole captures), marked
  by the test.
- ``unit``: everything else. A unit or slow test that opens a TCP socket fails with a message that
  says to mark it, so ``make test-fast`` (the unit tier) stays fast and offline.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

TIERS = ("unit", "slow", "integration", "daemon", "postgres", "browser")
# Fixtures that start (or stand for) a server reached over a socket.
SERVER_FIXTURES = frozenset({"aws", "simulator_url", "sim_factory", "kinesis", "proxy"})


def pytest_configure(config: pytest.Config) -> None:
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: the {tier} test tier (see tiers.py)")


def tier_of(item: pytest.Item) -> str:
    if "ingest_pipeline_tests/ui/" in item.nodeid:
        return "browser"
    if "postgres" in getattr(item, "fixturenames", ()):
        return "postgres"
    if item.get_closest_marker("daemon"):
        return "daemon"
    if item.get_closest_marker("integration") or SERVER_FIXTURES.intersection(
        getattr(item, "fixturenames", ())
    ):
        return "integration"
    return "slow" if item.get_closest_marker("slow") else "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))


def _refuse(*_: Any, **__: Any) -> None:
    raise RuntimeError(
        "a unit-tier test opened a network socket: use a server fixture or mark the test "
        "@pytest.mark.integration (ingest_pipeline_tests/tiers.py)"
    )


@pytest.fixture(autouse=True)
def _unit_tier_stays_offline(request: pytest.FixtureRequest) -> Iterator[None]:
    if tier_of(request.node) not in ("unit", "slow"):
        yield
        return
    real_connect, real_bind = socket.socket.connect, socket.socket.bind

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            _refuse()
        return real_connect(sock, address)

    def bind(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            _refuse()
        return real_bind(sock, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "bind", bind)
        yield
