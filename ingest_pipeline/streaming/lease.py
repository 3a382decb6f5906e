"""A lease in S3: at most one streamer process produces for a set of symbols at any time.

One JSON object per streamer name, ``{prefix}/leases/{name}.json``, changed only with S3's
conditional writes (``PutObject`` with ``If-None-Match: *`` to create it, ``If-Match: <etag>``
to change it; S3 answers 412 when the object changed since it was read, which makes every
change a compare-and-swap). The body holds:

- ``epoch``: raised by one at every acquisition (a fencing token: records carry it);
- ``holder`` (id, host, pid, label), ``symbols``;
- ``expires_at_ms``: the holder's wall clock at the start of its last renewal plus ``ttl``;
- ``released``: true after a clean stop, so the next holder need not wait for the expiry;
- ``payload``: what the holder wants to survive it (the streamer's checkpoint). Writing it with
  the renewal makes every checkpoint write fenced too: a process that lost the lease cannot
  overwrite its successor's checkpoint.

Who may take it: anybody, when the object is absent, released, or past ``expires_at_ms`` plus
``skew_s`` by the taker's wall clock. The holder judges its own lease by its *monotonic* clock:
valid until the start of its last successful renewal plus ``ttl - skew_s``. A process frozen
(SIGSTOP, a VM pause, a long GC) past that point finds its lease lapsed as soon as it runs
again, before it sends anything; a lapsed lease is never revived (the next renewal would race
a successor), so the process stops producing and exits. Clock skew between hosts up to
``skew_s`` keeps the two views apart.

Every acquisition also writes ``{prefix}/epochs/{name}/{epoch:012d}.json`` (``If-None-Match``):
the lease history, one object per epoch, for audits and tests.

What it cannot do: a PutRecords call already on the wire when the lease lapses still lands
(bounded by the producer's call timeout). Kinesis has no conditional write to fence it, so the
holder stops calling well before its lease lapses (``valid()`` is checked before every call).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from botocore.exceptions import ClientError

from ingest_pipeline.storage.s3objects import get_object_or_none

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """The lease lapsed or was taken by a newer epoch: stop producing."""


class LeaseUnavailable(RuntimeError):
    """Another holder has an unexpired lease (message says who and until when)."""

    def __init__(self, message: str, retry_in_s: float) -> None:
        super().__init__(message)
        self.retry_in_s = retry_in_s


def holder_identity(label: str = "") -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
            "label": label}  # fmt: skip


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@dataclasses.dataclass
class LeaseView:
    """A lease object as read: its body and ETag (None when absent)."""

    body: dict[str, Any] | None
    etag: str | None

    def expired(self, now_ms: int, skew_s: float) -> bool:
        b = self.body
        return b is None or bool(b.get("released")) or now_ms > b["expires_at_ms"] + skew_s * 1000


class S3Lease:
    """The lease of one streamer name. Thread-safe; S3 calls block (run them off the loop)."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        prefix: str,
        name: str,
        symbols: tuple[str, ...],
        *,
        ttl_s: float,
        skew_s: float = 1.0,
        holder: dict[str, Any] | None = None,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 2 * skew_s:
            raise ValueError(f"lease ttl {ttl_s} s must exceed twice the skew {skew_s} s")
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.name = name
        self.key = f"{self.prefix}/leases/{name}.json"
        self.symbols = symbols
        self.ttl_s = ttl_s
        self.skew_s = skew_s
        self.holder = holder or holder_identity()
        self._wall = wall_ms
        self._mono = monotonic
        self._lock = threading.Lock()
        self.epoch: int | None = None
        self._etag: str | None = None
        self._valid_until = 0.0
        self._body: dict[str, Any] | None = None
        self.lost: str | None = None
        self.renewals = 0
        self.acquired_at: float | None = None

    # --- the holder's view -----------------------------------------------------------------

    def valid(self) -> bool:
        """True while this process holds an unexpired lease (by its own monotonic clock)."""
        return self.lost is None and self._mono() < self._valid_until

    @property
    def payload(self) -> dict[str, Any] | None:
        """The payload last written (after ``try_acquire``: the previous holder's)."""
        with self._lock:
            return (self._body or {}).get("payload")

    def remaining_s(self) -> float:
        return max(0.0, self._valid_until - self._mono()) if self.lost is None else 0.0

    # --- S3 --------------------------------------------------------------------------------

    def read(self, key: str | None = None) -> LeaseView:
        resp = get_object_or_none(self.s3, self.bucket, key or self.key)
        if resp is None:
            return LeaseView(None, None)
        return LeaseView(orjson.loads(resp["Body"].read()), resp["ETag"])

    def _put(self, body: dict[str, Any], etag: str | None) -> str | None:
        """Conditional PUT; the new ETag, or None when the condition failed (412/409)."""
        cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            resp = self.s3.put_object(
                Bucket=self.bucket, Key=self.key, Body=orjson.dumps(body),
                ContentType="application/json", **cond,
            )  # fmt: skip
        except ClientError as exc:
            # 412: the object changed (or exists, for If-None-Match). 409: a concurrent
            # conditional write to the same key won the race (S3 documents both).
            if _status(exc) in (409, 412) or _code(exc) in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                return None
            raise
        return str(resp["ETag"])

    def _others_holding(self, now_ms: int) -> list[dict[str, Any]]:
        """Unexpired leases of *other* names that claim one of our symbols."""
        mine = set(self.symbols)
        out = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/leases/"):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key == self.key:
                    continue
                view = self.read(key)
                if view.body is None or view.expired(now_ms, self.skew_s):
                    continue
                if mine & set(view.body.get("symbols", [])):
                    out.append({"key": key, **view.body})
        return out

    def try_acquire(self, payload: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """One attempt. Returns the previous body (``{}`` when there was none) once the lease
        is ours; raises ``LeaseUnavailable`` while another holder's lease runs."""
        started = self._mono()
        now = self._wall()
        view = self.read()
        if not view.expired(now, self.skew_s):
            b = view.body or {}
            wait = (b["expires_at_ms"] - now) / 1000 + self.skew_s
            raise LeaseUnavailable(
                f"lease {self.key} held by {b.get('holder')} (epoch {b.get('epoch')}) until "
                f"{b['expires_at_ms']} (+{self.skew_s:.0f} s skew)", max(wait, 0.1)
            )  # fmt: skip
        others = self._others_holding(now)
        if others:
            o = others[0]
            wait = (o["expires_at_ms"] - now) / 1000 + self.skew_s
            raise LeaseUnavailable(
                f"symbols {sorted(set(self.symbols) & set(o['symbols']))} are leased by "
                f"{o['key']} ({o.get('holder')}) until {o['expires_at_ms']}", max(wait, 0.1)
            )  # fmt: skip
        prev = view.body or {}
        epoch = int(prev.get("epoch", 0)) + 1
        body = {
            "epoch": epoch,
            "holder": self.holder,
            "symbols": list(self.symbols),
            "acquired_at_ms": now,
            "renewed_at_ms": now,
            "expires_at_ms": now + int(self.ttl_s * 1000),
            "released": False,
            "previous": {k: prev.get(k) for k in ("epoch", "holder", "released",
                                                  "expires_at_ms")} if prev else None,
            "payload": payload if payload is not None else prev.get("payload"),
        }  # fmt: skip
        etag = self._put(body, view.etag)
        if etag is None:
            raise LeaseUnavailable(f"lease {self.key} changed while acquiring it", 0.2)
        with self._lock:
            self.epoch, self._etag, self._body = epoch, etag, body
            self._valid_until = started + self.ttl_s - self.skew_s
            self.lost = None
            self.acquired_at = self._mono()
        self._write_history(body)
        log.info("lease %s acquired: epoch %d (previous: %s)", self.key, epoch, body["previous"])
        return prev

    def _write_history(self, body: dict[str, Any]) -> None:
        key = f"{self.prefix}/epochs/{self.name}/{body['epoch']:012d}.json"
        record = {k: body[k] for k in ("epoch", "holder", "symbols", "acquired_at_ms")}
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=orjson.dumps(record),
                               ContentType="application/json", IfNoneMatch="*")  # fmt: skip
        except ClientError as exc:  # an audit trail, not a condition of holding the lease
            log.warning("lease history %s not written: %s", key, exc)

    def renew(self, payload: dict[str, Any] | None = None) -> None:
        """Extend the lease (and store ``payload``); ``LeaseLost`` when it lapsed or was taken."""
        with self._lock:
            if self.lost is not None:
                raise LeaseLost(self.lost)
            if self._body is None or self._etag is None:
                raise LeaseLost("lease never acquired")
            if self._mono() >= self._valid_until:
                self.lost = (
                    f"lease epoch {self.epoch} lapsed {self._mono() - self._valid_until:.1f} s "
                    "ago by this process's clock (frozen or cut off from S3)"
                )
                raise LeaseLost(self.lost)
            body = dict(self._body)
            etag = self._etag
        started = self._mono()
        now = self._wall()
        body["renewed_at_ms"] = now
        body["expires_at_ms"] = now + int(self.ttl_s * 1000)
        if payload is not None:
            body["payload"] = payload
        new_etag = self._put(body, etag)
        with self._lock:
            if new_etag is None:
                self.lost = f"lease epoch {self.epoch} was taken over (the object changed)"
                raise LeaseLost(self.lost)
            self._etag, self._body = new_etag, body
            self._valid_until = started + self.ttl_s - self.skew_s
            self.renewals += 1

    def release(self, payload: dict[str, Any] | None = None) -> bool:
        """Give the lease up (clean stop): the next holder starts without waiting."""
        with self._lock:
            if self.lost is not None or self._body is None or self._mono() >= self._valid_until:
                return False
            body = {**self._body, "released": True, "released_at_ms": self._wall()}
            etag = self._etag
        if payload is not None:
            body["payload"] = payload
        ok = self._put(body, etag) is not None
        with self._lock:
            self._valid_until = 0.0
            self.lost = "released"
        return ok

    def history(self) -> list[dict[str, Any]]:
        """Every epoch's record, oldest first."""
        out = []
        paginator = self.s3.get_paginator("list_objects_v2")
        prefix = f"{self.prefix}/epochs/{self.name}/"
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out.append(self.read(obj["Key"]).body)
        return sorted(out, key=lambda b: b["epoch"])
