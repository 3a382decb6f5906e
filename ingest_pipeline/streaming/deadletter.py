"""Local dead-letter files for frames that could not become records (SPEC §2: never dropped
silently). One JSON object per line, one file per UTC hour of the receive time:
``<dir>/ws-deadletter-YYYYMMDDHH.jsonl`` with ``ingest_ts``, ``reason``, ``raw`` (the frame as
received: text, or base64 with ``raw_encoding: "base64"`` for a binary frame that is not UTF-8)
and ``link`` (the connection that received it)."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

HOUR_MS = 3_600_000


class DeadLetterWriter:
    def __init__(self, directory: str | os.PathLike[str], prefix: str = "ws-deadletter") -> None:
        self.dir = Path(directory)
        self.prefix = prefix
        self._hour: int | None = None
        self._fh: IO[bytes] | None = None
        self.written = 0

    def path_for(self, ingest_ts: int) -> Path:
        hour = datetime.fromtimestamp(ingest_ts // HOUR_MS * 3600, UTC)
        return self.dir / f"{self.prefix}-{hour:%Y%m%d%H}.jsonl"

    def write(self, reason: str, raw: Any, ingest_ts: int, **extra: Any) -> None:
        hour = ingest_ts // HOUR_MS
        if hour != self._hour or self._fh is None:
            self.close()
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path_for(ingest_ts), "ab")
            self._hour = hour
        entry: dict[str, Any] = {"ingest_ts": ingest_ts, "reason": reason}
        if isinstance(raw, bytes | bytearray | memoryview):
            try:
                entry["raw"] = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                entry["raw"] = base64.b64encode(bytes(raw)).decode("ascii")
                entry["raw_encoding"] = "base64"
        elif isinstance(raw, str):
            entry["raw"] = raw
        else:
            entry["raw"] = raw  # already parsed JSON (orjson serializes it)
            entry["raw_encoding"] = "json"
        entry.update(extra)
        self._fh.write(orjson.dumps(entry, default=repr) + b"\n")
        # Rare by nature: flush each entry so a crash does not lose the evidence.
        self._fh.flush()
        self.written += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
