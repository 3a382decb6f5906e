import pytest

from ingest_pipeline.symbols import UnsafeSymbol, asset_key_part, check_symbol


@pytest.mark.parametrize("symbol", ["BTCUSDT", "1000SATSUSDT", "币安人生USDT", "BTC-PERP"])
def test_listed_shapes_are_accepted(symbol: str) -> None:
    assert check_symbol(symbol) == symbol


@pytest.mark.parametrize(
    "symbol",
    [
        "",
        "..",
        "../BTCUSDT",
        "BTC/USDT",
        "BTC\\USDT",
        "BTC USDT",
        "BTC\tUSDT",
        "BTC\nUSDT",
        "BTC\x7fUSDT",
        "BTC\u200bUSDT",
        "BTC%2FUSDT",
        "X" * 33,
        None,
        42,
    ],
)
def test_unsafe_symbols_are_refused(symbol: object) -> None:
    with pytest.raises(UnsafeSymbol):
        check_symbol(symbol)


def test_asset_key_part_is_safe_and_injective() -> None:
    assert asset_key_part("BTCUSDT") == "BTCUSDT"
    key = asset_key_part("币安人生USDT")
    assert key == "_u5e01__u5b89__u4eba__u751f_USDT"
    assert all(c.isascii() and (c.isalnum() or c == "_") for c in key)
    assert asset_key_part("币安USDT") != asset_key_part("安币USDT")
