"""Binance spot REST endpoints over the synthetic market, in Binance's own wire format.

In replay mode a replayed symbol answers from the replay instead (its trades, aggTrades,
klines and book at the replay's position, times shifted like its frames: see ``replay.py``);
``exchangeInfo`` then lists exactly the replayed symbols.

Only the public market-data endpoints a data pipeline uses are served. Behaviour follows the
Binance spot docs (rest-api.md, errors.md): INCLUSIVE id/time bounds, limits silently capped at
the maximum (spot does not reject a larger limit), per-IP request weight per calendar minute
with 429 + Retry-After, and a 418 ban for a request sent while told to back off.

Fault injection and statistics live under ``/_sim/``, a prefix Binance never uses.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ingest_pipeline.standins.simulator.basics import (
    HOUR_MS,
    KLINE_INTERVALS,
    MAX_BOOK_LEVELS,
    format_units,
    mix64,
    stable_u64,
)
from ingest_pipeline.standins.simulator.config import FAULT_KINDS, SimulatorConfig
from ingest_pipeline.standins.simulator.market import Market
from ingest_pipeline.standins.simulator.replay import Replayer, ReplaySymbol
from ingest_pipeline.standins.simulator.rest_rows import (
    REPLAY_DECIMALS,
    agg_rows,
    decimals_of,
    kline_rows,
    symbol_info,
    trade_rows,
)

_JSON = "application/json;charset=UTF-8"
_DIGITS = re.compile(r"^[0-9]{1,20}$")


class ApiError(Exception):
    """A Binance error answer: ``{"code": ..., "msg": ...}`` with an HTTP status."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


