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


class EncodedRecords(Sequence[Record]):
    """One hour's records of one symbol as JSON lines (``jsonl``, one ``\\n``-terminated line per
    record, exactly what bronze's serializer writes for them), the same lines with every
    ``ingest_ts`` zeroed (``masked``, what the content fingerprint hashes) and int64 columns
    by record field (at least the time and id fields)."""

    def __init__(
        self,
        symbol: str,
        jsonl: bytes,
        masked: bytes,
        columns: dict[str, np.ndarray],
    ) -> None:
        self.symbol = symbol
        self.jsonl = jsonl
        self.masked = masked
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
            last = len(self.jsonl) - 1
            if index == 0:
                return orjson.loads(self.jsonl[: self.jsonl.find(b"\n")])  # type: ignore[no-any-return]
            return orjson.loads(self.jsonl[self.jsonl.rfind(b"\n", 0, last) + 1 : last])  # type: ignore[no-any-return]
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
            lines = self.jsonl[:-1].replace(b"\n", b",")
            self._decoded = orjson.loads(b"[" + lines + b"]") if self._size else []
        return self._decoded


def int_column(records: Sequence[Record], name: str) -> np.ndarray:
    """The int64 values of field ``name`` of every record, in order."""
    if isinstance(records, EncodedRecords) and name in records.columns:
        return records.columns[name]
    return np.fromiter(map(operator.itemgetter(name), records), np.int64, len(records))
