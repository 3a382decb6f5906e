"""Stream archive: the hour's ``trade``, ``bba`` and ``depth_delta`` records read back from
Kinesis into bronze (SPEC §3), one asset per symbol and type, keys ``bronze/S/type``.

When an hour can be archived: its records arrive until the hour's end plus a grace period
(late arrivals: REST backfills of missed trades, spill files replayed after a Kinesis outage),
and Kinesis keeps them for the stream's retention (24 h by default). So:

- an hour not yet closed plus grace is **skipped**, not failed: no materialization, no check
  result, a log line saying when it can be archived. A schedule or a backfill that reaches the
  newest hour a few minutes early is not an error; the next run archives it. Failing would page
  someone for the normal passage of time.
- an hour older than the retention **fails** with a message naming the retention: its records
  are gone from Kinesis, and an empty archive would be a lie. (REST bronze still has the trades.)

Records arriving after the cutoff are not in the archive; a re-run within retention picks them
up and the bronze writer reports what changed.

The depth stream also carries the streamer's ``DepthSnapshot`` records (one after each restart
and each gap in a symbol's diff chain): the ``depth_delta`` asset writes them into the hour's
bronze ``depth_snapshot`` object, merged with the hourly REST captures already there (captures
accumulate as resync points), so offline silver resyncs its books where the online engine did.
The ``epoch`` the streamer stamps on each record (which process produced it) is dropped.

Trades the streamer could not put on the stream are in its gap records
(``streaming.continuity.GapStore``): the ``trade`` asset leaves their time out of the hour's
coverage, and its id check accepts the holes they explain.

Each hour of a run gets its own materialization figures and check evaluations, as in bronze
(``defs/bronze.py``, ``defs/checks.py``).

Each asset reads the whole stream of its type for the hour and keeps its symbol's records
(partition key = symbol): with S symbols a stream is read S times an hour. Fine for a handful of
symbols; beyond that, one multi_asset per type reading each stream once is the next step.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from ingest_pipeline import quality, spans
from ingest_pipeline.aws import boto3_client
from ingest_pipeline.defs.bronze import bronze_asset, bronze_key, hour_metadata
from ingest_pipeline.defs.catalog import with_code_references
from ingest_pipeline.defs.checks import Check, hour_evaluations, hour_partition_key
from ingest_pipeline.defs.partitions import hourly_partitions, partition_hours
from ingest_pipeline.defs.resources import BronzeResource
from ingest_pipeline.preview import human_size
from ingest_pipeline.records import BBA, DEPTH_DELTA, STREAMED, TRADE, id_field
from ingest_pipeline.settings import Settings
from ingest_pipeline.spans import Spans
from ingest_pipeline.storage.kinesis_reader import (
    ArchivedHour,
    KinesisReader,
    WindowNotReadable,
    archive_hour,
)
from ingest_pipeline.streaming.continuity import GapStore, gap_span
from ingest_pipeline.timeutil import HOUR_MS, from_ms, now_ms

# The types the streamer puts on Kinesis, each read back into bronze.
ARCHIVE_TYPES = tuple(t.name for t in STREAMED)


class KinesisResource(dg.ConfigurableResource):
    """Kinesis streams (AWS, LocalStack or moto) for reading hours back; credentials from the
    AWS chain, except on a loopback emulator."""

    region_name: str
    endpoint_url: str | None = None
    # Records arriving this long after the hour's end still belong to its archive.
    grace_seconds: float = 240.0
    # The read starts this long before the hour: absorbs producer/Kinesis clock skew.
    lead_seconds: float = 60.0

    _client: Any = PrivateAttr(default=None)

    def get_client(self) -> Any:
        if self._client is None:
            self._client = boto3_client(
                "kinesis", region=self.region_name, endpoint_url=self.endpoint_url
            )
        return self._client

    def get_reader(self) -> KinesisReader:
        return KinesisReader(self.get_client(), lead_ms=int(self.lead_seconds * 1000))


def kinesis_resource(settings: Settings) -> KinesisResource:
    return KinesisResource(
        region_name=settings.region,
        endpoint_url=settings.aws_endpoint_url,
        grace_seconds=float(settings.archive_grace_seconds),
    )


@dataclass(frozen=True)
class ArchiveType:
    data_type: str
    description: str
    checks: tuple[Check, ...]


# Checks see the ArchivedHour: records deduplicated by key, in the order Kinesis delivered them.
ARCHIVE_KINDS = {
    TRADE: ArchiveType(
        TRADE,
        "Real-time trades (`<symbol>@trade`, MarketTrade, source `sbe`) as they reached "
        "Kinesis, deduplicated by trade id.",
        (
            Check(
                "ids_contiguous",
                "Trade ids of the hour form one contiguous range, except spans the streamer "
                "recorded as gaps (their time is outside the object's coverage); other gaps "
                "are listed with their ranges.",
                lambda a: _trade_ids_rule(a),
                blocking=True,
            ),
        ),
    ),
    BBA: ArchiveType(
        BBA,
        "Best bid/ask updates (`<symbol>@bookTicker`); spot bookTicker has no event time, so "
        "`event_ts` is the receive time.",
        (
            Check(
                "update_ids_increasing",
                "Update ids strictly increase in the order Kinesis delivered them.",
                lambda a: quality.check_increasing_ids(a.records, id_field(BBA)),
            ),
        ),
    ),
    DEPTH_DELTA: ArchiveType(
        DEPTH_DELTA,
        "Order book diffs (`<symbol>@depth@100ms`) with first/final update ids; the first diff "
        "after a gap carries `gap: true`.",
        (
            Check(
                "depth_chain",
                "Every diff continues the previous one (`U == previous u + 1`); every break is "
                "listed and diffs marked `gap: true` are counted.",
                lambda a: quality.check_depth_chain(a.records),
            ),
        ),
    ),
}


def _trade_ids_rule(archived: ArchivedHour) -> quality.Verdict:
    """Contiguous trade ids; holes the streamer recorded (gap records) are known, not bad."""
    ident = id_field(TRADE)
    verdict = quality.check_contiguous_ids(archived.records, ident)
    if verdict.passed or not archived.known_gaps:
        return verdict
    ids = sorted(r[ident] for r in archived.records)
    if len(ids) != len(set(ids)):
        return verdict
    holes = quality.id_gaps(ids)
    unknown = [(a, b) for a, b in holes
               if not any(g0 <= a and b <= g1 for g0, g1 in archived.known_gaps)]  # fmt: skip
    if unknown:
        return verdict
    n = sum(b - a + 1 for a, b in holes)
    return quality.Verdict(
        True,
        f"{len(ids)} {ident}s, contiguous but for {n} id(s) in recorded streamer gaps",
        {"recorded_gaps": [f"{a}..{b}" for a, b in holes]},
        verdict.numbers,
    )


def stream_gaps(
    bronze: BronzeResource, symbol: str, hours: list[int]
) -> dict[int, tuple[Spans | None, list[tuple[int, int]]]]:
    """Per hour: the coverage of the trade stream (None: the whole hour) and the id ranges
    of the streamer's gap records (``streaming.continuity.GapStore``) that reach into it."""
    # Imported here (its module imports aiohttp): every run process imports the definitions.
    from ingest_pipeline.streaming.config import StreamerConfig

    store = GapStore(bronze.s3.get_client(), bronze.bucket, StreamerConfig().state_prefix)
    records = store.list(symbol)
    out: dict[int, tuple[Spans | None, list[tuple[int, int]]]] = {}
    for hour in hours:
        inside = [(g, gap_span(g, hour)) for g in records]
        inside = [(g, (lo, hi)) for g, (lo, hi) in inside if lo < hi]
        uncovered = [span for _, span in inside]
        coverage = spans.gaps(uncovered, hour, hour + HOUR_MS) if uncovered else None
        out[hour] = (coverage, [(g["first_id"], g["last_id"]) for g, _ in inside])
    return out


