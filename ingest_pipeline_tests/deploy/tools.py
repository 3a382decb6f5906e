"""External tools some tests need (PostgreSQL, Chromium): `.ci/run` installs them, so in CI
(``CI=true``) a missing tool fails the test; on a developer's machine it skips, saying what
to install."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(present: bool, what: str) -> None:
    """Skip (fail in CI) unless ``present``; ``what`` says what is missing and how to get it."""
    if present:
        return
    if in_ci():
        pytest.fail(f"{what} (CI=true: .ci/run should have installed it)")
    pytest.skip(what)
