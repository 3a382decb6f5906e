"""The Kinesis producer's spill thread: every ``spill_interval_s`` it journals the records held
only in memory that must be durable, writes the records waiting for the disk to spill files,
probes a failed disk, adopts orphaned sibling spill directories, and at the end writes whatever
is left and releases the directory lock (``storage/kinesis.py`` says what it guarantees)."""

from __future__ import annotations

import bisect
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any

from ingest_pipeline.storage.circuit import CircuitState
from ingest_pipeline.storage.kinesis_state import Entry, ProducerState, Unspilled
from ingest_pipeline.storage.spill import (
    LOCK_NAME,
    PROBE_NAME,
    SPILL_GLOB,
    SpillRecord,
    SpillRef,
    SpillWriter,
    by_name,
    encode_spill_record,
    fsync_dir,
)

log = logging.getLogger(__name__)


class Spiller:
    """The body of the ``kinesis-spill`` thread (``run``); ``adopt`` also runs once at start,
    before the threads. It owns the spill file names and ``adopt_from``; everything else is the
    shared ``ProducerState``."""

    def __init__(self, state: ProducerState, adopt_from: Path | None) -> None:
        self._state = state
        self._adopt_from = adopt_from
        self._name_ns = 0
        self._name_seq = 0

    def _new_spill_path(self) -> Path:
        s = self._state
        # Names sort in creation order even if the wall clock steps back.
        self._name_ns = max(time.time_ns(), self._name_ns + 1)
        self._name_seq += 1
        return s.spill_dir / f"spill-{self._name_ns:020d}-{self._name_seq:06d}.bin"

    def run(self) -> None:
        s = self._state
        next_adopt = s.clock() + s.cfg.adopt_interval_s
        while True:
            s.wake.wait(s.cfg.spill_interval_s)
            s.wake.clear()
            # A bug here must not end the thread: nothing would reach the disk any more.
            try:
                with s.cv:
                    final = s.final
                    fenced = s.fenced and s.sender_done
                self._spill_step(everything=final or fenced)
                if final or fenced:
                    if self._finish(final):
                        return
                elif self._adopt_from is not None and s.clock() >= next_adopt:
                    next_adopt = s.clock() + s.cfg.adopt_interval_s
                    self.adopt()
            except Exception:
                log.exception("kinesis spill thread round failed")

    def _finish(self, final: bool) -> bool:
        """After the sender stopped: True once every record is on disk or given up; then the
        files are closed and the directory lock released (an adopter may take it)."""
        s = self._state
        with s.cv:
            left = self._memory_only_locked()
            if left:
                if not final or s.clock() < s.final_deadline:
                    return False
                s.drop_locked(len(left), "disk_error_at_close")
                log.error(
                    "kinesis producer stopped with %d records it could not write to %s: lost",
                    len(left),
                    s.spill_dir,
                )
            writer, s.writer = s.writer, None
        if writer is not None:
            writer.close()
        if s.lock_fd >= 0:
            os.close(s.lock_fd)
            s.lock_fd = -1
        return True

    def _memory_only_locked(self) -> list[Any]:
        """Every record held only in memory (none may remain once the sender has stopped)."""
        s = self._state
        out: list[Any] = list(s.unspilled)
        for st in s.streams.values():
            out += [e for e in (*st.retry, *st.mem) if e[4] is None]
        if s.inflight is not None:
            out += [e for e in s.inflight[1] if e[4] is None]
        return out

    def _journal_locked(
        self, now: float, everything: bool
    ) -> list[tuple[SpillRef, list[SpillRecord]]]:
        """Mark the records held only in memory that must reach the disk now (all of them, or
        those older than ``spill_after_s``) as backed by new journal files; they keep their
        place in the queues. Returns what to write, file by file."""
        s = self._state
        cutoff = float("inf") if everything else now - s.cfg.spill_after_s
        limit = s.cfg.spill_file_max_bytes
        chunks: list[tuple[SpillRef, list[SpillRecord]]] = []
        nbytes = limit

        def tag(stream: str, e: Entry) -> Entry:
            nonlocal nbytes
            if nbytes + e[2] > limit:
                ref = SpillRef(self._new_spill_path(), 0, journal=True)
                s.refs.add(ref)
                chunks.append((ref, []))
                nbytes = 0
            ref, recs = chunks[-1]
            ref.outstanding += 1
            recs.append((stream, e[0], e[1]))
            nbytes += e[2]
            return (e[0], e[1], e[2], e[3], ref)

        # Per stream, oldest first: the batch in flight or to retry, then the memory queue.
        for st in s.streams.values():
            held = [s.inflight[1]] if s.inflight and s.inflight[0] is st else []
            for entries in (*held, st.retry):
                for i, e in enumerate(entries):
                    if e[4] is None and e[3] <= cutoff:
                        entries[i] = tag(st.name, e)
            while st.mem and st.mem[0][3] <= cutoff:
                e = st.mem.popleft()
                st.mem_bytes -= e[2]
                st.backed.append(tag(st.name, e))
        return chunks

    def _untag_locked(self, failed: list[SpillRef]) -> None:
        """Journal files that could not be written: their records are memory-only again."""
        s = self._state
        gone = set(failed)
        held = [s.inflight[1]] if s.inflight else []
        for st in s.streams.values():
            for entries in (*held, st.retry):
                for i, e in enumerate(entries):
                    if e[4] in gone:
                        entries[i] = (e[0], e[1], e[2], e[3], None)
            # They were appended last to ``backed``; whatever of them is left is at its end.
            while st.backed and st.backed[-1][4] in gone:
                e = st.backed.pop()
                st.mem.appendleft((e[0], e[1], e[2], e[3], None))
                st.mem_bytes += e[2]
        for ref in failed:
            s.refs.discard(ref)

    def _spill_step(self, everything: bool) -> None:
        """One round of the spill thread: journal what must be durable, then write the records
        waiting for the disk (only once nothing older is held in memory alone)."""
        s = self._state
        now = s.clock()
        with s.cv:
            if now < s.disk_retry_at:
                return
            everything = (
                everything
                or s.spilling
                or s.fenced
                or s.sender_done
                or s.breaker.state is not CircuitState.CLOSED
                # A call unanswered this long: Kinesis hangs, and it may take minutes of
                # timeouts before the circuit opens.
                or (s.inflight is not None and now - s.inflight_t > s.cfg.spill_after_s)
            )
            chunks = self._journal_locked(now, everything)
            pending: list[Unspilled] = []
            if everything:
                pending, s.unspilled = s.unspilled, []
            probe = not chunks and not pending and s.disk_error is not None
            if not (chunks or pending or probe):
                return
            s.spill_busy = True
            writer = s.writer
        error: Exception | None = None
        written: list[SpillRef] = []
        sealed: list[Path] = []
        n_spilled = 0
        try:
            for ref, recs in chunks:
                self._write_new(ref.path, recs)
                written.append(ref)
            if probe:
                self._probe_disk()
            limit = s.cfg.spill_file_max_bytes
            while n_spilled < len(pending):
                if writer is None or writer.broken or writer.bytes >= limit:
                    if writer is not None:
                        writer.close()
                        sealed.append(writer.path)
                        writer = None
                    writer = SpillWriter(self._new_spill_path())
                parts: list[bytes] = []
                room = max(limit - writer.bytes, 1)
                for stream, pk, data, _, _ in pending[n_spilled:]:
                    rec = encode_spill_record(stream, pk, data)
                    if parts and len(rec) > room:
                        break
                    parts.append(rec)
                    room -= len(rec)
                writer.append(b"".join(parts))
                n_spilled += len(parts)
        except Exception as exc:
            # Whatever failed, the records not written are still in memory: keep them.
            if not isinstance(exc, OSError):
                log.exception("kinesis spill write failed")
            error = exc
        with s.cv:
            s.writer = writer
            s.sealed.extend(sealed)
            for ref in written:
                ref.writing = False
                if ref.outstanding == 0:
                    s.unlink_ref_locked(ref)
            failed = [ref for ref, _ in chunks[len(written) :]]
            if failed:
                self._untag_locked(failed)
            done = pending[:n_spilled]
            s.unspilled[:0] = pending[n_spilled:]
            s.unspilled_records -= len(done)
            s.unspilled_bytes -= sum(p[3] for p in done)
            s.counts["spilled"] += len(done)
            s.counts["journaled"] += sum(len(recs) for _, recs in chunks[: len(written)])
            if error is not None:
                s.disk_failed_locked(error, "writing")
            elif s.disk_error is not None:
                log.warning("kinesis spill disk works again (%s)", s.spill_dir)
                s.disk_error = None
            s.spill_busy = False
            s.cv.notify_all()

    def _write_new(self, path: Path, recs: list[SpillRecord]) -> None:
        """Write and fsync a new file; on failure nothing of it is left (if the disk allows)."""
        w = SpillWriter(path)
        try:
            w.append(b"".join(encode_spill_record(*r) for r in recs))
        except OSError:
            w.close()
            path.unlink(missing_ok=True)
            raise
        w.close()

    def _probe_disk(self) -> None:
        """Nothing to write, but the disk failed last time: does a small write work now?"""
        s = self._state
        path = s.spill_dir / PROBE_NAME
        path.unlink(missing_ok=True)
        w = SpillWriter(path)
        try:
            w.append(b"\0" * 4096)
        finally:
            w.close()
            path.unlink(missing_ok=True)

    def adopt(self) -> None:
        """Take over the spill files of sibling directories whose owner is gone."""
        s = self._state
        assert self._adopt_from is not None
        own = s.spill_dir.resolve()
        try:
            siblings = sorted(p for p in self._adopt_from.iterdir() if p.is_dir())
        except OSError as exc:
            log.warning("cannot list %s for orphaned spill dirs: %s", self._adopt_from, exc)
            return
        # ``adopt_from`` itself may be a spill dir of the layout before per-run directories.
        for d in (self._adopt_from, *siblings):
            moved = None if d.resolve() == own else self._adopt_dir(d, d in siblings)
            if moved is None:
                continue
            with s.cv:
                for p in moved:
                    # Replayed in name order with the other files not yet loaded.
                    bisect.insort(s.sealed, p, key=by_name)
                if moved:
                    s.spilling = True
                s.counts["adopted_dirs"] += 1
                s.counts["adopted_files"] += len(moved)
                s.cv.notify_all()

    def _adopt_dir(self, d: Path, remove: bool) -> list[Path] | None:
        """Move ``d``'s spill files into our directory if its lock is free, then remove it (or
        just its lock); the moved files, or None if ``d`` is not an orphaned spill directory."""
        s = self._state
        try:
            fd = os.open(d / LOCK_NAME, os.O_RDWR)
        except OSError:
            return None  # not a producer's directory, or one being removed
        moved: list[Path] = []
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # its owner is alive
            for src in sorted(d.glob(SPILL_GLOB), key=by_name):
                dst = s.spill_dir / src.name
                while dst.exists():
                    dst = dst.with_name(dst.stem + "-a" + dst.suffix)
                os.rename(src, dst)
                moved.append(dst)
            if moved:
                fsync_dir(s.spill_dir)
                fsync_dir(d)
            (d / PROBE_NAME).unlink(missing_ok=True)
            (d / LOCK_NAME).unlink(missing_ok=True)
            if remove:
                try:
                    d.rmdir()
                except OSError:
                    pass  # something else lives there (or a new producer just started in it)
            log.warning(
                "adopted orphaned spill dir %s: %d spill files moved to %s",
                d,
                len(moved),
                s.spill_dir,
            )
        except OSError as exc:
            # What was moved is ours now; the rest stays for the next round.
            log.error("adopting spill dir %s failed after %d files: %s", d, len(moved), exc)
        finally:
            os.close(fd)
        return moved
