"""What the ``Streamer``'s parts share, for the type checker: ``GapFill`` (gapfill.py),
``DepthResync`` (resync.py), ``Takeover`` (takeover.py) and ``Reporting`` (report.py) are mixed
into ``Streamer`` (streamer.py) and read and write its state. Their methods take
``self: StreamerParts``, so mypy checks each part against this description and ``Streamer``
against it wherever it calls them. No runtime role: every import here is for annotations
only."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prometheus_client import Counter

    from ingest_pipeline.binance.rest import BinanceRestClient
    from ingest_pipeline.binance.stream import Link, ShardConnection
    from ingest_pipeline.records import Record
    from ingest_pipeline.settings import Settings
    from ingest_pipeline.storage.kinesis import ProducerClosedError, ProducerStats, RecordSink
    from ingest_pipeline.streaming.config import StreamerConfig
    from ingest_pipeline.streaming.continuity import AckTracker, GapStore, Resume, WeightPacer
    from ingest_pipeline.streaming.gapfill import TradeIds
    from ingest_pipeline.streaming.lease import S3Lease
    from ingest_pipeline.streaming.metrics import StreamerMetrics
    from ingest_pipeline.streaming.resync import DepthSync


class StreamerParts(Protocol):
    # --- state set up by Streamer.__init__ ---------------------------------------------------
    settings: Settings
    cfg: StreamerConfig
    symbols: tuple[str, ...]
    state: str
    started_at: float | None
    counts: collections.Counter[str]
    messages_in: dict[str, int]
    records_out: dict[str, int]
    duplicates: dict[str, int]
    gaps: collections.Counter[str]
    fills: collections.deque[dict[str, Any]]
    resyncs: collections.deque[dict[str, Any]]
    gap_records: list[dict[str, Any]]
    takeover: dict[str, Any]
    resume: dict[str, Resume]
    fenced: str | None
    lease: S3Lease | None
    epoch: int | None
    pacer: WeightPacer
    metrics: StreamerMetrics
    shards: list[ShardConnection]
    _routes: dict[str, str]
    _m_out: dict[str, Counter]
    _producer: RecordSink | None
    _trades: dict[str, TradeIds]
    _depth: dict[str, DepthSync]
    _depth_started: set[str]
    _last_u: dict[str, int]
    _last_gap: float | None
    _last_msg: dict[str, float]
    _last_msg_symbol: dict[tuple[str, str], float]
    _checkpoint_at: float | None
    _tasks: set[asyncio.Future[None]]
    _gap_writes: set[asyncio.Future[None]]
    _gap_store: GapStore | None
    _acks: AckTracker | None
    _rest: BinanceRestClient | None
    _rest_stop: threading.Event
    _loop: asyncio.AbstractEventLoop | None
    _stop: asyncio.Event | None

    # --- Streamer's own methods the parts call -----------------------------------------------
    def _emit(
        self,
        data_type: str,
        stream: str,
        record: dict[str, Any],
        symbol: str,
        raw: Any,
        ingest_ts: int,
        link: Link | None,
    ) -> bool: ...
    def _dead_letter(self, reason: str, raw: Any, ingest_ts: int, link: Link | None) -> None: ...
    def _lapsed(self) -> None: ...
    def _refused(self, exc: ProducerClosedError) -> None: ...
    def _producer_stats(self) -> ProducerStats | None: ...
    def _reconnect_reasons(self) -> dict[str, int]: ...
    def stop(self) -> None: ...

    # --- GapFill ------------------------------------------------------------------------------
    def _can_fill(self) -> bool: ...
    def _on_trade(
        self, tid: int, record: Record, raw: Any, ingest_ts: int, link: Link | None
    ) -> None: ...
    def _put_trade(
        self, symbol: str, st: TradeIds, record: Record, raw: Any, ingest_ts: int,
        link: Link | None,
    ) -> bool: ...  # fmt: skip
    @staticmethod
    def _advance(st: TradeIds, tid: int) -> None: ...
    @staticmethod
    def _next_missing(st: TradeIds) -> int: ...
    def _start_fill(self, symbol: str, open_ended: bool) -> None: ...
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Future[None]: ...
    def _release_held(self, symbol: str, st: TradeIds) -> None: ...
    async def _fill(self, symbol: str, open_ended: bool) -> None: ...
    def _emit_fill(
        self, symbol: str, st: TradeIds, items: list[Any], received_ms: int, nxt: int,
        hi: int | None,
    ) -> int: ...  # fmt: skip
    def _unfilled(self, symbol: str, first: int, last: int, reason: str) -> None: ...
    def _close_gaps(self, st: TradeIds, tid: int, ts: int | None) -> None: ...
    async def _write_gap(self, gap: dict[str, Any]) -> None: ...
    def _rest_client(self) -> BinanceRestClient: ...
    def _rest_sleep(self, seconds: float) -> None: ...
    async def _rest_get(self, path: str, params: dict[str, Any], weight: int) -> Any: ...

    # --- DepthResync --------------------------------------------------------------------------
    def _need_resync(self, symbol: str, first_update_id: int) -> None: ...
    async def _resync(self, symbol: str) -> None: ...

    # --- Takeover -----------------------------------------------------------------------------
    def _checkpoint(self) -> dict[str, Any]: ...

    # --- Reporting ----------------------------------------------------------------------------
    def _continuity_health(self, filling: int, resyncing: int) -> dict[str, Any]: ...
