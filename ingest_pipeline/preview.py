"""Records and sizes as people read them in an hour's metadata: pure, no Dagster.

The asset layer wraps these texts in Dagster's metadata values (``defs/bronze.py``).
"""

import heapq
from collections.abc import Sequence
from typing import Any

from ingest_pipeline.records import Record, record_key
from ingest_pipeline.timeutil import iso_ms

PREVIEW_ROWS = 5


def human_size(n: int) -> str:
    """``1.21 MB (1,213,441 bytes)``: decimal units, as S3 reports sizes."""
    size, unit = float(n), "bytes"
    for u in ("kB", "MB", "GB", "TB"):
        if size < 1000:
            break
        size, unit = size / 1000, u
    exact = f"{n:,} bytes"
    return exact if unit == "bytes" else f"{size:.3g} {unit} ({exact})"


# Fields holding epoch-ms times: shown as ISO times in previews.
TIME_FIELDS = {"event_ts", "ingest_ts", "timestamp", "open_time", "close_time"}


def _cell(name: str, value: Any) -> str:
    if name in TIME_FIELDS and isinstance(value, int):
        text = iso_ms(value)
    elif isinstance(value, list):
        # Book levels would make a preview unreadable: show their count only.
        text = f"[{len(value)} levels]"
    else:
        text = str(value)
    return text.replace("|", "\\|")


def preview_table(records: Sequence[Record], data_type: str, rows: int = PREVIEW_ROWS) -> str:
    """The first records of the object (by record key) as a markdown table; times as ISO UTC."""
    first = heapq.nsmallest(rows, records, key=record_key(data_type))  # type: ignore[arg-type]
    if not first:
        return "(no records)"
    cols = [c for c in first[0] if c != "symbol"]
    head = "| " + " | ".join(f"{c} (UTC)" if c in TIME_FIELDS else c for c in cols) + " |\n"
    head += "|" + "---|" * len(cols) + "\n"
    body = "".join("| " + " | ".join(_cell(c, r.get(c, "")) for c in cols) + " |\n" for r in first)
    return head + body
