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


UNSAFE = [
    "../etc",
    "BTC/USDT",
    "BTC USDT",
    "BTC\x00USDT",
    "A" * 40,
    "ＢＴＣＵＳＤＴ",
    "BTCUSDT,,ETHUSDT",
]


@pytest.mark.parametrize("symbol", UNSAFE)
def test_unsafe_symbol_from_environment_is_refused_naming_the_variable(symbol: str) -> None:
    with pytest.raises(
        SettingsError, match=r"^environment variable INGEST_SYMBOLS: (symbol|empty)"
    ):
        load_settings("local", environ={"INGEST_SYMBOLS": symbol})


@pytest.mark.parametrize("symbol", UNSAFE)
def test_unsafe_symbol_in_the_config_file_is_refused_naming_the_key(
    symbol: str, tmp_path: Path
) -> None:
    import yaml

    raw = yaml.safe_load(GOOD)
    raw["symbols"] = symbol.split(",")
    cfg = _config(tmp_path, yaml.safe_dump(raw, allow_unicode=True))
    with pytest.raises(SettingsError, match=r"local\.yaml: key 'symbols': (symbol|empty)"):
        load_settings("local", environ={}, config_dir=cfg)


def test_symbols_are_upper_cased_and_checked_once_for_every_origin(tmp_path: Path) -> None:
    s = load_settings("local", environ={"INGEST_SYMBOLS": "btcusdt, 币安人生usdt"})
    assert s.symbols == ("BTCUSDT", "币安人生USDT")
    with pytest.raises(SettingsError, match="listed twice"):
        load_settings("local", environ={"INGEST_SYMBOLS": "BTCUSDT,btcusdt"})


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("INGEST_ARCHIVE_GRACE_SECONDS", "soon"),
        ("INGEST_STREAMER_SUPERVISOR_STATUS", "MAYBE"),
        ("BINANCE_WS_URL", "http://127.0.0.1:9"),
        ("AWS_ENDPOINT_URL", "http://[::1"),
    ],
)
def test_a_bad_environment_value_is_blamed_on_its_variable_not_the_file(
    var: str, value: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings("local", environ={var: value})
    message = str(refused.value)
    assert message.startswith(f"environment variable {var}")
    assert ".yaml" not in message


@pytest.mark.parametrize(
    "url",
    [
        "http://exa mple.com",
        "http://[::1",
        "http://:8080",
        "http://host:99999",
        "http://user:secret@host",
        "http://host/?q=1",
        "http://host/#frag",
        "http://host\x00x",
        "localhost:4566",
    ],
)
def test_malformed_endpoint_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(SettingsError, match="environment variable AWS_ENDPOINT_URL: URL"):
        load_settings("local", environ={"AWS_ENDPOINT_URL": url})


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:4566", "https://s3.eu-west-1.amazonaws.com", "http://[::1]:9000"]
)
def test_well_formed_endpoint_urls_load(url: str) -> None:
    assert load_settings("local", environ={"AWS_ENDPOINT_URL": url}).aws_endpoint_url == url


def test_bad_interval_and_url_are_named(tmp_path: Path) -> None:
    cfg = _config(tmp_path, GOOD.replace('["1m"]', '["7m"]'))
    with pytest.raises(SettingsError, match="kline_intervals.*7m"):
        load_settings("local", environ={}, config_dir=cfg)
    with pytest.raises(SettingsError, match="BINANCE_REST_URL.*http://"):
        load_settings("local", environ={"BINANCE_REST_URL": "ftp://x"})
    bad = "\n".join(
        "binance_rest_url: ftp://x" if line.startswith("binance_rest_url:") else line
        for line in GOOD.splitlines()
    )
    cfg = _config(tmp_path, bad)
    with pytest.raises(SettingsError, match="local.yaml: key 'binance_rest_url'"):
        load_settings("local", environ={}, config_dir=cfg)