def build_archive_asset(symbol: str, kind: ArchiveType, settings: Settings) -> dg.AssetsDefinition:
    partitions = hourly_partitions(settings)
    key = bronze_key(symbol, kind.data_type, settings)
    stream = settings.stream_of(kind.data_type)

    # Skippable: a run over an hour that is not closed yet ends without a materialization.
    @bronze_asset(
        key,
        settings,
        symbol,
        kind.data_type,
        kinds={"s3", "kinesis"},
        partitions=partitions,
        description=(
            f"{symbol}: {kind.description} Read back hourly from Kinesis stream `{stream}` "
            "(AT_TIMESTAMP over every shard, grace for late arrivals, bounded by retention). "
            "Gzip JSONL, one object per hour."
        ),
        metadata={"kinesis_stream": dg.MetadataValue.text(stream)},
        checks=kind.checks,
        skippable=True,
    )
    def _asset(
        context: dg.AssetExecutionContext, kinesis: KinesisResource, bronze: BronzeResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckEvaluation]:
        hours = list(partition_hours(context))
        now = now_ms()
        grace_ms = int(kinesis.grace_seconds * 1000)
        ready_at = hours[-1] + HOUR_MS + grace_ms
        if now < ready_at:
            context.log.info(
                f"{symbol} {kind.data_type} {from_ms(hours[-1]):%Y-%m-%d %H}h skipped: records "
                f"may still arrive until {from_ms(ready_at):%H:%M:%S} UTC (hour end + "
                f"{kinesis.grace_seconds:.0f} s grace); a run after that archives it"
            )
            return
        reader = kinesis.get_reader()
        try:
            retention = reader.check_retention(stream, hours[0], now)
        except WindowNotReadable as exc:
            raise dg.Failure(
                description=f"{symbol} {kind.data_type}: cannot archive "
                f"{from_ms(hours[0]):%Y-%m-%d %H}h: {exc}. The REST bronze types "
                "(agg_trades, trades) still cover that hour's trades.",
                metadata={"retention_hours": reader.retention_hours(stream)},
            ) from None
        context.log.info(f"Kinesis stream {stream} keeps records {retention} h")
        store = bronze.get_store()
        # Trades the streamer recorded as never put: outside the hour's coverage.
        gaps = stream_gaps(bronze, symbol, hours) if kind.data_type == TRADE else {}
        verdicts: dict[int, dict[str, quality.Verdict]] = {}
        for hour in hours:
            coverage, known = gaps.get(hour, (None, []))
            archived = archive_hour(
                reader, store, stream, symbol, kind.data_type, hour, hour + HOUR_MS + grace_ms,
                coverage, known,
            )  # fmt: skip
            _log_hour(context, bronze, symbol, kind.data_type, hour, archived)
            read = archived.read
            meta = hour_metadata(
                kind.data_type, archived.result, archived.records, len(read.malformed)
            )
            meta["source"] = dg.MetadataValue.text("kinesis")
            meta["kinesis_duplicates"] = dg.MetadataValue.int(archived.duplicates)
            meta["outside_window"] = dg.MetadataValue.int(read.outside_window)
            meta["kinesis_read"] = dg.MetadataValue.json(read.summary())
            meta["retention_hours"] = dg.MetadataValue.int(retention)
            snap = archived.snapshot_result
            if snap is not None:
                meta["stream_depth_snapshots"] = dg.MetadataValue.int(len(archived.snapshots))
                meta["depth_snapshot_uri"] = dg.MetadataValue.text(snap.uri)
                meta["depth_snapshot_records"] = dg.MetadataValue.int(snap.records)
                meta["depth_snapshot_write_action"] = dg.MetadataValue.text(snap.action)
            context.add_asset_metadata(meta, asset_key=key, partition_key=hour_partition_key(hour))
            verdicts[hour] = {check.name: check.rule(archived) for check in kind.checks}
        # No metadata here: Dagster would copy it onto every hour of a range.
        yield dg.MaterializeResult(asset_key=key)
        yield from hour_evaluations(context, key, kind.checks, verdicts)

    return _asset


