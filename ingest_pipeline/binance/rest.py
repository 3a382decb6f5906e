"""Binance spot REST client: weight-aware, bounded retries with jittered backoff, hour paging.

Rules it keeps (SPEC §1): every response reports the IP's weight used this minute in
``X-MBX-USED-WEIGHT-1M``; past the limit Binance answers 429 with ``Retry-After``, and a client
that keeps sending during that wait earns a 418 IP ban. So the client slows down *before* the
limit and, after a 429, sends nothing at all until ``Retry-After`` has passed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
import requests

from ingest_pipeline.symbols import check_symbol
from ingest_pipeline.timeutil import HOUR_MS

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PAGE = 1000
DEFAULT_WEIGHT_LIMIT = 6000
WEIGHT_AGG_TRADES = 4
WEIGHT_HISTORICAL_TRADES = 25
WEIGHT_KLINES = 2
WEIGHT_EXCHANGE_INFO = 20


def depth_weight(limit: int) -> int:
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


class BinanceError(Exception):
    """Base of the client's errors."""


class BinanceAPIError(BinanceError):
    """Binance refused the request (4xx with a ``{"code", "msg"}`` body): retrying cannot help."""

    def __init__(self, status: int, code: int | None, msg: str, path: str) -> None:
        super().__init__(f"{path}: HTTP {status}, code {code}: {msg}")
        self.status, self.code, self.msg, self.path = status, code, msg, path


class BinanceUnavailable(BinanceError):
    """Retries exhausted on 5xx, timeouts, broken bodies, or a ban longer than we may wait."""


@dataclass(frozen=True)
class Page:
    """One response body and the local receive time (epoch ms), which becomes ``ingest_ts``.
    ``items`` is the body as decoded JSON: an array for the paged endpoints, an object for
    ``time``, ``exchangeInfo`` and ``depth``."""

    items: Any
    received_ms: int


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    throttled_429: int = 0
    banned_418: int = 0
    weight_waits: int = 0
    weight_wait_s: float = 0.0


