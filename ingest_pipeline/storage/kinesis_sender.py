"""The Kinesis producer's sender thread: picks the next batch (retries first, then the stream
whose oldest record has waited longest), asks the gate, calls PutRecords, retries the failed
entries with backoff, and reads spill files back in when nothing newer is queued
(``storage/kinesis.py`` says what it guarantees)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingest_pipeline.storage.circuit import CircuitState
from ingest_pipeline.storage.kinesis_config import AckHook, CircuitHook, Gate
from ingest_pipeline.storage.kinesis_state import Entry, ProducerState, StreamQueue
from ingest_pipeline.storage.spill import SpillRef, SpillWriter, read_spill_file

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 1.0


def _call_hook(hook: Callable[..., None], *args: Any) -> None:
    # A failing metrics hook must not kill the sender thread, which would stop delivery.
    try:
        hook(*args)
    except Exception:
        log.exception("kinesis producer hook %r failed", hook)


class Sender:
    """The body of the ``kinesis-sender`` thread (``run``). It owns the client, the hooks, the
    gate and the jitter; everything else is the shared ``ProducerState``. Hooks run on this
    thread, outside the lock."""

    def __init__(
        self,
        state: ProducerState,
        client: Any,
        *,
        on_ack: AckHook | None,
        on_circuit_change: CircuitHook | None,
        gate: Gate | None,
    ) -> None:
        self._state = state
        self._client = client
        self._on_ack = on_ack
        self._on_circuit_change = on_circuit_change
        self._gate = gate
        self._rng = random.Random(state.cfg.seed)

    def _pick_locked(self, now: float) -> tuple[StreamQueue | None, list[Entry], bool, float]:
        """The next batch to send (and whether it is a resend), or the time to wait for one."""
        s = self._state
        wait = s.breaker.retry_after()
        if wait > 0:
            return None, [], False, wait
        wait = _IDLE_WAIT_S
        urgent = s.flush_waiters > 0 or s.closed
        cfg = s.cfg
        best: StreamQueue | None = None
        best_t = float("inf")
        for st in s.streams.values():
            if st.retry:
                if st.retry_at <= now:
                    entries, st.retry = st.retry, []
                    return st, entries, st.retry_resend, 0.0
                wait = min(wait, st.retry_at - now)
                continue
            head = st.backed[0] if st.backed else st.mem[0] if st.mem else None
            if head is None:
                continue
            ready = (
                urgent
                or st.backed
                or len(st.mem) >= cfg.max_batch_records
                or st.mem_bytes >= cfg.max_batch_bytes
                or head[3] + cfg.linger_s <= now
            )
            if not ready:
                wait = min(wait, head[3] + cfg.linger_s - now)
            elif head[3] < best_t:
                best, best_t = st, head[3]
        if best is None:
            return None, [], False, wait
        return best, self._take_batch_locked(best), False, 0.0

    def _take_batch_locked(self, st: StreamQueue) -> list[Entry]:
        s = self._state
        max_n, max_b = s.cfg.max_batch_records, s.cfg.max_batch_bytes
        batch: list[Entry] = []
        size = 0
        q = st.backed
        while q and len(batch) < max_n and size + q[0][2] <= max_b:
            e = q.popleft()
            batch.append(e)
            size += e[2]
        q = st.mem
        while q and len(batch) < max_n and size + q[0][2] <= max_b:
            e = q.popleft()
            batch.append(e)
            size += e[2]
            st.mem_bytes -= e[2]
        return batch

    def _next_file_locked(self) -> SpillWriter | Path | None:
        """The oldest spill file, when nothing else is queued: its records come next."""
        s = self._state
        if s.sealed:
            return s.sealed.pop(0) if s.clock() >= s.load_retry_at else None
        if s.writer is not None and not s.spill_busy:
            w, s.writer = s.writer, None
            return w
        return None

    def _take_unspilled_locked(self) -> bool:
        """Caught up with the disk: the records still waiting for it are the newest, send them
        from memory. Back to memory mode once Kinesis takes records again."""
        s = self._state
        if s.sealed or s.writer is not None or s.spill_busy:
            return False
        if s.breaker.state is CircuitState.CLOSED and not s.fenced:
            s.spilling = False
        if not s.unspilled:
            return False
        for stream, pk, data, size, t in s.unspilled:
            st = s.stream_locked(stream)
            st.mem.append((pk, data, size, t, None))
            st.mem_bytes += size
        s.buffer_records += s.unspilled_records
        s.buffer_bytes += s.unspilled_bytes
        s.unspilled, s.unspilled_records, s.unspilled_bytes = [], 0, 0
        return True

    def _load(self, item: SpillWriter | Path) -> None:
        s = self._state
        if isinstance(item, SpillWriter):
            item.close()
            item = item.path
        try:
            contents = read_spill_file(item)
        except OSError as exc:
            with s.cv:
                s.sealed.insert(0, item)
                s.load_retry_at = s.clock() + s.cfg.disk_retry_s
                s.disk_failed_locked(exc, f"reading {item.name} in")
            return
        records = contents.records
        if contents.damaged:
            log.error(
                "spill file %s: %d damaged regions (%d bytes, at offsets %s) could not be read; "
                "%d whole records around them are replayed",
                item,
                len(contents.damaged),
                contents.unreadable_bytes,
                [off for off, _ in contents.damaged][:10],
                len(records),
            )
        now = s.clock()
        with s.cv:
            s.counts["spill_damaged_regions"] += len(contents.damaged)
            s.counts["spill_unreadable_bytes"] += contents.unreadable_bytes
            if not records:
                try:
                    item.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("could not delete empty spill file %s: %s", item, exc)
                return
            ref = SpillRef(item, len(records), journal=False)
            s.refs.add(ref)
            for stream, pk, data in records:
                st = s.stream_locked(stream)
                st.backed.append((pk, data, len(data) + len(pk.encode()), now, ref))
            s.counts["replayed"] += len(records)

    def run(self) -> None:
        s = self._state
        try:
            while True:
                load: SpillWriter | Path | None = None
                with s.cv:
                    while True:
                        if s.stop or s.fenced:
                            return
                        st, batch, resend, wait = self._pick_locked(s.clock())
                        if st is not None:
                            s.sending = True
                            s.inflight = (st, batch)
                            s.inflight_t = s.clock()
                            break
                        if s.breaker.retry_after() == 0 and not any(
                            q.has_queued() for q in s.streams.values()
                        ):
                            load = self._next_file_locked()
                            if load is not None:
                                s.sending = True
                                break
                            if self._take_unspilled_locked():
                                continue
                        s.cv.wait(wait)
                if load is not None:
                    self._load(load)
                    with s.cv:
                        s.sending = False
                        s.cv.notify_all()
                else:
                    assert st is not None
                    self._send(st, batch, resend)
                self._fire_circuit_events()
        except Exception:
            log.exception("kinesis sender crashed")
            raise
        finally:
            with s.cv:
                s.sending = False
                s.sender_done = True
                s.cv.notify_all()
            # The spill thread now writes everything still held only in memory.
            s.wake.set()
            self._fire_circuit_events()

    def _fire_circuit_events(self) -> None:
        s = self._state
        with s.lock:
            events, s.events[:] = list(s.events), []
        if self._on_circuit_change is not None:
            for old, new in events:
                _call_hook(self._on_circuit_change, old, new)

    def _allowed(self, gate: Gate, st: StreamQueue, batch: list[Entry], resend: bool) -> bool:
        """Ask the gate; on anything but yes the batch goes back to the head of its stream."""
        s = self._state
        try:
            allowed: bool | None = bool(gate())
        except Exception as exc:
            log.warning("kinesis gate failed (%r): asking again in %.1f s", exc, s.cfg.gate_retry_s)
            allowed = None
        if allowed:
            return True
        with s.cv:
            s.inflight = None
            s.sending = False
            st.retry, st.retry_resend = batch, resend
            st.retry_at = s.clock() + s.cfg.gate_retry_s
            if allowed is None:
                s.counts["gate_errors"] += 1
            else:
                s.fenced = s.closed = True
                log.error(
                    "kinesis producer fenced by its gate: sending stops, everything unsent goes "
                    "to %s",
                    s.spill_dir,
                )
            s.cv.notify_all()
        s.wake.set()
        return False

    def _send(self, st: StreamQueue, batch: list[Entry], resend: bool) -> None:
        s = self._state
        if self._gate is not None and not self._allowed(self._gate, st, batch, resend):
            return
        nbytes = sum(e[2] for e in batch)
        records = [{"Data": e[1], "PartitionKey": e[0]} for e in batch]
        results: list[dict[str, Any]] | None = None
        try:
            results = self._client.put_records(StreamName=st.name, Records=records)["Records"]
        except Exception as exc:
            # Every failure is retried, whatever it is: losing records is worse than retrying a
            # misconfiguration, which the circuit breaker and spill contain.
            log.warning("PutRecords to %s failed (%d records): %r", st.name, len(batch), exc)
        acked: list[Entry] = []
        with s.cv:
            # The spill thread may have journaled entries of the batch meanwhile: re-read them.
            s.inflight = None
            s.sending = False
            if resend:
                s.counts["retried"] += len(batch)
            s.counts["batches_sent"] += 1
            s.last_batch = (len(batch), nbytes)
            s.max_batch = (max(s.max_batch[0], len(batch)), max(s.max_batch[1], nbytes))
            if results is None or len(results) != len(batch):
                s.counts["call_failures"] += 1
                s.breaker.record_failure()
                self._retry_locked(st, batch)
            else:
                failed: list[Entry] = []
                for e, r in zip(batch, results, strict=True):
                    (failed if r.get("ErrorCode") else acked).append(e)
                # A call whose every entry was refused is a failed call for the breaker. One
                # that made progress restarts the backoff, so a shard taking most entries is
                # not slowed by an exponent built while it took none.
                if acked:
                    s.breaker.record_success()
                    st.attempt = 0
                else:
                    s.breaker.record_failure()
                if failed:
                    s.counts["failed_entries"] += len(failed)
                    self._retry_locked(st, failed)
                self._ack_locked(acked)
            s.cv.notify_all()
        if acked and self._on_ack is not None:
            _call_hook(self._on_ack, st.name, len(acked), min(e[3] for e in acked))

    def _retry_locked(self, st: StreamQueue, entries: list[Entry]) -> None:
        s = self._state
        st.attempt += 1
        cap = min(s.cfg.backoff_max_s, s.cfg.backoff_base_s * 2 ** min(st.attempt, 30))
        # Equal jitter: at least half the step, so retries back off, and spread over the other
        # half, so streams and producers do not retry in lockstep.
        st.retry_at = s.clock() + cap / 2 + self._rng.uniform(0, cap / 2)
        st.retry = entries
        st.retry_resend = True

    def _ack_locked(self, acked: list[Entry]) -> None:
        s = self._state
        s.counts["acknowledged"] += len(acked)
        n = nbytes = 0
        for e in acked:
            ref = e[4]
            if ref is None:
                n += 1
                nbytes += e[2]
                continue
            if ref.journal:
                n += 1
                nbytes += e[2]
            ref.outstanding -= 1
            if ref.outstanding == 0 and not ref.writing:
                s.unlink_ref_locked(ref)
        s.buffer_records -= n
        s.buffer_bytes -= nbytes