def _log_hour(
    context: dg.AssetExecutionContext,
    bronze: BronzeResource,
    symbol: str,
    data_type: str,
    hour: int,
    archived: ArchivedHour,
) -> None:
    read = archived.read
    if read.malformed:
        uri = bronze.write_rejects(symbol, data_type, hour, read.malformed)
        context.log.warning(
            f"{symbol} {data_type} {from_ms(hour):%Y-%m-%d %H}h: {len(read.malformed)} "
            f"undecodable Kinesis records kept aside at {uri}; first: "
            f"{read.malformed[0]['reason']}"
        )
    result = archived.result
    if result.changes:
        context.log.warning(f"{result.uri} replaced, records changed: {result.changes}")
    snap = archived.snapshot_result
    if snap is not None:
        context.log.info(
            f"{snap.uri}: {len(archived.snapshots)} depth snapshots from the stream merged with "
            f"the hour's captures: {snap.records} snapshots, {snap.action}"
        )
    context.log.info(
        f"{result.uri}: {result.records} records ({archived.duplicates} Kinesis duplicates "
        f"dropped), {human_size(result.bytes)}, {result.action}; shards: "
        f"{read.summary()['shards']}"
    )


def build_archive_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    return with_code_references(
        [
            build_archive_asset(symbol, ARCHIVE_KINDS[t], settings)
            for symbol in settings.symbols
            for t in ARCHIVE_TYPES
        ]
    )
