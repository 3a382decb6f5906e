"""Binance's public data archive (``data.binance.vision``): layout, download, verification.

Binance publishes the spot history it serves over REST as zipped CSV files, one per symbol, type
and day (``daily/``, about a day after the day ends) or month (``monthly/``, early in the next
month), each with a ``.CHECKSUM`` file beside it (``<sha256 hex>  <file name>``). Reading a
downloaded file into records is ``archive_csv``.

Pure functions (paths, checksum lines) and :class:`ArchiveClient`, the only part that does I/O
(streamed download to a temp file, timeouts, bounded retries with backoff, checksum
verification).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import requests

from ingest_pipeline.records import datatype, kline_interval
from ingest_pipeline.symbols import check_symbol
from ingest_pipeline.timeutil import HOUR_MS

log = logging.getLogger(__name__)

DAILY = "daily"
MONTHLY = "monthly"
DAY_MS = 24 * HOUR_MS


class ArchiveError(Exception):
    """Base of the archive's errors: the file cannot be trusted or fetched."""


class ArchiveUnavailable(ArchiveError):
    """Retries exhausted on timeouts, connection errors or 5xx answers."""


class ArchiveChecksumError(ArchiveError):
    """The file never matched its published checksum (corrupt, or replaced while we read)."""


class ArchiveFormatError(ArchiveError):
    """The zip or CSV is not what Binance documents (wrong members, columns, values, order)."""


# ----------------------------------------------------------------------------------------------
# Layout


def file_kind(data_type: str) -> tuple[str, str | None]:
    """Archive kind (the registry's archive folder) and kline interval of a bronze data type
    (``klines_1m`` -> klines, 1m)."""
    folder = datatype(data_type).archive
    if folder is None:
        raise ValueError(f"the archive holds no {data_type!r}")
    return folder, kline_interval(data_type)


@dataclass(frozen=True)
class ArchiveFile:
    """One archive file: a symbol's data type over one UTC day or calendar month."""

    symbol: str
    data_type: str
    period: str  # DAILY or MONTHLY
    start_ms: int
    end_ms: int

    @property
    def kind(self) -> str:
        return file_kind(self.data_type)[0]

    @property
    def interval(self) -> str | None:
        return file_kind(self.data_type)[1]

    @property
    def label(self) -> str:
        t = datetime.fromtimestamp(self.start_ms / 1000, UTC)
        return f"{t:%Y-%m-%d}" if self.period == DAILY else f"{t:%Y-%m}"

    @property
    def name(self) -> str:
        # The archive writes 1M klines as 1mo, for case-insensitive file systems.
        stem = "1mo" if self.interval == "1M" else self.interval or self.kind
        return f"{self.symbol}-{stem}-{self.label}.zip"

    @property
    def path(self) -> str:
        """URL path under the base URL (symbol percent-encoded, as for REST)."""
        sym = quote(check_symbol(self.symbol), safe="")
        interval = (
            "" if self.interval is None else f"{'1mo' if self.interval == '1M' else self.interval}/"
        )
        name = quote(self.name, safe="")
        return f"data/spot/{self.period}/{self.kind}/{sym}/{interval}{name}"

    def hours(self) -> range:
        return range(self.start_ms, self.end_ms, HOUR_MS)


def day_start(ms: int) -> int:
    return ms - ms % DAY_MS


def month_bounds(ms: int) -> tuple[int, int]:
    t = datetime.fromtimestamp(ms / 1000, UTC)
    start = datetime(t.year, t.month, 1, tzinfo=UTC)
    end = datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def daily_file(symbol: str, data_type: str, ms: int) -> ArchiveFile:
    start = day_start(ms)
    return ArchiveFile(symbol, data_type, DAILY, start, start + DAY_MS)


def monthly_file(symbol: str, data_type: str, ms: int) -> ArchiveFile:
    start, end = month_bounds(ms)
    return ArchiveFile(symbol, data_type, MONTHLY, start, end)


_CHECKSUM_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")


def parse_checksum(text: str, expected_name: str) -> str:
    """The SHA-256 (lower-case hex) of ``<hex>  <file name>``; the name must be the file's."""
    match = _CHECKSUM_LINE.match(text.strip())
    if match is None:
        raise ArchiveFormatError(f"CHECKSUM of {expected_name}: unreadable line {text[:120]!r}")
    if match.group(2) != expected_name:
        raise ArchiveFormatError(
            f"CHECKSUM of {expected_name} names another file: {match.group(2)!r}"
        )
    return match.group(1).lower()


# ----------------------------------------------------------------------------------------------
# I/O


@dataclass(frozen=True)
class Download:
    """A verified archive file on local disk."""

    file: ArchiveFile
    path: Path
    sha256: str
    bytes: int
    received_ms: int


@dataclass
class ArchiveStats:
    requests: int = 0
    retries: int = 0
    downloads: int = 0
    bytes: int = 0
    not_found: int = 0
    checksum_mismatches: int = 0