class BinanceRestClient:
    """Synchronous client for Binance's public spot market-data endpoints."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float = 3.05,
        read_timeout_s: float = 10.0,
        max_attempts: int = 8,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 20.0,
        max_wait_s: float = 180.0,
        weight_limit: int = DEFAULT_WEIGHT_LIMIT,
        weight_headroom: float = 0.03,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.max_wait_s = max_wait_s
        self.weight_limit = weight_limit
        # Headroom leaves a little of the shared per-IP budget to other processes on this IP.
        self.weight_headroom = weight_headroom
        self.stats = ClientStats()
        self._session = session or requests.Session()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._used_weight = 0
        self._weight_minute = -1
        self._blocked_until = 0.0

    # --- transport -------------------------------------------------------------------------

    def get(self, path: str, params: dict[str, Any], weight: int) -> Page:
        """GET ``path`` with retries; returns the parsed JSON body."""
        url = self.base_url + path
        query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
        last_problem = "no attempt made"
        for attempt in range(self.max_attempts):
            if attempt:
                self.stats.retries += 1
            self._wait_for_budget(weight)
            self.stats.requests += 1
            try:
                resp = self._session.get(f"{url}?{query}" if query else url, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
                self._backoff(attempt, path, last_problem)
                continue
            received_ms = int(self._clock() * 1000)
            self._note_weight(resp.headers.get("X-MBX-USED-WEIGHT-1M"))
            status = resp.status_code
            if status in (429, 418):
                wait = self._retry_after(resp)
                if status == 429:
                    self.stats.throttled_429 += 1
                else:
                    self.stats.banned_418 += 1
                last_problem = f"HTTP {status}, Retry-After {wait:.0f} s"
                if wait > self.max_wait_s:
                    raise BinanceUnavailable(
                        f"{path}: {last_problem} exceeds the {self.max_wait_s} s we may wait"
                    )
                log.warning("binance %s: HTTP %s, backing off %.1f s", path, status, wait)
                with self._lock:
                    self._blocked_until = max(self._blocked_until, self._clock() + wait)
                continue
            if status >= 500:
                last_problem = f"HTTP {status}"
                self._backoff(attempt, path, last_problem)
                continue
            try:
                body = orjson.loads(resp.content)
            except orjson.JSONDecodeError:
                body = None
            if status >= 400:
                if isinstance(body, dict) and "code" in body:
                    raise BinanceAPIError(status, body.get("code"), str(body.get("msg")), path)
                raise BinanceAPIError(status, None, resp.text[:200], path)
            if body is None:
                last_problem = f"unparseable body ({len(resp.content)} bytes)"
                self._backoff(attempt, path, last_problem)
                continue
            return Page(body, received_ms)
        raise BinanceUnavailable(
            f"{path}: gave up after {self.max_attempts} attempts: {last_problem}"
        )

    def _backoff(self, attempt: int, path: str, problem: str) -> None:
        # Full jitter: spreads the retries of many clients after a shared outage.
        delay = self._rng.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**attempt))
        log.warning("binance %s: %s; retry %d in %.2f s", path, problem, attempt + 1, delay)
        self._sleep(delay)

    def _retry_after(self, resp: requests.Response) -> float:
        try:
            return max(0.0, float(resp.headers["Retry-After"]))
        except (KeyError, ValueError):
            return 60.0 - self._clock() % 60.0

    def _note_weight(self, header: str | None) -> None:
        if header is None or not header.isdigit():
            return
        with self._lock:
            minute = int(self._clock() // 60)
            if minute >= self._weight_minute:
                self._weight_minute = minute
                self._used_weight = int(header)

    def _wait_for_budget(self, weight: int) -> None:
        """Sleep through any 429/418 wait, then until the minute has room for ``weight``."""
        while True:
            with self._lock:
                now = self._clock()
                wait = self._blocked_until - now
                if wait <= 0:
                    minute = int(now // 60)
                    if minute != self._weight_minute:
                        self._weight_minute, self._used_weight = minute, 0
                    budget = self.weight_limit * (1 - self.weight_headroom)
                    if self._used_weight + weight <= budget:
                        # Count it now so concurrent callers in this process see it too.
                        self._used_weight += weight
                        return
                    # Binance's weight window is the calendar minute: wait for the next one.
                    wait = (minute + 1) * 60 - now + 0.05
                    self.stats.weight_waits += 1
                    self.stats.weight_wait_s += wait
                    log.info("binance weight %d of %.0f used this minute: waiting %.1f s for "
                             "the next", self._used_weight, budget, wait)  # fmt: skip
            self._sleep(wait)

    # --- endpoints -------------------------------------------------------------------------

    def ping(self) -> None:
        self.get("/api/v3/ping", {}, 1)

    def server_time(self) -> int:
        return int(self.get("/api/v3/time", {}, 1).items["serverTime"])

    def exchange_info(self, symbol: str | None = None) -> dict[str, Any]:
        """``exchangeInfo`` (one symbol or all); adopts the REQUEST_WEIGHT limit it announces."""
        params = {"symbol": check_symbol(symbol)} if symbol else {}
        info: dict[str, Any] = self.get("/api/v3/exchangeInfo", params, WEIGHT_EXCHANGE_INFO).items
        for limit in info.get("rateLimits", []):
            if limit.get("rateLimitType") == "REQUEST_WEIGHT" and limit.get("interval") == "MINUTE":
                self.weight_limit = int(limit["limit"]) // int(limit.get("intervalNum", 1))
        return info

    def agg_trades_page(self, symbol: str, **params: int) -> Page:
        return self.get(
            "/api/v3/aggTrades", {"symbol": check_symbol(symbol), **params}, WEIGHT_AGG_TRADES
        )

    def agg_trades_hour(self, symbol: str, hour_ms: int) -> Iterator[Page]:
        """Every aggTrade with ``T`` in ``[hour, hour + 1h)``, page by page, no gap, no overlap.

        The first call is bounded by time (both bounds inclusive, so the end is ``hour+1h-1``);
        after it the pages follow ``fromId`` = last id + 1, which stays exact however many
        trades share one millisecond. It stops at the first trade past the hour, or at a short
        page (the live edge of the current hour).
        """
        end = hour_ms + HOUR_MS
        page = self.agg_trades_page(symbol, startTime=hour_ms, endTime=end - 1, limit=MAX_PAGE)
        while page.items:
            inside = [t for t in page.items if not _at_or_after(t, "T", end)]
            if inside:
                yield Page(inside, page.received_ms)
            if len(inside) < len(page.items) or len(page.items) < MAX_PAGE:
                return
            page = self.agg_trades_page(
                symbol, fromId=_next_id(page.items[-1], "a"), limit=MAX_PAGE
            )

    def historical_trades_range(self, symbol: str, first_id: int, last_id: int) -> Iterator[Page]:
        """Every trade with ``first_id <= id <= last_id``, paged by ``fromId``."""
        from_id = first_id
        while from_id <= last_id:
            page = self.get(
                "/api/v3/historicalTrades",
                {"symbol": check_symbol(symbol), "fromId": from_id, "limit": MAX_PAGE},
                WEIGHT_HISTORICAL_TRADES,
            )
            if not page.items:
                return
            inside = [t for t in page.items if not _id_above(t, last_id)]
            if inside:
                yield Page(inside, page.received_ms)
            if len(inside) < len(page.items):
                return
            from_id = _next_id(page.items[-1], "id")

    def klines(self, symbol: str, interval: str, start_ms: int, end_ms: int) -> Iterator[Page]:
        """Klines with open time in ``[start_ms, end_ms)``, paged by open time."""
        start = start_ms
        while start < end_ms:
            page = self.get(
                "/api/v3/klines",
                {
                    "symbol": check_symbol(symbol),
                    "interval": interval,
                    "startTime": start,
                    "endTime": end_ms - 1,
                    "limit": MAX_PAGE,
                },
                WEIGHT_KLINES,
            )
            if not page.items:
                return
            yield page
            if len(page.items) < MAX_PAGE:
                return
            start = _next_id(page.items[-1], 0)

    def depth(self, symbol: str, limit: int = 1000) -> Page:
        return self.get(
            "/api/v3/depth", {"symbol": check_symbol(symbol), "limit": limit}, depth_weight(limit)
        )


def read_ahead(pages: Iterator[T]) -> Iterator[T]:
    """The same pages, with the next one requested while the caller works on the current one.

    Paging by ``fromId`` is sequential, so the only overlap left is the caller's parsing and
    normalizing of page k with the network wait for page k+1. At most one page is in flight;
    an exception of the underlying pager reaches the caller at the page where it happened.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, pages, None)
        while (page := pending.result()) is not None:
            pending = pool.submit(next, pages, None)
            yield page


def _at_or_after(item: Any, field: str, end: int) -> bool:
    # A malformed item is kept: the normalizer rejects it into the dead-letter with its reason.
    try:
        return int(item[field]) >= end
    except (KeyError, IndexError, TypeError, ValueError):
        return False


def _id_above(item: Any, last_id: int) -> bool:
    return _at_or_after(item, "id", last_id + 1)


def _next_id(item: Any, field: str | int) -> int:
    try:
        value = item[field]
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value + 1
    except (KeyError, IndexError, TypeError) as exc:
        raise BinanceUnavailable(
            f"cannot page on from {item!r}: field {field!r} missing or not an integer"
        ) from exc
