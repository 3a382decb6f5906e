"""A fault-injecting HTTP proxy between an AWS client and moto (or any endpoint).

moto and the other Kinesis emulators never throttle, fail or hang; this proxy makes those paths
real for the producer's tests. botocore (1.44) speaks JSON 1.1 to Kinesis: a POST with
``X-Amz-Target: Kinesis_20131202.<Operation>`` and a JSON body whose blobs are base64 strings.

Faults, switchable at any time from any thread by setting the attributes:
- ``throttle_fraction``: in a PutRecords call, that fraction of entries fails with
  ProvisionedThroughputExceededException. Those entries are removed from the request sent
  upstream, and the upstream answer is merged with the failures at their positions, so a failed
  entry is not stored, as on AWS.
- ``error_5xx_fraction``: the call is answered 500 InternalFailure or 503 ServiceUnavailable
  without being forwarded.
- ``reset_fraction``: the connection is aborted before the request is forwarded.
- ``stall_seconds`` (for ``stall_fraction`` of the calls): the answer is delayed after the
  upstream call, so a client that times out has had its records stored (the duplicate path).
- ``unreachable``: every request is dropped by aborting its connection.

Random choices come from one ``random.Random(seed)`` drawn in request order: a client making
one call at a time sees the same faults in every run.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
from typing import Any

import aiohttp
import orjson
from aiohttp import web

PUT_RECORDS_TARGET = "Kinesis_20131202.PutRecords"
THROTTLE_CODE = "ProvisionedThroughputExceededException"
# Not copied between the two connections: hop-by-hop headers, and the length of a body this
# proxy may rewrite (aiohttp sets it from the body sent). Bodies pass byte for byte otherwise:
# no decompression, and the client's own Accept-Encoding (or none) goes upstream.
_SKIP_REQUEST = {"host", "content-length", "transfer-encoding", "connection"}
_SKIP_RESPONSE = {"content-length", "transfer-encoding", "connection", "date", "server"}


def _b64_len(s: str) -> int:
    return len(s) * 3 // 4 - s.endswith("=") - s.endswith("==")


class FaultProxy:
    """``FaultProxy(upstream_url).start()``; point the client's ``endpoint_url`` at ``.url``."""

    def __init__(
        self, upstream_url: str, host: str = "127.0.0.1", port: int = 0, seed: int = 0
    ) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.host = host
        self.port = port
        self.throttle_fraction = 0.0
        self.error_5xx_fraction = 0.0
        self.reset_fraction = 0.0
        self.stall_seconds = 0.0
        self.stall_fraction = 1.0
        self.unreachable = False
        self.counters: collections.Counter[str] = collections.Counter()
        # (records, bytes of data + partition keys) of every PutRecords call received.
        self.put_records_batches: list[tuple[int, int]] = []
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def reset_faults(self) -> None:
        self.throttle_fraction = self.error_5xx_fraction = self.reset_fraction = 0.0
        self.stall_seconds = 0.0
        self.stall_fraction = 1.0
        self.unreachable = False

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="faultproxy", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), loop).result(10)
        return self

    async def _serve(self) -> None:
        # Upstream connections are not reused across a fault: a fresh pool per proxy is enough.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding",),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A stalled handler must not hold up stop() for aiohttp's default minute.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- request path --------------------------------------------------------------------

    def _hit(self, fraction: float) -> bool:
        return fraction > 0 and self._rng.random() < fraction

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        self.counters["requests"] += 1
        if self.unreachable:
            self.counters["refused"] += 1
            return self._abort(request)
        if self._hit(self.reset_fraction):
            self.counters["resets"] += 1
            return self._abort(request)
        if self._hit(self.error_5xx_fraction):
            self.counters["errors_5xx"] += 1
            return self._error_5xx()

        failed_at: list[int] = []
        n_entries = 0
        if target == PUT_RECORDS_TARGET:
            req = orjson.loads(body)
            entries = req["Records"]
            n_entries = len(entries)
            self.counters["put_records_calls"] += 1
            self.put_records_batches.append(
                (
                    n_entries,
                    sum(_b64_len(e["Data"]) + len(e["PartitionKey"].encode()) for e in entries),
                )
            )
            if self.throttle_fraction > 0:
                failed_at = [i for i in range(n_entries) if self._hit(self.throttle_fraction)]
                if failed_at:
                    dropped = set(failed_at)
                    req["Records"] = [e for i, e in enumerate(entries) if i not in dropped]
                    body = orjson.dumps(req)
                    self.counters["throttled_entries"] += len(failed_at)

        if failed_at and len(failed_at) == n_entries:
            status, headers = 200, {"Content-Type": "application/x-amz-json-1.1"}
            out = orjson.dumps(
                _merge({"FailedRecordCount": 0, "Records": []}, failed_at, n_entries)
            )
        else:
            status, headers, out = await self._forward(request, body)
            if failed_at and status == 200:
                out = orjson.dumps(_merge(orjson.loads(out), failed_at, n_entries))
        self.counters["forwarded"] += 1

        if self.stall_seconds > 0 and self._hit(self.stall_fraction):
            self.counters["stalls"] += 1
            await asyncio.sleep(self.stall_seconds)
        return web.Response(status=status, headers=headers, body=out)

    async def _forward(
        self, request: web.Request, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_REQUEST}
        async with self._session.request(
            request.method, self.upstream_url + request.path_qs, headers=headers, data=body
        ) as resp:
            out = await resp.read()
            keep = {k: v for k, v in resp.headers.items() if k.lower() not in _SKIP_RESPONSE}
            if request.method == "HEAD" and "Content-Length" in resp.headers:
                # A HEAD answer has no body; its Content-Length is the resource's size (an S3
                # object's), which clients read: it must pass unchanged, not become 0.
                keep["Content-Length"] = resp.headers["Content-Length"]
            return resp.status, keep, out

    def _abort(self, request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        # Nothing reaches the client: the transport is gone.
        return web.Response(status=502)

    def _error_5xx(self) -> web.Response:
        if self._rng.random() < 0.5:
            status, code = 500, "InternalFailure"
        else:
            status, code = 503, "ServiceUnavailable"
        return web.Response(
            status=status,
            headers={"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": code},
            body=orjson.dumps({"__type": code, "message": "injected by FaultProxy"}),
        )


def _merge(upstream: dict[str, Any], failed_at: list[int], n: int) -> dict[str, Any]:
    """Upstream's answer for the forwarded entries, with the injected failures put back at
    their positions."""
    forwarded = iter(upstream.get("Records", []))
    failed = set(failed_at)
    records = [
        {
            "ErrorCode": THROTTLE_CODE,
            "ErrorMessage": "Rate exceeded for shard (injected by FaultProxy).",
        }
        if i in failed
        else next(forwarded)
        for i in range(n)
    ]
    merged = dict(upstream)
    merged["Records"] = records
    merged["FailedRecordCount"] = sum("ErrorCode" in r for r in records)
    return merged
