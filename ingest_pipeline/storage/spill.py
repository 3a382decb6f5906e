"""The Kinesis producer's spill files and directories (``storage/kinesis.py`` says when records
go to disk): the framed record format and its reader, an append-only writer that leaves no torn
record, and the exclusive lock of a spill directory."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import struct
import time
import zlib
from pathlib import Path

log = logging.getLogger(__name__)

SPILL_GLOB = "spill-*.bin"
LOCK_NAME = ".lock"
PROBE_NAME = ".probe"
# A record: magic, crc32 of everything after it, stream / partition key / data lengths, then
# the three byte strings. 0xFF never occurs in UTF-8, so the magic is not found inside the
# JSON payloads; the reader looks for it to resynchronise after a damaged region.
_SPILL_MAGIC = b"\xffKSP"
_SPILL_HEADER = struct.Struct(">4sIHHI")
_SPILL_LENGTHS = struct.Struct(">HHI")
# The format before the magic: crc32 of the body, the three lengths. Still read, never written.
_LEGACY_HEADER = struct.Struct(">IHHI")
# A producer starting in a directory an adopter is just emptying waits this long for its lock.
_LOCK_TRIES, _LOCK_RETRY_S = 10, 0.05


class SpillDirLockedError(RuntimeError):
    """Another live producer holds the spill directory's lock."""


def encode_spill_record(stream: str, partition_key: str, data: bytes) -> bytes:
    s, k = stream.encode(), partition_key.encode()
    tail = _SPILL_LENGTHS.pack(len(s), len(k), len(data)) + s + k + data
    return _SPILL_MAGIC + zlib.crc32(tail).to_bytes(4, "big") + tail


SpillRecord = tuple[str, str, bytes]


@dataclasses.dataclass(frozen=True)
class SpillContents:
    """The readable records of a spill file and the (offset, length) of each damaged region."""

    records: list[SpillRecord]
    damaged: list[tuple[int, int]]

    @property
    def unreadable_bytes(self) -> int:
        return sum(n for _, n in self.damaged)


def _record_at(buf: bytes, pos: int) -> tuple[SpillRecord, int] | None:
    """The record starting at ``pos`` and where it ends, or None if none valid starts there."""
    if not buf.startswith(_SPILL_MAGIC, pos) or len(buf) - pos < _SPILL_HEADER.size:
        return None
    _, crc, ls, lk, ld = _SPILL_HEADER.unpack_from(buf, pos)
    body = pos + _SPILL_HEADER.size
    end = body + ls + lk + ld
    if end > len(buf) or zlib.crc32(buf[pos + 8 : end]) != crc:
        return None
    try:
        stream, key = buf[body : body + ls].decode(), buf[body + ls : body + ls + lk].decode()
    except UnicodeDecodeError:
        return None
    return (stream, key, buf[body + ls + lk : end]), end


def _parse_framed(buf: bytes) -> SpillContents:
    out: list[SpillRecord] = []
    damaged: list[tuple[int, int]] = []
    pos, n = 0, len(buf)
    while pos < n:
        got = _record_at(buf, pos)
        if got is not None:
            out.append(got[0])
            pos = got[1]
            continue
        nxt = buf.find(_SPILL_MAGIC, pos + 1)
        while nxt != -1 and _record_at(buf, nxt) is None:
            nxt = buf.find(_SPILL_MAGIC, nxt + 1)
        end = n if nxt == -1 else nxt
        damaged.append((pos, end - pos))
        pos = end
    return SpillContents(out, damaged)


def _parse_legacy(buf: bytes) -> SpillContents:
    # No magic to resynchronise on: the records up to the first damaged one.
    out: list[SpillRecord] = []
    pos, n, hsize = 0, len(buf), _LEGACY_HEADER.size
    while pos < n:
        if n - pos < hsize:
            break
        crc, ls, lk, ld = _LEGACY_HEADER.unpack_from(buf, pos)
        end = pos + hsize + ls + lk + ld
        body = buf[pos + hsize : end]
        if end > n or zlib.crc32(body) != crc:
            break
        out.append((body[:ls].decode(), body[ls : ls + lk].decode(), body[ls + lk :]))
        pos = end
    return SpillContents(out, [(pos, n - pos)] if pos < n else [])


def read_spill_file(path: Path) -> SpillContents:
    """The records of a spill file, resynchronising past damaged regions."""
    buf = path.read_bytes()
    framed = _parse_framed(buf)
    if framed.records or not buf:
        return framed
    # A file written before the framing (left over across an upgrade).
    legacy = _parse_legacy(buf)
    return legacy if legacy.records else framed


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def describe_error(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return f"{errno.errorcode.get(exc.errno, str(exc.errno))}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


class SpillWriter:
    """An append-only spill file. Each ``append`` is written and fsync'd, or cut back to where
    it started and raised: a short write (ENOSPC, EFBIG, EIO) leaves no torn record. If the cut
    fails too the file is ``broken``: it keeps its whole records and gets no more."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self.bytes = 0
        self.broken = False
        self._new = True

    def append(self, buf: bytes) -> None:
        try:
            view = memoryview(buf)
            while view:
                view = view[os.write(self.fd, view) :]
            os.fsync(self.fd)
            if self._new:
                # The file's directory entry must survive a crash too.
                fsync_dir(self.path.parent)
                self._new = False
        except OSError:
            try:
                os.ftruncate(self.fd, self.bytes)
            except OSError:
                self.broken = True
            raise
        self.bytes += len(buf)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError as exc:
            # Every append was fsync'd: nothing is lost with a failing close.
            log.warning("closing spill file %s: %s", self.path, describe_error(exc))


class SpillRef:
    """A spill file whose records are queued in memory: a file loaded for replay, or a journal
    file holding copies of records put in this process. Deleted at its last acknowledgement."""

    __slots__ = ("journal", "outstanding", "path", "writing")

    def __init__(self, path: Path, outstanding: int, journal: bool) -> None:
        self.path = path
        self.outstanding = outstanding
        self.journal = journal
        # Being written by the spill thread: it deletes the file if all got acked meanwhile.
        self.writing = journal


def lock_dir(path: Path) -> int:
    """Create ``path`` and hold its lock file; the fd keeps the lock until closed."""
    lock = path / LOCK_NAME
    for attempt in range(_LOCK_TRIES):
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if attempt + 1 < _LOCK_TRIES:
                # Possibly an adopter checking whether this directory is orphaned: it lets go
                # within milliseconds; a live producer does not.
                time.sleep(_LOCK_RETRY_S)
                continue
            who = f"pid {holder}" if holder.isdigit() else "holder unknown"
            raise SpillDirLockedError(
                f"spill dir {path} is locked by another live producer ({who})"
            ) from None
        try:
            linked = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            linked = False
        if linked:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as exc:
                # Only names the holder in an error message: a full disk must not stop us here.
                log.warning("could not write our pid into %s: %s", lock, exc)
            return fd
        # An adopter removed the directory between our open and our lock: start again.
        os.close(fd)
    raise SpillDirLockedError(f"spill dir {path} kept being removed while locking it")


def by_name(p: Path) -> str:
    return p.name
