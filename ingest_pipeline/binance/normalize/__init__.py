"""Binance spot payloads -> records (SPEC §1, §2). Pure functions: no I/O, no logging.

Every function either returns a record or raises ``MalformedPayload`` whose ``reason`` names the
offending field and whose ``raw`` is the payload as received; no other exception escapes.

Validation rules, the same everywhere:

- ids and timestamps are JSON integers >= 0 (``true``/``false``, floats and strings are refused);
- prices and sizes are JSON strings that ``float`` parses to a finite number; prices and trade
  quantities must be > 0, volumes and depth-diff sizes >= 0 (a diff size "0" removes a level),
  snapshot and bookTicker sizes > 0;
- ``bids``/``asks`` are kept exactly as sent (lists of ``[price, size]`` strings) after the same
  checks. Formats ``float`` accepts but Binance never sends (``"1e5"``, ``" 1"``, ``"1_0"``) are
  not refused: a strict character check costs ~75 ns a string, ~2 us on a typical depth diff;
- a payload symbol is a non-empty string of letters and digits (Unicode letters allowed) and
  Binance's documented ``-``, ``_``, ``.`` after its first character (``symbols.py`` admits the same
  alphabet), never ``..``: it can never smuggle ``/`` or ``..`` into an S3 key.

Speed: each normalizer reads the fields and checks them in one expression on the fast path; only
when that fails does ``checks.diagnose`` walk a field spec to find which field is wrong. A
failure costs microseconds more, a good message nothing.

The normalizers live by source: ``rest.py`` (REST items and pages), ``ws.py`` (WebSocket
payloads and the frame dispatcher), ``checks.py`` (the checks both share). Import them from here.
"""

from ingest_pipeline.binance.normalize.rest import (
    Rejected,
    agg_trade_from_rest,
    depth_snapshot_from_rest,
    kline_from_rest,
    normalize_page,
    trade_from_rest,
)
from ingest_pipeline.binance.normalize.ws import (
    AGG_TRADE,
    CONTROL,
    KLINE,
    SERVER_SHUTDOWN,
    agg_trade_from_ws,
    bba_from_ws,
    depth_delta_from_ws,
    kline_from_ws,
    parse_ws_message,
    trade_from_ws,
)
from ingest_pipeline.records import BBA, DEPTH_DELTA, TRADE

__all__ = [
    "AGG_TRADE",
    "BBA",
    "CONTROL",
    "DEPTH_DELTA",
    "KLINE",
    "SERVER_SHUTDOWN",
    "TRADE",
    "Rejected",
    "agg_trade_from_rest",
    "agg_trade_from_ws",
    "bba_from_ws",
    "depth_delta_from_ws",
    "depth_snapshot_from_rest",
    "kline_from_rest",
    "kline_from_ws",
    "normalize_page",
    "parse_ws_message",
    "trade_from_rest",
    "trade_from_ws",
]
