"""Symbol safety (SPEC §5): a symbol reaches URLs, stream names and S3 keys, so it is checked
before any of them, by one path whatever its origin (config file, ``INGEST_SYMBOLS``, a CLI flag,
the ``Streamer`` constructor).

What a symbol may be (Binance lists uppercase ASCII symbols such as ``BTCUSDT`` and
``1000SATSUSDT``, and some with non-ASCII letters such as ``币安人生USDT``):

- 1 to ``MAX_SYMBOL_LENGTH`` characters, starting with a letter or digit;
- each character an ASCII uppercase letter or digit, one of ``-``, ``_``, ``.`` (Binance's
  documented symbol alphabet, never two dots in a row), or a non-Latin letter without case
  (CJK and other scripts that have no upper/lower case; invisible fillers excluded);
- unchanged by Unicode NFKC normalization.

Case: ``normalize_symbol`` upper-cases ASCII letters, so ``btcusdt`` on a command line means
``BTCUSDT`` (stream names spell symbols in lowercase; Binance's REST wants them upper). Nothing
else is ever rewritten: ``check_symbol``, the guard in front of URLs and keys, accepts only the
canonical form.

Compatibility characters are refused, never folded: fullwidth ``ＢＴＣ``, ligatures, circled or
superscript letters all have an NFKC form that differs from them, and folding would quietly make
one spelling land under another's keys. Non-ASCII cased letters (Greek ``Β``, Cyrillic ``В``, ...)
and caseless Latin letters (``ǀ``) are refused too: no listed symbol uses them and they are
look-alikes of ASCII letters and signs.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Binance symbols are short (at most 20 characters documented); the cap keeps a hostile value
# from producing absurd keys or URLs.
MAX_SYMBOL_LENGTH = 32
_ASSET_KEY_SAFE = re.compile(r"[A-Za-z0-9_]")
_ASCII_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Caseless letters that render as nothing (Hangul fillers): a symbol would look shorter than it is.
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")


class UnsafeSymbol(ValueError):
    """A symbol that must not reach a URL, a stream name or an S3 key."""


def _short(symbol: str) -> str:
    return repr(symbol) if len(symbol) <= 40 else f"{symbol[:40]!r}... ({len(symbol)} characters)"


def _refuse_char(shown: str, ch: str) -> UnsafeSymbol:
    where = f"symbol {_short(shown)}"
    name = unicodedata.name(ch, "unnamed")
    code = f"{ch!r} (U+{ord(ch):04X} {name})"
    if ch in "/\\":
        return UnsafeSymbol(f"{where} contains a path separator {code}")
    if ch.isspace() or unicodedata.category(ch)[0] in "CZ":
        return UnsafeSymbol(f"{where} contains whitespace or a control character {code}")
    folded = unicodedata.normalize("NFKC", ch)
    if folded != ch:
        return UnsafeSymbol(
            f"{where} contains the compatibility character {code}; write {folded!r} instead"
        )
    if ch in _INVISIBLE_LETTERS:
        return UnsafeSymbol(f"{where} contains the invisible filler {code}")
    if "a" <= ch <= "z":
        return UnsafeSymbol(f"{where} has lowercase letters: Binance symbols are uppercase")
    if ch.isalpha():
        return UnsafeSymbol(
            f"{where} contains the letter {code}: symbol letters are ASCII uppercase or "
            "non-Latin letters without case (such as CJK); cased and Latin look-alikes are not"
        )
    return UnsafeSymbol(f"{where} contains the character {code}")


def _check(symbol: object, shown: object) -> str:
    if not isinstance(symbol, str) or not isinstance(shown, str):
        raise UnsafeSymbol(f"symbol must be a string, got {shown!r}")
    if not symbol:
        raise UnsafeSymbol("empty symbol")
    if len(symbol) > MAX_SYMBOL_LENGTH:
        raise UnsafeSymbol(f"symbol {_short(shown)} is longer than {MAX_SYMBOL_LENGTH} characters")
    for ch in symbol:
        if ch in _ASCII_ALLOWED:
            continue
        if (
            not ch.isascii()
            and unicodedata.category(ch) == "Lo"
            and unicodedata.normalize("NFKC", ch) == ch
            and ch not in _INVISIBLE_LETTERS
            and not unicodedata.name(ch, "").startswith("LATIN ")
        ):
            continue
        raise _refuse_char(shown, ch)
    if symbol[0] in "-_.":
        raise UnsafeSymbol(f"symbol {_short(shown)} must start with a letter or digit")
    if ".." in symbol:
        raise UnsafeSymbol(f"symbol {_short(shown)} contains '..'")
    if unicodedata.normalize("NFKC", symbol) != symbol:
        raise UnsafeSymbol(f"symbol {_short(shown)} is not in Unicode NFKC form")
    return symbol


def check_symbol(symbol: object) -> str:
    """Return ``symbol`` if it is a canonical, safe symbol (see the module docstring), else
    raise ``UnsafeSymbol`` naming it and what is wrong."""
    return _check(symbol, symbol)


def normalize_symbol(symbol: object) -> str:
    """User input -> canonical symbol: ASCII letters upper-cased, then checked like
    ``check_symbol``; an error names the symbol as given."""
    if isinstance(symbol, str):
        return _check(symbol.translate(_ASCII_UPPER), symbol)
    return _check(symbol, symbol)


def parse_symbols(symbols: str | Iterable[object]) -> tuple[str, ...]:
    """The one way in for a list of symbols: a comma-separated string (spaces around the
    commas are ignored) or an iterable. Each is normalized and checked; an empty list, an empty
    item or a symbol given twice is refused."""
    if isinstance(symbols, str):
        items: list[object] = [s.strip(" \t") for s in symbols.split(",")]
    else:
        items = list(symbols)
    if not items or items == [""]:
        raise UnsafeSymbol("no symbols given")
    out: list[str] = []
    for position, item in enumerate(items, 1):
        if item == "":
            raise UnsafeSymbol(f"empty symbol at position {position} of the list")
        symbol = normalize_symbol(item)
        if symbol in out:
            raise UnsafeSymbol(f"symbol {symbol!r} is listed twice")
        out.append(symbol)
    return tuple(out)


def is_key_safe(name: str) -> bool:
    """``name`` can be an asset key part as it is (``[A-Za-z0-9_]+``)."""
    return bool(name) and all(_ASSET_KEY_SAFE.fullmatch(ch) for ch in name)


def asset_key_part(symbol: str) -> str:
    """A Dagster asset-key-safe name (``[A-Za-z0-9_]``) for a symbol, unique per symbol.

    ASCII symbols map to themselves; any other character becomes ``_u<hex>_`` so that two
    distinct symbols never share a key. The real symbol is kept in asset metadata; a configured
    alias (``Settings.key_part``) reads better.
    """
    return "".join(ch if _ASSET_KEY_SAFE.fullmatch(ch) else f"_u{ord(ch):x}_" for ch in symbol)
