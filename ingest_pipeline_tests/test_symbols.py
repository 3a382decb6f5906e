import pytest

from ingest_pipeline.symbols import (
    UnsafeSymbol,
    asset_key_part,
    check_symbol,
    normalize_symbol,
    parse_symbols,
)


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


@pytest.mark.parametrize(
    ("symbol", "why"),
    [
        ("btcusdt", "lowercase"),  # the guard takes canonical symbols only
        ("ＢＴＣＵＳＤＴ", "compatibility character 'Ｂ'.*write 'B'"),
        ("BTCUSDⓉ", "compatibility character"),  # circled letter
        ("ﬁUSDT", "compatibility character"),  # ligature
        ("BTCUSDΤ", "letter 'Τ'.*GREEK"),  # Greek capital tau, looks like T
        ("BTCUSDТ", "letter 'Т'.*CYRILLIC"),  # Cyrillic capital te
        ("BTCǀUSDT", "letter 'ǀ'.*LATIN"),  # caseless Latin letter, looks like |
        ("BTC\u3164USDT", "compatibility character"),  # Hangul filler, renders as nothing
        ("BTC\u115fUSDT", "invisible filler"),  # Hangul choseong filler, invisible
        ("BTC\u200dUSDT", "control character"),  # zero-width joiner (a format character)
        ("BTC@trade", "'@'"),
        ("btcusdt@trade/ethusdt", "path separator|lowercase|'@'"),
        ("BTC٣USDT", "character"),  # Arabic-Indic digit
        ("-BTC", "start with a letter or digit"),
        ("A..B", "'..'"),
    ],
)
def test_refusals_name_the_symbol_and_the_reason(symbol: str, why: str) -> None:
    with pytest.raises(UnsafeSymbol, match=why) as refused:
        check_symbol(symbol)
    assert repr(symbol)[:40] in str(refused.value)


def test_normalize_upper_cases_ascii_only_and_names_the_input() -> None:
    assert normalize_symbol("btcusdt") == "BTCUSDT"
    assert normalize_symbol("币安人生usdt") == "币安人生USDT"
    with pytest.raises(UnsafeSymbol, match="'ｂｔｃ'"):  # fullwidth lowercase: not folded
        normalize_symbol("ｂｔｃ")
    with pytest.raises(UnsafeSymbol, match="'../etc'"):  # named as given, not upper-cased
        normalize_symbol("../etc")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("BTCUSDT", ("BTCUSDT",)),
        (" btcusdt , ETHUSDT ", ("BTCUSDT", "ETHUSDT")),
        (["BTCUSDT", "币安人生USDT"], ("BTCUSDT", "币安人生USDT")),
    ],
)
def test_parse_symbols_accepts_lists_and_strings(given: object, expected: tuple) -> None:
    assert parse_symbols(given) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("", "no symbols"),
        (",", "empty symbol at position 1"),
        ("BTCUSDT,,ETHUSDT", "empty symbol at position 2"),
        ("BTCUSDT,btcusdt", "'BTCUSDT' is listed twice"),
        ([], "no symbols"),
        (["BTCUSDT", 7], "must be a string, got 7"),
    ],
)
def test_parse_symbols_refuses_empty_and_repeated(given: object, why: str) -> None:
    with pytest.raises(UnsafeSymbol, match=why):
        parse_symbols(given)  # type: ignore[arg-type]
