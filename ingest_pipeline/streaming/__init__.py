"""The real-time streamer: Binance WebSocket -> normalize -> dedup -> Kinesis, with /health and
/metrics. No Dagster here: ``defs/`` wraps ``Streamer`` in a job."""

from ingest_pipeline.streaming.config import StreamerConfig
from ingest_pipeline.streaming.streamer import Streamer

__all__ = ["Streamer", "StreamerConfig"]