class ArchiveClient:
    """Downloads archive files: streamed to disk, verified against their CHECKSUM file."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float = 3.05,
        read_timeout_s: float = 30.0,
        max_attempts: int = 5,
        checksum_attempts: int = 3,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 20.0,
        chunk_bytes: int = 1 << 20,
        work_dir: Path | str | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.max_attempts = max_attempts
        self.checksum_attempts = checksum_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.chunk_bytes = chunk_bytes
        # Verified files are kept here by path, so that steps of one run share a download.
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.stats = ArchiveStats()
        self._session = session or requests.Session()
        self._sleep = sleep
        self._rng = rng or random.Random()

    def url(self, f: ArchiveFile) -> str:
        return f"{self.base_url}/{f.path}"

    def _local(self, f: ArchiveFile) -> Path | None:
        return None if self.work_dir is None else self.work_dir / f.path

    def fetch(self, f: ArchiveFile) -> Download | None:
        """The verified file, or None when the archive does not hold it (HTTP 404).

        A file whose bytes do not match its CHECKSUM is fetched again (Binance may be replacing
        it) up to ``checksum_attempts`` times, then ArchiveChecksumError. Network trouble is
        retried with backoff up to ``max_attempts`` per request, then ArchiveUnavailable.
        """
        local = self._local(f)
        marker = local.with_name(local.name + ".sha256") if local is not None else None
        if local is not None and marker is not None and marker.exists() and local.exists():
            sha = marker.read_text().strip()
            return Download(f, local, sha, local.stat().st_size, int(marker.stat().st_mtime * 1000))
        problem = ""
        for attempt in range(self.checksum_attempts):
            # The zip first, then its CHECKSUM: a file replaced between the two reads shows up
            # as a mismatch and is read again, never accepted half old, half new.
            got = self._download(f, local)
            if got is None:
                self.stats.not_found += 1
                return None
            path, sha, size = got
            body = self._get_text(self.url(f) + ".CHECKSUM")
            if body is None:
                path.unlink(missing_ok=True)
                raise ArchiveChecksumError(f"{f.path}: no CHECKSUM published beside the file")
            try:
                expected = parse_checksum(body, f.name)
            except ArchiveFormatError:
                path.unlink(missing_ok=True)
                raise
            if sha == expected:
                self.stats.downloads += 1
                self.stats.bytes += size
                if local is not None and marker is not None:
                    path = Path(shutil.move(path, local))
                    marker.write_text(sha)
                return Download(f, path, sha, size, int(time.time() * 1000))
            path.unlink(missing_ok=True)
            self.stats.checksum_mismatches += 1
            problem = f"sha256 {sha} != published {expected}"
            log.warning("archive %s: %s (attempt %d)", f.path, problem, attempt + 1)
            self._backoff(attempt)
        raise ArchiveChecksumError(f"{f.path}: {problem} after {self.checksum_attempts} tries")

    def release(self, download: Download) -> None:
        """Delete the local copy (and its verification marker)."""
        download.path.unlink(missing_ok=True)
        download.path.with_name(download.path.name + ".sha256").unlink(missing_ok=True)

    def _backoff(self, attempt: int) -> None:
        # Full jitter, as the REST client: many workers retrying together spread out.
        self._sleep(self._rng.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**attempt)))

    def _request(self, url: str) -> requests.Response | None:
        """GET with retries; None on 404; the response is streamed (caller closes it)."""
        problem = "no attempt made"
        for attempt in range(self.max_attempts):
            if attempt:
                self.stats.retries += 1
            self.stats.requests += 1
            try:
                resp = self._session.get(url, timeout=self.timeout, stream=True)
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                self._backoff(attempt)
                continue
            if resp.status_code == 404:
                resp.close()
                return None
            if resp.status_code >= 500 or resp.status_code == 429:
                problem = f"HTTP {resp.status_code}"
                resp.close()
                self._backoff(attempt)
                continue
            if resp.status_code != 200:
                resp.close()
                raise ArchiveError(f"{url}: HTTP {resp.status_code}")
            return resp
        raise ArchiveUnavailable(f"{url}: gave up after {self.max_attempts} attempts: {problem}")

    def _get_text(self, url: str) -> str | None:
        for attempt in range(self.max_attempts):
            resp = self._request(url)
            if resp is None:
                return None
            try:
                return resp.content.decode("utf-8", errors="replace")
            except requests.RequestException as exc:
                log.warning("archive %s: %s", url, exc)
                self._backoff(attempt)
            finally:
                resp.close()
        raise ArchiveUnavailable(f"{url}: body never arrived whole")

    def _download(self, f: ArchiveFile, local: Path | None) -> tuple[Path, str, int] | None:
        """Stream the zip into a temp file beside its destination: (path, sha256, size)."""
        url = self.url(f)
        for attempt in range(self.max_attempts):
            resp = self._request(url)
            if resp is None:
                return None
            if local is not None:
                local.parent.mkdir(parents=True, exist_ok=True)
                directory: str | None = str(local.parent)
            else:
                directory = None
            digest = hashlib.sha256()
            size = 0
            tmp = tempfile.NamedTemporaryFile(
                dir=directory, prefix=".part-", suffix=".zip", delete=False
            )
            try:
                with tmp, resp:
                    for chunk in resp.iter_content(self.chunk_bytes):
                        digest.update(chunk)
                        tmp.write(chunk)
                        size += len(chunk)
                expected = resp.headers.get("Content-Length")
                if expected is not None and expected.isdigit() and int(expected) != size:
                    raise requests.ConnectionError(f"got {size} of {expected} bytes")
            except (requests.RequestException, OSError) as exc:
                # A body cut short (ChunkedEncodingError, a short Content-Length) is retried.
                Path(tmp.name).unlink(missing_ok=True)
                log.warning("archive %s: %s (attempt %d)", url, exc, attempt + 1)
                self.stats.retries += 1
                self._backoff(attempt)
                continue
            return Path(tmp.name), digest.hexdigest(), size
        raise ArchiveUnavailable(f"{url}: download never completed in {self.max_attempts} tries")
