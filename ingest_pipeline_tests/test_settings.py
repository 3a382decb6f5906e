from pathlib import Path

import pytest

from ingest_pipeline.settings import ENVIRONMENTS, SettingsError, load_settings

GOOD = (Path(__file__).parents[1] / "ingest_pipeline" / "config" / "local.yaml").read_text()


def _config(tmp_path: Path, text: str) -> Path:
    (tmp_path / "local.yaml").write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_committed_environment_loads(env: str) -> None:
    s = load_settings(env, environ={})
    assert s.env == env
    assert s.bucket and s.symbols and s.kline_intervals == tuple(s.kline_intervals)
    assert len(set(s.kinesis_streams)) == 3


def test_env_var_selects_environment_and_overrides_endpoints() -> None:
    s = load_settings(
        environ={
            "INGEST_ENV": "dev",
            "BINANCE_REST_URL": "http://127.0.0.1:9999/",
            "BINANCE_WS_URL": "ws://127.0.0.1:9998",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:4567",
            "INGEST_SYMBOLS": " SOLUSDT, BNBUSDT ",
        }
    )
    assert s.env == "dev"
    assert s.binance_rest_url == "http://127.0.0.1:9999"
    assert s.binance_ws_url == "ws://127.0.0.1:9998"
    assert s.aws_endpoint_url == "http://127.0.0.1:4567"
    assert s.symbols == ("SOLUSDT", "BNBUSDT")


def test_default_environment_is_local() -> None:
    assert load_settings(environ={}).env == "local"


def test_unknown_environment_is_refused() -> None:
    with pytest.raises(SettingsError, match="INGEST_ENV='staging'"):
        load_settings(environ={"INGEST_ENV": "staging"})


def test_unknown_key_is_named(tmp_path: Path) -> None:
    cfg = _config(tmp_path, GOOD + "bukcet: typo\n")
    with pytest.raises(SettingsError, match="unknown key.*'bukcet'"):
        load_settings("local", environ={}, config_dir=cfg)


def test_missing_bucket_is_named(tmp_path: Path) -> None:
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith("bucket:"))
    with pytest.raises(SettingsError, match="missing.*'bucket'"):
        load_settings("local", environ={}, config_dir=_config(tmp_path, text))


@pytest.mark.parametrize("symbol", ["../etc", "BTC/USDT", "BTC USDT", "BTC\x00USDT", "A" * 40])
def test_unsafe_symbol_from_environment_is_refused(symbol: str) -> None:
    with pytest.raises(SettingsError, match="symbols"):
        load_settings("local", environ={"INGEST_SYMBOLS": symbol})


def test_bad_interval_and_url_are_named(tmp_path: Path) -> None:
    cfg = _config(tmp_path, GOOD.replace('["1m"]', '["7m"]'))
    with pytest.raises(SettingsError, match="kline_intervals.*7m"):
        load_settings("local", environ={}, config_dir=cfg)
    with pytest.raises(SettingsError, match="binance_rest_url"):
        load_settings("local", environ={"BINANCE_REST_URL": "ftp://x"})
