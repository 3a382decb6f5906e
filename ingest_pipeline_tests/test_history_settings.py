"""Settings of the history source: per environment, overridable, validated."""

from __future__ import annotations

import pytest

from ingest_pipeline.settings import SettingsError, load_settings


def test_each_environment_defaults_to_the_archive_first() -> None:
    local = load_settings("local", environ={})
    assert local.history_source == "auto"
    # The simulator serves the archive beside its REST.
    assert local.archive_base_url is None and local.archive_url == local.binance_rest_url
    for env in ("dev", "prod"):
        s = load_settings(env, environ={})
        assert (s.history_source, s.archive_url) == ("auto", "https://data.binance.vision")


def test_environment_overrides_and_validation() -> None:
    s = load_settings(
        "prod", environ={"INGEST_HISTORY_SOURCE": "rest", "BINANCE_ARCHIVE_URL": "http://m:9/"}
    )
    assert (s.history_source, s.archive_url) == ("rest", "http://m:9")
    with pytest.raises(SettingsError, match="^environment variable INGEST_HISTORY_SOURCE must"):
        load_settings("local", environ={"INGEST_HISTORY_SOURCE": "s3"})
    with pytest.raises(SettingsError, match="environment variable BINANCE_ARCHIVE_URL"):
        load_settings("local", environ={"BINANCE_ARCHIVE_URL": "ftp://x"})
