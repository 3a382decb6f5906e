"""Records that arrive already serialized as bronze's JSON lines, with the columns to judge them.

An archive file's bulk rows become bronze's JSON lines without ever being Python dicts
(``binance/archive_csv.py``): a dict per trade and its serialization cost several times more
than gzip of the result. Bronze writes those bytes as they are and its checks read the integer
columns; whoever wants the records themselves (a preview, a Dagster quality check) gets them
decoded from the lines, once, the slow way.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np
import orjson

from ingest_pipeline.records import Record

# Bytes, or a view of some: the lines of one block of the writer without a copy.
Chunk = bytes | memoryview


class EncodedRecords(Sequence[Record]):
    """One hour's records of one symbol as JSON lines in chunks (``jsonl``: each chunk whole
    newline-terminated lines, one per record, exactly what bronze's serializer writes for
    them), the same lines with every ``ingest_ts`` zeroed (``masked``, what the content
    fingerprint hashes) and int64 columns by record field (at least the time and id fields).
    Chunks are kept as they came: joining an hour's ~30 MB would cost a copy."""

    def __init__(
        self,
        symbol: str,
        jsonl: Sequence[Chunk],
        masked: Sequence[Chunk],
        columns: dict[str, np.ndarray],
    ) -> None:
        self.symbol = symbol
        self.jsonl = [c for c in jsonl if len(c)]
        self.masked = [c for c in masked if len(c)]
        self.columns = columns
        self._size = len(next(iter(columns.values())))
        self._decoded: list[Record] | None = None

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...

    def __getitem__(self, index: int | slice) -> Record | list[Record]:
        if self._decoded is None and isinstance(index, int) and index in (0, -1):
            # The first and last record (an object's key bounds) without decoding the rest.
            if not self._size:
                raise IndexError(index)
            return orjson.loads(_edge_line(self.jsonl[0] if index == 0 else self.jsonl[-1], index))  # type: ignore[no-any-return]
        return self.decoded()[index]

    def __eq__(self, other: object) -> bool:
        # Equal to any sequence of the same records, as a list of them would be.
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(other) == self._size and self.decoded() == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EncodedRecords({self.symbol!r}, {self._size} records)"

    def __iter__(self) -> Iterator[Record]:
        return iter(self.decoded())

    def decoded(self) -> list[Record]:
        """The records as dicts (decoded once, then kept)."""
        if self._decoded is None:
            lines = b"".join(self.jsonl)[:-1].replace(b"\n", b",")
            self._decoded = orjson.loads(b"[" + lines + b"]") if self._size else []
        return self._decoded


def _edge_line(chunk: Chunk, index: int) -> bytes:
    """The first (``index`` 0) or last (-1) line of a chunk of whole lines, reading only as
    much of it as that line needs."""
    n = 4096
    while True:
        part = bytes(chunk[:n] if index == 0 else chunk[-n:])
        if index == 0 and (cut := part.find(b"\n")) >= 0:
            return part[:cut]
        if index == -1 and ((cut := part.rfind(b"\n", 0, len(part) - 1)) >= 0 or n >= len(chunk)):
            return part[cut + 1 :]
        n *= 2


def int_column(records: Sequence[Record], name: str) -> np.ndarray:
    """The int64 values of field ``name`` of every record, in order."""
    if isinstance(records, EncodedRecords) and name in records.columns:
        return records.columns[name]
    return np.fromiter(map(operator.itemgetter(name), records), np.int64, len(records))
