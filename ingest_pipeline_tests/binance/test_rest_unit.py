"""The REST client's retry, back-off and paging rules, on a scripted in-process transport."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
import requests

from ingest_pipeline.binance.rest import (
    BinanceAPIError,
    BinanceRestClient,
    BinanceUnavailable,
    Page,
    read_ahead,
)
from ingest_pipeline.timeutil import HOUR_MS


@dataclass
class FakeResponse:
    status_code: int
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


class Clock:
    def __init__(self, start: float = 1_723_161_600.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ScriptedSession:
    """Answers each GET with the next scripted reply; records when each request was sent."""

    def __init__(self, clock: Clock, handler: Callable[[str, dict[str, list[str]]], Any]) -> None:
        self.clock = clock
        self.handler = handler
        self.sent: list[tuple[float, str, dict[str, list[str]]]] = []

    def get(self, url: str, timeout: Any) -> FakeResponse:
        parts = urlsplit(url)
        params = parse_qs(parts.query)
        self.sent.append((self.clock.now, parts.path, params))
        reply = self.handler(parts.path, params)
        if isinstance(reply, Exception):
            raise reply
        return reply


def ok(body: Any, weight: int = 1) -> FakeResponse:
    return FakeResponse(200, orjson.dumps(body), {"X-MBX-USED-WEIGHT-1M": str(weight)})


def make_client(
    replies: list[Any] | Callable[[str, dict[str, list[str]]], Any], **kwargs: Any
) -> tuple[BinanceRestClient, ScriptedSession, Clock]:
    clock = Clock()
    if isinstance(replies, list):
        queue = list(replies)

        def handler(path: str, params: dict[str, list[str]]) -> Any:
            return queue.pop(0)
    else:
        handler = replies
    session = ScriptedSession(clock, handler)
    client = BinanceRestClient(
        "http://sim", session=session, sleep=clock.sleep, clock=clock.time, **kwargs
    )
    return client, session, clock


def test_429_is_waited_out_and_nothing_is_sent_during_retry_after() -> None:
    replies = [
        FakeResponse(
            429,
            b'{"code":-1003,"msg":"Too much request weight used"}',
            {"Retry-After": "7", "X-MBX-USED-WEIGHT-1M": "6001"},
        ),
        ok({"serverTime": 1}),
    ]
    client, session, _ = make_client(replies)
    assert client.server_time() == 1
    (t429, *_), (t_next, *_) = session.sent
    assert t_next - t429 >= 7
    assert client.stats.throttled_429 == 1 and client.stats.banned_418 == 0


def test_ban_longer_than_allowed_wait_raises_instead_of_hammering() -> None:
    client, session, _ = make_client(
        [FakeResponse(418, b'{"code":-1003,"msg":"banned"}', {"Retry-After": "3600"})],
        max_wait_s=120,
    )
    with pytest.raises(BinanceUnavailable, match="418"):
        client.ping()
    assert len(session.sent) == 1


def test_client_slows_down_before_the_weight_limit() -> None:
    # The server reports 5800 of 6000 used: a weight-25 call would cross the 97% budget.
    client, session, clock = make_client(
        [ok([], weight=5800), ok([], weight=25)], weight_limit=6000
    )
    start_minute = int(clock.now // 60)
    client.get("/api/v3/klines", {}, 2)
    client.get("/api/v3/historicalTrades", {}, 25)
    assert int(session.sent[1][0] // 60) == start_minute + 1
    assert client.stats.weight_waits == 1


def test_5xx_timeouts_and_broken_bodies_are_retried_with_growing_jittered_backoff() -> None:
    replies = [
        FakeResponse(503, b"Service Unavailable"),
        requests.ReadTimeout("slow"),
        FakeResponse(200, b'[{"a": 1, "p": "1.0'),  # truncated JSON
        requests.ConnectionError("reset"),
        ok({"serverTime": 42}),
    ]
    client, session, clock = make_client(replies, backoff_base_s=1.0)
    assert client.server_time() == 42
    assert len(session.sent) == 5 and client.stats.retries == 4
    caps = [1.0, 2.0, 4.0, 8.0]
    assert all(0 <= s <= cap for s, cap in zip(clock.sleeps, caps, strict=True))


def test_retries_are_bounded() -> None:
    client, session, _ = make_client(lambda p, q: FakeResponse(500, b""), max_attempts=4)
    with pytest.raises(BinanceUnavailable, match="4 attempts: HTTP 500"):
        client.ping()
    assert len(session.sent) == 4


def test_api_errors_are_not_retried() -> None:
    client, session, _ = make_client([FakeResponse(400, b'{"code":-1121,"msg":"Invalid symbol."}')])
    with pytest.raises(BinanceAPIError) as err:
        client.agg_trades_page("NOPEUSDT", limit=10)
    assert err.value.code == -1121 and err.value.msg == "Invalid symbol."
    assert len(session.sent) == 1


def test_non_ascii_symbol_is_url_encoded() -> None:
    client, session, _ = make_client([ok([])])
    client.agg_trades_page("币安人生USDT", limit=1)
    assert session.sent[0][2]["symbol"] == ["币安人生USDT"]


def test_hour_paging_has_no_gap_and_no_overlap_when_thousands_share_a_millisecond() -> None:
    hour = 1_723_161_600_000
    # 2,500 trades in the hour's very last millisecond, then trades of the next hour.
    trades = [{"a": i, "T": hour + 5} for i in range(0, 700)]
    trades += [{"a": i, "T": hour + HOUR_MS - 1} for i in range(700, 3200)]
    trades += [{"a": i, "T": hour + HOUR_MS + i} for i in range(3200, 3300)]

    def handler(path: str, q: dict[str, list[str]]) -> FakeResponse:
        limit = int(q["limit"][0])
        if "fromId" in q:
            start = int(q["fromId"][0])
            page = [t for t in trades if t["a"] >= start][:limit]
        else:
            lo, hi = int(q["startTime"][0]), int(q["endTime"][0])
            page = [t for t in trades if lo <= t["T"] <= hi][:limit]
        return ok(page, weight=4)

    client, session, _ = make_client(handler)
    pages = list(client.agg_trades_hour("BTCUSDT", hour))
    ids = [t["a"] for p in pages for t in p.items]
    assert ids == list(range(3200))
    first = session.sent[0][2]
    assert first["startTime"] == [str(hour)] and first["endTime"] == [str(hour + HOUR_MS - 1)]
    assert [q.get("fromId") for _, _, q in session.sent[1:]] == [["1000"], ["2000"], ["3000"]]


def test_empty_hour_makes_one_request() -> None:
    client, session, _ = make_client([ok([])])
    assert list(client.agg_trades_hour("BTCUSDT", 1_723_161_600_000)) == []
    assert len(session.sent) == 1


def test_read_ahead_keeps_order_and_raises_where_the_pager_failed() -> None:
    def pages() -> Iterator[Page]:
        yield Page([1], 1)
        yield Page([2], 2)
        raise BinanceUnavailable("third page failed")

    got = []
    with pytest.raises(BinanceUnavailable, match="third page"):
        for page in read_ahead(pages()):
            got.append(page.items)
    assert got == [[1], [2]]
    assert [p.items for p in read_ahead(iter([Page([7], 0)]))] == [[7]]
