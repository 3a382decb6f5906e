"""Shared helpers of the simulator's WebSocket tests: a plain aiohttp client, like any user."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp


def ws_url(http_url: str, path: str) -> str:
    return http_url.replace("http://", "ws://", 1) + path


async def collect(
    ws: aiohttp.ClientWebSocketResponse,
    seconds: float,
    until: Callable[[list[Any]], bool] | None = None,
) -> list[Any]:
    """Text frames parsed as JSON (raw text kept when invalid) for ``seconds`` or ``until``."""
    out: list[Any] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            msg = await ws.receive(timeout=max(0.01, end - time.monotonic()))
        except TimeoutError:
            break
        if msg.type == aiohttp.WSMsgType.TEXT:
            try:
                out.append(json.loads(msg.data))
            except ValueError:
                out.append(msg.data)
            if until is not None and until(out):
                break
        elif msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.ERROR,
        ):
            break
    return out


async def collect_to_close(
    ws: aiohttp.ClientWebSocketResponse, seconds: float
) -> tuple[list[Any], int | None]:
    """Text frames until the server's close frame; the code in that frame (None: no frame)."""
    out: list[Any] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            msg = await ws.receive(timeout=max(0.01, end - time.monotonic()))
        except TimeoutError:
            break
        if msg.type == aiohttp.WSMsgType.TEXT:
            out.append(json.loads(msg.data))
        elif msg.type == aiohttp.WSMsgType.CLOSE:
            return out, int(msg.data)
        elif msg.type != aiohttp.WSMsgType.PING:
            break
    return out, None


async def wait_closed(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> float | None:
    """Read until the server closes the connection; the time it took, or None."""
    t0 = time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        try:
            msg = await ws.receive(timeout=max(0.01, end - time.monotonic()))
        except TimeoutError:
            return None
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.ERROR,
        ):
            return time.monotonic() - t0
    return None


def run(coro: Any) -> Any:
    return asyncio.run(coro)
