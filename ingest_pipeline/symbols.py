"""Symbol safety (SPEC §5): a symbol reaches URLs and S3 keys, so it is checked before either."""

from __future__ import annotations

import re
import unicodedata

# Binance symbols are short; the cap keeps a hostile value from producing absurd keys or URLs.
MAX_SYMBOL_LENGTH = 32
_ASSET_KEY_SAFE = re.compile(r"[A-Za-z0-9_]")


class UnsafeSymbol(ValueError):
    """A symbol that must not reach a URL or an S3 key."""


def check_symbol(symbol: object) -> str:
    """Return ``symbol`` if it is safe to put in a URL or S3 key, else raise ``UnsafeSymbol``.

    Letters of any script are allowed (Binance lists symbols such as ``币安人生USDT``); path
    separators, ``..``, whitespace, control and format characters are not.
    """
    if not isinstance(symbol, str) or not symbol:
        raise UnsafeSymbol(f"symbol must be a non-empty string, got {symbol!r}")
    if len(symbol) > MAX_SYMBOL_LENGTH:
        raise UnsafeSymbol(
            f"symbol {symbol[:40]!r}... is longer than {MAX_SYMBOL_LENGTH} characters"
        )
    if not symbol[0].isalnum():
        raise UnsafeSymbol(f"symbol {symbol!r} must start with a letter or digit")
    if "/" in symbol or "\\" in symbol or ".." in symbol:
        raise UnsafeSymbol(f"symbol {symbol!r} contains a path separator or '..'")
    for ch in symbol:
        category = unicodedata.category(ch)
        if ch.isspace() or category.startswith("C") or category.startswith("Z"):
            raise UnsafeSymbol(f"symbol {symbol!r} contains whitespace or a control character")
        if not (ch.isalnum() or ch in "-_."):
            raise UnsafeSymbol(f"symbol {symbol!r} contains the character {ch!r}")
    return symbol


def asset_key_part(symbol: str) -> str:
    """A Dagster asset-key-safe name (``[A-Za-z0-9_]``) for a symbol, unique per symbol.

    ASCII symbols map to themselves; any other character becomes ``_u<hex>_`` so that two
    distinct symbols never share a key. The real symbol is kept in asset metadata.
    """
    return "".join(ch if _ASSET_KEY_SAFE.fullmatch(ch) else f"_u{ord(ch):x}_" for ch in symbol)
