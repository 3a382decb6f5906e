"""Streamer hot path throughput: real captured frames through ``Streamer.on_frame``
(normalize + dedup + depth chain + route + ``KinesisProducer.put``) and the producer's flush,
into ``NoopKinesisClient`` (the streamer's own cost) and into the embedded moto server (the
same run), in messages/s. Not a test: ``python bench/stream_throughput.py [N]``."""

from __future__ import annotations

import gzip
import sys
import tempfile
import time

from ingest_pipeline.capture_loader import CAPTURES_DIR
from ingest_pipeline.localstack import EmbeddedAWS
from ingest_pipeline.settings import load_settings
from ingest_pipeline.storage.kinesis import NoopKinesisClient, producer_client
from ingest_pipeline.streaming import Streamer, StreamerConfig

CAPTURE = CAPTURES_DIR


def frames(limit: int) -> list[bytes]:
    out: list[bytes] = []
    for name in ("btcusdt_20240808.gz",):  # trade, bookTicker, depth@100ms in capture order
        with gzip.open(CAPTURE / name, "rb") as fh:
            for line in fh:
                js = line.split(b" ", 1)[1].rstrip(b"\n")
                if js.startswith(b'{"stream"'):
                    out.append(js)
    return out[:limit] if limit else out


def run(settings, client, msgs: list[bytes], label: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        # The hot path only: no lease in S3 (the producer's gate would wait for one).
        cfg = StreamerConfig(
            symbols=("BTCUSDT", "ETHUSDT"),
            deadletter_dir=f"{tmp}/dl",
            spill_dir=f"{tmp}/sp",
            continuity=False,
        )
        s = Streamer(settings, cfg, kinesis_client=client)
        s._producer = s._make_producer()
        t0 = time.perf_counter()
        ts = int(time.time() * 1000)
        for m in msgs:
            s.on_frame(m, ts)
        t_put = time.perf_counter() - t0
        assert s._producer.flush(300)
        t_all = time.perf_counter() - t0
        st = s._producer.stats()
        s._producer.close()
    n = len(msgs)
    print(f"{label:>6}: {n} msgs, hot path {n / t_put:>9,.0f} msg/s "
          f"({t_put * 1e6 / n:.1f} us/msg), end to end incl. acks {n / t_all:>9,.0f} msg/s, "
          f"acked {st.acknowledged}, "
          f"batches {st.batches_sent}")  # fmt: skip
    return {"hot": n / t_put, "e2e": n / t_all}


def main() -> None:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 30_000
    msgs = frames(limit)
    base = load_settings("local", environ={})
    with EmbeddedAWS(base) as aws:
        settings = aws.settings
        noop = run(settings, NoopKinesisClient(), msgs, "noop")
        moto = run(settings, producer_client(settings), msgs, "moto")
    print(f"moto / noop end to end: {moto['e2e'] / noop['e2e']:.3f}")


if __name__ == "__main__":
    main()
