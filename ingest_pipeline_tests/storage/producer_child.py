"""A Kinesis producer in a process of its own, for the tests that kill it or starve its disk.

``python -m ingest_pipeline_tests.storage.producer_child --endpoint URL --spill-dir DIR
--stream S --count N --rate R [--max-buffer-records B] [--max-unspilled-records U]
[--read-timeout S] [--flush-after FILE]``

Puts ``N`` records ``{"k": key, "i": seq}`` over four keys at ``R`` records/s, numbered like
``put_many`` in test_kinesis.py, and prints ``put <n> <time.time()>`` after every 20 (flushed,
so a parent that kills it knows what was accepted and when). Then, with ``--flush-after``, it
waits for that file to exist, flushes, prints ``stats <json>`` and ``flushed <bool>`` and exits;
without it, it sleeps until killed.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import orjson
from botocore.config import Config

from ingest_pipeline.storage.kinesis import KinesisProducer
from ingest_pipeline_tests.storage.test_kinesis import FAST, KEYS, TEST_CLIENT_CONFIG, client_for


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--spill-dir", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--max-buffer-records", type=int, default=FAST.max_buffer_records)
    ap.add_argument("--max-unspilled-records", type=int, default=FAST.max_unspilled_records)
    ap.add_argument("--read-timeout", type=float, default=TEST_CLIENT_CONFIG.read_timeout)
    ap.add_argument("--flush-after")
    args = ap.parse_args()
    cfg = dataclasses.replace(
        FAST,
        max_buffer_records=args.max_buffer_records,
        max_unspilled_records=args.max_unspilled_records,
        disk_retry_s=0.3,
    )
    client = client_for(
        args.endpoint, TEST_CLIENT_CONFIG.merge(Config(read_timeout=args.read_timeout))
    )
    producer = KinesisProducer(client, args.spill_dir, cfg)
    t0 = time.monotonic()
    for j in range(args.count):
        key, seq = KEYS[j % len(KEYS)], j // len(KEYS)
        producer.put(args.stream, key, orjson.dumps({"k": key, "i": seq, "p": "x" * 60}))
        if (j + 1) % 20 == 0:
            print(f"put {j + 1} {time.time():.6f}", flush=True)
            # Paced in chunks: sleeping per record would cost more than the rate allows.
            time.sleep(max(0.0, t0 + (j + 1) / args.rate - time.monotonic()))
    print(f"put {args.count} {time.time():.6f}", flush=True)
    if args.flush_after is None:
        while True:
            time.sleep(60)
    while not Path(args.flush_after).exists():
        time.sleep(0.05)
    flushed = producer.flush(60)
    stats = dataclasses.asdict(producer.stats())
    print(f"stats {orjson.dumps(stats).decode()}", flush=True)
    closed = producer.close(10)
    print(f"flushed {flushed and closed}", flush=True)


if __name__ == "__main__":
    main()
