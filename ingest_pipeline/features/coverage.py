"""Coverage: which spans of time a source was listened to, and what that means for a row.

A *covered* span ``[start, end)`` (epoch ms, in the source's own clock: trade time ``T``, diff
``E``, BBA receive time, kline ``close_time``) is one in which every record of the source that
exists is in our data. Outside coverage we do not know what happened: a hole in a capture,
streamer downtime that was not filled, a missing hour, the time before a computation starts.

What a row makes of it (both forms, see ``formulas``):

- a *bucket* ``[ts - step, ts)`` is known only when it lies inside one covered span;
- a *state* (last trade price, BBA, book, kline) established by a record at time ``e`` still
  holds at ``ts`` only when no uncovered time lies in ``(e, ts)``: the latest start of coverage
  before ``ts`` (:meth:`CoverageIndex.gap_end`) must not be later than ``e``. Nothing is carried
  forward across a hole.

Both conditions are one lookup, ``g(ts)``: the end of the last uncovered span that starts
before ``ts`` (equivalently the start of the covered span ``ts`` belongs to, or a time after
``ts`` when ``ts`` is not covered). A bucket is known iff ``g(ts) <= ts - step``; a state set at
``e`` holds iff ``e >= g(ts)``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ingest_pipeline.spans import Span, normalize

# Sources of the feature columns, each with its own coverage.
TRADE_SOURCE = "trade"
BBA_SOURCE = "bba"
DEPTH_SOURCE = "depth"
KLINE_SOURCE = "kline"
SOURCES = (TRADE_SOURCE, BBA_SOURCE, DEPTH_SOURCE, KLINE_SOURCE)

# Later than any time: the start of "coverage" after the last covered span.
NEVER = 2**62


class CoverageIndex:
    """``g(ts)`` lookups over sorted disjoint covered spans, vectorized or one at a time."""

    def __init__(self, spans: Iterable[Sequence[int]]) -> None:
        self.spans = normalize(spans)
        self._starts = [s for s, _ in self.spans] + [NEVER]
        self._ends = [e for _, e in self.spans]
        self._starts_np = np.array(self._starts, dtype=np.int64)
        self._ends_np = np.array(self._ends, dtype=np.int64)

    def gap_end(self, ts: np.ndarray) -> np.ndarray:
        """Per ts: the start of the covered span holding ``[.., ts)``'s end, i.e. the end of
        the last uncovered span that starts before ts (``NEVER`` after the last span)."""
        return self._starts_np[np.searchsorted(self._ends_np, ts, side="left")]

    def gap_end_at(self, ts: int) -> int:
        return self._starts[bisect.bisect_left(self._ends, ts)]


def index_all(
    coverage: Mapping[str, Iterable[Sequence[int]]] | None, default: Iterable[Span]
) -> dict[str, CoverageIndex]:
    """One index per source; a source missing from ``coverage`` is covered by ``default``."""
    coverage = coverage or {}
    default = tuple(default)
    return {s: CoverageIndex(coverage.get(s, default)) for s in SOURCES}
