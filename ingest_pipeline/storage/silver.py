"""Silver feature tables (SPEC §3, §4): parquet (zstd), Hive-style partitions, one PUT.

``{silver_prefix}/{table}/symbol=S/date=YYYY-MM-DD/hour=HH/part-0.parquet``: readable as one
dataset by pyarrow (``partitioning="hive"``), DuckDB (``hive_partitioning=true``) or Athena.
The partition values live in the path only: the file holds ``ts`` and the value columns (a
``symbol`` column in both places would clash when the dataset adds the partition fields).

Column descriptions are written into the parquet schema: per field (``description`` in the
field metadata) and as one JSON object in the schema metadata (``column_descriptions``).
They say where time comes from: BBA ``event_ts`` is the receive time (spot bookTicker has no
exchange time); book features use exchange time ``E``.

Path and schema helpers are pure; :class:`SilverStore` does the one ``put_object``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ingest_pipeline.features.spec import DEFAULT_SPEC, FeatureSpec
from ingest_pipeline.storage.s3objects import get_bytes_or_none
from ingest_pipeline.symbols import check_symbol
from ingest_pipeline.timeutil import HOUR_MS, from_ms

FEATURES_TABLE = "features"
PARTITION_COLUMNS = ("symbol",)
ZSTD_LEVEL = 3


def partition_path(table: str, symbol: str, hour_ms: int) -> str:
    """``{table}/symbol=S/date=YYYY-MM-DD/hour=HH/part-0.parquet`` (no prefix)."""
    check_symbol(symbol)
    if not table or "/" in table or table.startswith("."):
        raise ValueError(f"bad table name {table!r}")
    if hour_ms % HOUR_MS:
        raise ValueError(f"{hour_ms} is not the start of an hour")
    t = from_ms(hour_ms)
    return f"{table}/symbol={symbol}/date={t:%Y-%m-%d}/hour={t:%H}/part-0.parquet"


def silver_key(prefix: str, table: str, symbol: str, hour_ms: int) -> str:
    path = partition_path(table, symbol, hour_ms)
    return f"{prefix.strip('/')}/{path}" if prefix.strip("/") else path


def feature_schema(
    spec: FeatureSpec = DEFAULT_SPEC,
    table: str = FEATURES_TABLE,
    columns: Sequence[str] | None = None,
) -> pa.Schema:
    """The file schema of a feature table: ``ts`` (int64 epoch ms UTC), float64 values,
    ``complete`` (bool), with descriptions. ``columns``: the value columns of a table holding
    only some of the training-set columns (default: all of them)."""
    docs = spec.descriptions()
    if columns is None:
        names = spec.columns()
    else:
        unknown = [c for c in columns if c not in docs or c in ("symbol", "ts", "complete")]
        if unknown:
            raise ValueError(f"not value columns of the feature spec: {unknown}")
        names = ["ts", *columns, "complete"]
    fields = []
    for name in names:
        if name in PARTITION_COLUMNS:
            continue
        if name == "ts":
            typ = pa.int64()
        elif name == "complete":
            typ = pa.bool_()
        else:
            typ = pa.float64()
        fields.append(pa.field(name, typ, metadata={"description": docs[name]}))
    meta = {
        "table": table,
        "column_descriptions": json.dumps(docs, sort_keys=True),
        "time_semantics": "row ts sees records with event time < ts (labels excepted); "
        "trades: trade time T; book: exchange time E; BBA: receive time (no exchange time in "
        "spot bookTicker); klines: close_time",
    }
    return pa.schema(fields, metadata=meta)


def to_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Frame -> arrow table of ``schema``; NaN in float columns becomes null."""
    arrays = []
    for field in schema:
        col = frame[field.name]
        arrays.append(pa.array(col.to_numpy(), type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)


def encode_parquet(frame: pd.DataFrame, schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(to_table(frame, schema), buf, compression="zstd", compression_level=ZSTD_LEVEL)
    return buf.getvalue()


@dataclass(frozen=True)
class SilverWriteResult:
    bucket: str
    key: str
    rows: int
    bytes: int

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class SilverStore:
    """Writes feature tables of one bucket/prefix through a boto3 S3 client."""

    def __init__(self, s3_client: Any, bucket: str, prefix: str) -> None:
        self._s3 = s3_client
        self.bucket = bucket
        self.prefix = prefix

    def key(self, table: str, symbol: str, hour_ms: int) -> str:
        return silver_key(self.prefix, table, symbol, hour_ms)

    def write_hour(
        self,
        symbol: str,
        hour_ms: int,
        frame: pd.DataFrame,
        table: str = FEATURES_TABLE,
        spec: FeatureSpec = DEFAULT_SPEC,
        metadata: Mapping[str, str] | None = None,
        columns: Sequence[str] | None = None,
    ) -> SilverWriteResult:
        """One symbol-hour as one object, in one PUT (an empty frame writes nothing).
        ``columns``: the table's value columns when it is not the full training set."""
        if "symbol" in frame and len(frame) and (frame["symbol"] != symbol).any():
            raise ValueError(f"frame holds rows of other symbols than {symbol!r}")
        key = self.key(table, symbol, hour_ms)
        if frame.empty:
            return SilverWriteResult(self.bucket, key, 0, 0)
        body = encode_parquet(frame, feature_schema(spec, table, columns))
        self._s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType="application/vnd.apache.parquet",
            Metadata={"rows": str(len(frame)), **(metadata or {})},
        )
        return SilverWriteResult(self.bucket, key, len(frame), len(body))

    def read_hour(self, table: str, symbol: str, hour_ms: int) -> pd.DataFrame | None:
        """One symbol-hour of a table as written (nulls as NaN), or None when it does not
        exist. The frame has no ``symbol`` column: that lives in the path."""
        body = get_bytes_or_none(self._s3, self.bucket, self.key(table, symbol, hour_ms))
        return None if body is None else pq.read_table(io.BytesIO(body)).to_pandas()