def _mandatory(name: str) -> ApiError:
    return ApiError(
        -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


BAD_SYMBOL = ApiError(-1121, "Invalid symbol.")
BAD_INTERVAL = ApiError(-1120, "Invalid interval.")
BAD_COMBO = ApiError(-1128, "Combination of optional parameters invalid.")


@dataclass
class FaultSettings:
    """Which requests misbehave: a deterministic share ``rate`` of them, of the given kinds."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    retry_after: int = 1  # seconds announced by an injected 429
    slow_seconds: float = 30.0  # longer than a typical client read timeout
    seed: int = 0

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown or not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"bad fault settings: kinds {sorted(unknown)} rate {self.rate}")


@dataclass
class _IpState:
    minute: int = -1
    used: int = 0
    backoff_until_ms: int = 0  # a 429 told the client to wait until then
    ban_until_ms: int = 0


@dataclass
class SimStats:
    """What the simulator served; tests read it through ``GET /_sim/stats``."""

    requests: int = 0
    weight: int = 0
    bans: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_path: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "weight": self.weight,
            "bans": self.bans,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_path": dict(sorted(self.by_path.items())),
            "faults": dict(sorted(self.faults.items())),
        }


def _depth_weight(limit: int) -> int:
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


def _int_param(query: Any, name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if raw == "":
        raise ApiError(-1105, f"Parameter '{name}' was empty.")
    if not _DIGITS.match(raw):
        raise ApiError(
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
        )
    return int(raw)


def _limit(query: Any, default: int, maximum: int) -> int:
    limit = _int_param(query, "limit")
    if limit is None:
        return default
    if limit < 1:
        raise ApiError(
            -1100, f"Illegal characters found in parameter 'limit'; legal range is '1-{maximum}'."
        )
    return min(limit, maximum)  # spot truncates to the maximum instead of rejecting


class BinanceRest:
    """State and handlers of the REST surface (one per server)."""

    def __init__(self, config: SimulatorConfig, market: Market, clock: Callable[[], int]) -> None:
        self.config = config
        self.market = market
        self.clock = clock
        self.faults = FaultSettings(
            rate=config.fault_rate,
            kinds=config.fault_kinds,
            retry_after=config.fault_retry_after,
            slow_seconds=config.slow_seconds,
            seed=config.seed,
        )
        self.stats = SimStats()
        self._ips: dict[str, _IpState] = {}
        self._fault_counter = 0
        # Replay mode: the replayed symbols answer from the replay, never the synthetic market.
        self.replay: Replayer | None = None
        self._routes: dict[str, tuple[Callable[[web.Request, int], Any], Callable[[Any], int]]] = {
            "/api/v3/ping": (self._ping, lambda q: 1),
            "/api/v3/time": (self._time, lambda q: 1),
            "/api/v3/exchangeInfo": (self._exchange_info, lambda q: 20),
            "/api/v3/aggTrades": (self._agg_trades, lambda q: 4),
            "/api/v3/trades": (self._trades, lambda q: 25),
            "/api/v3/historicalTrades": (self._historical_trades, lambda q: 25),
            "/api/v3/klines": (self._klines, lambda q: 2),
            "/api/v3/depth": (self._depth, self._depth_request_weight),
        }

    # ---- app ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        for path in self._routes:
            app.router.add_get(path, self._dispatch)
        app.router.add_get("/_sim/stats", self._get_stats)
        app.router.add_get("/_sim/faults", self._get_faults)
        app.router.add_post("/_sim/faults", self._post_faults)
        app.router.add_post("/_sim/reset", self._post_reset)
        return app

    @staticmethod
    def _depth_request_weight(query: Any) -> int:
        try:
            limit = _limit(query, 100, MAX_BOOK_LEVELS)
        except ApiError:
            limit = 100
        return _depth_weight(limit)

    def _ip(self, request: web.Request, now_ms: int) -> _IpState:
        state = self._ips.setdefault(request.remote or "?", _IpState())
        minute = now_ms // 60_000
        if state.minute != minute:
            state.minute, state.used = minute, 0
        return state

    def _response(
        self, status: int, body: bytes, state: _IpState, headers: dict[str, str] | None = None
    ) -> web.Response:
        self.stats.by_status[status] += 1
        h = {
            "Content-Type": _JSON,
            "X-MBX-USED-WEIGHT": str(state.used),
            "X-MBX-USED-WEIGHT-1M": str(state.used),
        }
        if headers:
            h.update(headers)
        return web.Response(status=status, body=body, headers=h)

    def _error(
        self, err: ApiError, state: _IpState, headers: dict[str, str] | None = None
    ) -> web.Response:
        body = orjson.dumps({"code": err.code, "msg": err.msg})
        return self._response(err.status, body, state, headers)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        now_ms = self.clock()
        handler, weight_of = self._routes[request.path]
        self.stats.requests += 1
        self.stats.by_path[request.path] += 1
        state = self._ip(request, now_ms)

        if now_ms < state.ban_until_ms:
            return self._banned(state, now_ms)
        if now_ms < state.backoff_until_ms:
            # Sending while told to back off is what earns Binance's automated IP ban.
            state.ban_until_ms = now_ms + math.ceil(self.config.ban_seconds * 1000)
            self.stats.bans += 1
            return self._banned(state, now_ms)

        weight = weight_of(request.query)
        state.used += weight
        self.stats.weight += weight
        if state.used > self.config.weight_limit:
            minute_end = (state.minute + 1) * 60_000
            state.backoff_until_ms = minute_end
            msg = (
                f"Too much request weight used; current limit is {self.config.weight_limit} "
                "request weight per 1 MINUTE. Please use WebSocket Streams for live updates "
                "to avoid polling the API."
            )
            retry = str(math.ceil((minute_end - now_ms) / 1000))
            return self._error(ApiError(-1003, msg, 429), state, {"Retry-After": retry})

        fault = self._draw_fault()
        if fault == "429":
            retry_ms = self.faults.retry_after * 1000
            state.backoff_until_ms = now_ms + retry_ms
            msg = "Too many requests queued."
            return self._error(
                ApiError(-1003, msg, 429), state, {"Retry-After": str(self.faults.retry_after)}
            )
        if fault == "5xx":
            return self._server_error(state)
        if fault == "slow":
            await asyncio.sleep(self.faults.slow_seconds)

        try:
            payload = handler(request, now_ms)
        except ApiError as err:
            return self._error(err, state)
        body = orjson.dumps(payload)
        if fault == "truncated":
            body = body[: max(1, len(body) // 2)]
        elif fault == "malformed":
            body = b"<html><body>\x00garbage{]" + body[:16]
        return self._response(200, body, state)

    def _banned(self, state: _IpState, now_ms: int) -> web.Response:
        msg = (
            f"Way too much request weight used; IP banned until {state.ban_until_ms}. "
            "Please use WebSocket Streams for live updates to avoid bans."
        )
        retry = str(max(1, math.ceil((state.ban_until_ms - now_ms) / 1000)))
        return self._error(ApiError(-1003, msg, 418), state, {"Retry-After": retry})

    def _draw_fault(self) -> str | None:
        n = self._fault_counter
        self._fault_counter += 1
        f = self.faults
        if f.rate <= 0 or not f.kinds:
            return None
        key = stable_u64(f"faults|{f.seed}")
        u = (mix64(key ^ mix64(n)) >> 11) / float(1 << 53)
        if u >= f.rate:
            return None
        kind = f.kinds[mix64(key ^ 0x5A5A ^ mix64(n)) % len(f.kinds)]
        self.stats.faults[kind] += 1
        return kind

    def _server_error(self, state: _IpState) -> web.Response:
        status = (500, 502, 503, 504)[self._fault_counter % 4]
        if status == 500:
            return self._error(
                ApiError(-1000, "An unknown error occurred while processing the request.", 500),
                state,
            )
        if status == 503:
            msg = "Service Unavailable."
            return self._error(ApiError(-1008, msg, 503), state)
        # Gateways answer 502/504 with their own HTML page, not Binance JSON.
        self.stats.by_status[status] += 1
        text = f"<html><body><h1>{status} Gateway error</h1></body></html>"
        return web.Response(status=status, text=text, content_type="text/html")

    # ---- admin ----------------------------------------------------------------------------
    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_json())

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.faults))

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json() if request.can_read_body else {}
            self.faults = FaultSettings(**{**asdict(self.faults), **changes})
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self._fault_counter = 0  # the fault sequence restarts from its seed
        return web.json_response(asdict(self.faults))

    async def _post_reset(self, request: web.Request) -> web.Response:
        """Forget rate-limit state, bans and statistics (between test cases)."""
        self._ips.clear()
        self.stats = SimStats()
        self._fault_counter = 0
        return web.json_response({})

    # ---- endpoints ------------------------------------------------------------------------
    def _symbol(self, query: Any) -> str:
        symbol = query.get("symbol")
        if not symbol:
            raise _mandatory("symbol")
        if symbol not in self.market:
            raise BAD_SYMBOL
        return symbol

    def _replayed(self, symbol: str) -> tuple[ReplaySymbol, Replayer] | None:
        """A replayed symbol and its replay (None: the synthetic market answers)."""
        replay = self.replay
        replayed = replay.symbol(symbol) if replay is not None else None
        return None if replayed is None or replay is None else (replayed, replay)

    def _ping(self, request: web.Request, now_ms: int) -> dict[str, Any]:
        return {}

    def _time(self, request: web.Request, now_ms: int) -> dict[str, Any]:
        return {"serverTime": now_ms}

    def _exchange_info(self, request: web.Request, now_ms: int) -> dict[str, Any]:
        q = request.query
        if "symbol" in q and "symbols" in q:
            raise BAD_COMBO
        if "symbol" in q:
            wanted = [self._symbol(q)]
        elif "symbols" in q:
            try:
                wanted = orjson.loads(q["symbols"])
            except orjson.JSONDecodeError as exc:
                raise ApiError(-1100, "Illegal characters found in parameter 'symbols'.") from exc
            if not isinstance(wanted, list) or not wanted:
                raise _mandatory("symbols")
            if any(s not in self.market for s in wanted):
                raise BAD_SYMBOL
        else:
            wanted = list(self.market.models)
        return {
            "timezone": "UTC",
            "serverTime": now_ms,
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": self.config.weight_limit,
                },
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {
                    "rateLimitType": "RAW_REQUESTS",
                    "interval": "MINUTE",
                    "intervalNum": 5,
                    "limit": 61000,
                },
            ],
            "exchangeFilters": [],
            "symbols": [symbol_info(self.market[s].spec) for s in wanted],
        }

    def _trades(self, request: web.Request, now_ms: int) -> list[dict[str, Any]]:
        q = request.query
        symbol = self._symbol(q)
        limit = _limit(q, 500, 1000)
        replayed = self._replayed(symbol)
        if replayed is not None:
            sym, replay = replayed
            return trade_rows(sym.recent_trades(limit, replay.offset()), REPLAY_DECIMALS)
        model = self.market[symbol]
        return trade_rows(model.recent_trades(limit, now_ms), decimals_of(model.spec))

    def _historical_trades(self, request: web.Request, now_ms: int) -> list[dict[str, Any]]:
        q = request.query
        symbol = self._symbol(q)
        limit = _limit(q, 500, 1000)
        from_id = _int_param(q, "fromId")
        replayed = self._replayed(symbol)
        if replayed is not None:
            sym, replay = replayed
            offset = replay.offset()
            if from_id is None:
                return trade_rows(sym.recent_trades(limit, offset), REPLAY_DECIMALS)
            return trade_rows(sym.trades_from_id(from_id, limit, offset), REPLAY_DECIMALS)
        model = self.market[symbol]
        if from_id is None:
            trades = model.recent_trades(limit, now_ms)
        else:
            trades = model.trades_from_id(from_id, limit, now_ms)
        return trade_rows(trades, decimals_of(model.spec))

    def _agg_trades(self, request: web.Request, now_ms: int) -> list[dict[str, Any]]:
        q = request.query
        symbol = self._symbol(q)
        limit = _limit(q, 500, 1000)
        from_id = _int_param(q, "fromId")
        start, end = _int_param(q, "startTime"), _int_param(q, "endTime")
        if from_id is not None and (start is not None or end is not None):
            raise BAD_COMBO
        if start is not None or end is not None:
            # A time query covers at most one hour; one missing bound is an hour from the other.
            if start is None:
                start = end - HOUR_MS  # type: ignore[operator]
            if end is None:
                end = start + HOUR_MS
            if end - start > HOUR_MS:
                raise ApiError(-1127, "More than 1 hours between startTime and endTime.")
            if end < start:
                return []
        replayed = self._replayed(symbol)
        if replayed is not None:
            sym, replay = replayed
            offset = replay.offset()
            if from_id is not None:
                aggs = sym.aggs_from_id(from_id, limit, offset)
            elif start is None:
                aggs = sym.recent_aggs(limit, offset)
            else:
                aggs = sym.aggs_by_time(start, end, limit, offset)  # type: ignore[arg-type]
            return agg_rows(aggs, REPLAY_DECIMALS)
        model = self.market[symbol]
        if from_id is not None:
            aggs = model.aggs_from_id(from_id, limit, now_ms)
        elif start is None:
            aggs = model.recent_aggs(limit, now_ms)
        else:
            aggs = model.aggs_by_time(start, end, limit, now_ms)  # type: ignore[arg-type]
        return agg_rows(aggs, decimals_of(model.spec))

    def _klines(self, request: web.Request, now_ms: int) -> list[list[Any]]:
        q = request.query
        symbol = self._symbol(q)
        interval = q.get("interval")
        if not interval:
            raise _mandatory("interval")
        if interval not in KLINE_INTERVALS:
            raise BAD_INTERVAL
        limit = _limit(q, 500, 1000)
        start, end = _int_param(q, "startTime"), _int_param(q, "endTime")
        if start is not None and end is not None and start > end:
            return []
        replayed = self._replayed(symbol)
        if replayed is not None:
            sym, replay = replayed
            klines = sym.klines(interval, start, end, limit, replay.offset(), replay.now_ms())
            return kline_rows(klines, REPLAY_DECIMALS)
        model = self.market[symbol]
        klines = model.klines(interval, start, end, limit, now_ms)
        return kline_rows(klines, decimals_of(model.spec))

    def _depth(self, request: web.Request, now_ms: int) -> dict[str, Any]:
        q = request.query
        symbol = self._symbol(q)
        limit = _limit(q, 100, MAX_BOOK_LEVELS)
        replayed = self._replayed(symbol)
        if replayed is not None:
            return replayed[0].depth(limit)
        model = self.market[symbol]
        if model.hour_of(now_ms) < 0:
            return {"lastUpdateId": 0, "bids": [], "asks": []}
        book = model.book(model.batch_of(now_ms), limit)
        pd, qd = model.spec.price_decimals, model.spec.qty_decimals
        return {
            "lastUpdateId": book.last_update_id,
            "bids": [
                [format_units(p, pd), format_units(s, qd)]
                for p, s in zip(book.bid_px.tolist(), book.bid_qty.tolist(), strict=True)
            ],
            "asks": [
                [format_units(p, pd), format_units(s, qd)]
                for p, s in zip(book.ask_px.tolist(), book.ask_qty.tolist(), strict=True)
            ],
        }
