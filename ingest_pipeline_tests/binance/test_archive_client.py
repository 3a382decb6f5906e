"""The archive client's network rules: bounded retries with backoff, 404 as "not archived",
a body cut short read again, nothing unverified kept."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ingest_pipeline.binance.archive import ArchiveClient, ArchiveUnavailable, daily_file
from ingest_pipeline.records import TRADES
from ingest_pipeline.timeutil import parse_hour

FILE = daily_file("BTCUSDT", TRADES, parse_hour("2024-12-31-00:00"))
BODY = b"PK-not-really-a-zip-but-bytes"
CHECKSUM = f"{hashlib.sha256(BODY).hexdigest()}  {FILE.name}\n".encode()


class FakeResponse:
    def __init__(self, status: int, body: bytes = b"", length: int | None = None) -> None:
        self.status_code = status
        self.content = body
        self.headers = {"Content-Length": str(len(body) if length is None else length)}

    def iter_content(self, size: int) -> Iterator[bytes]:
        yield self.content

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class FakeSession:
    """Answers from a script: one entry per request, in order."""

    def __init__(self, script: list[FakeResponse | Exception]) -> None:
        self.script = script
        self.urls: list[str] = []

    def get(self, url: str, timeout: object, stream: bool) -> FakeResponse:
        self.urls.append(url)
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def client(script: list, tmp_path: Path, **kw: object) -> tuple[ArchiveClient, FakeSession]:
    session = FakeSession(script)
    sleeps: list[float] = []
    c = ArchiveClient(
        "https://archive.test", session=session, sleep=sleeps.append, work_dir=tmp_path, **kw
    )
    return c, session


def test_retries_5xx_and_cut_bodies_then_verifies(tmp_path: Path) -> None:
    c, session = client(
        [
            FakeResponse(503),
            requests.ConnectionError("reset"),
            FakeResponse(200, BODY[:5], length=len(BODY)),  # cut short: read again
            FakeResponse(200, BODY),
            FakeResponse(200, CHECKSUM),
        ],
        tmp_path,
    )
    got = c.fetch(FILE)
    assert got is not None and got.path.read_bytes() == BODY
    assert got.path == tmp_path / FILE.path
    assert session.urls[-1].endswith(f"{FILE.name}.CHECKSUM")
    assert c.stats.retries == 3
    # A second fetch in the same run reuses the verified file: no request.
    again = c.fetch(FILE)
    assert again is not None and (again.path, again.sha256) == (got.path, got.sha256)
    assert not session.script
    c.release(got)
    assert not got.path.exists()


def test_not_archived_is_none_and_outages_are_bounded(tmp_path: Path) -> None:
    c, _ = client([FakeResponse(404)], tmp_path)
    assert c.fetch(FILE) is None
    c, session = client([FakeResponse(500)] * 3, tmp_path, max_attempts=3)
    with pytest.raises(ArchiveUnavailable, match="3 attempts"):
        c.fetch(FILE)
    assert not session.script
    assert not list(tmp_path.rglob("*.zip"))  # nothing unverified left behind
