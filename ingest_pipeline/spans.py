"""Spans of time ``[start, end)`` in epoch ms: the algebra coverage is written in.

A span list is kept *normal*: sorted, disjoint, non-empty, touching spans merged. Bronze
objects record which spans of their hour the source covered (``storage.bronze``); features
treat what lies outside them as unknown (``features.coverage``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Span = tuple[int, int]
Spans = tuple[Span, ...]


def normalize(spans: Iterable[Sequence[int]]) -> Spans:
    """Sorted, disjoint, non-empty spans; overlapping or touching spans are merged."""
    out: list[list[int]] = []
    for start, end in sorted((int(s), int(e)) for s, e in spans):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return tuple((s, e) for s, e in out)


def clip(spans: Iterable[Sequence[int]], lo: int, hi: int) -> Spans:
    """The parts of ``spans`` inside ``[lo, hi)``."""
    return normalize((max(s, lo), min(e, hi)) for s, e in spans)


def subtract(spans: Iterable[Sequence[int]], lo: int, hi: int) -> Spans:
    """``spans`` without ``[lo, hi)``."""
    out: list[Span] = []
    for s, e in normalize(spans):
        if e <= lo or s >= hi:
            out.append((s, e))
            continue
        if s < lo:
            out.append((s, lo))
        if e > hi:
            out.append((hi, e))
    return tuple(out)


def length(spans: Iterable[Sequence[int]]) -> int:
    """Total ms covered."""
    return sum(e - s for s, e in normalize(spans))


def gaps(spans: Iterable[Sequence[int]], lo: int, hi: int) -> Spans:
    """The parts of ``[lo, hi)`` that ``spans`` leave out."""
    out: list[Span] = []
    at = lo
    for s, e in clip(spans, lo, hi):
        if s > at:
            out.append((at, s))
        at = e
    if at < hi:
        out.append((at, hi))
    return tuple(out)
