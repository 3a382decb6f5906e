"""Silver parquet layout and schema (storage/silver.py) with feature frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from ingest_pipeline.features import DEFAULT_SPEC, hour_features
from ingest_pipeline.storage.silver import SilverStore, feature_schema, silver_key
from ingest_pipeline_tests.features.test_hand_computed import H0, SYM, inputs


class FakeS3:
    def __init__(self) -> None:
        self.puts: list[dict] = []

    def put_object(self, **kwargs) -> dict:
        self.puts.append(kwargs)
        return {}


def test_key_layout() -> None:
    assert (
        silver_key("silver", "features", "BTCUSDT", H0)
        == "silver/features/symbol=BTCUSDT/date=2024-01-01/hour=01/part-0.parquet"
    )
    with pytest.raises(ValueError):
        silver_key("silver", "features", "BTCUSDT", H0 + 1)
    with pytest.raises(ValueError):
        silver_key("silver", "features", "../x", H0)


def test_schema_descriptions() -> None:
    schema = feature_schema()
    assert "symbol" not in schema.names and schema.field("ts").type == "int64"
    assert "receive time" in schema.field("spread").metadata[b"description"].decode()
    assert "exchange time E" in schema.field("depth_imbalance_5").metadata[b"description"].decode()
    docs = json.loads(schema.metadata[b"column_descriptions"])
    assert set(docs) == set(DEFAULT_SPEC.columns())


def test_write_and_read_as_dataset(tmp_path: Path) -> None:
    previous, current, nxt = inputs()
    frame = hour_features(SYM, H0, current, previous, nxt).frame
    s3 = FakeS3()
    store = SilverStore(s3, "bucket", "silver")
    result = store.write_hour(SYM, H0, frame)
    assert len(s3.puts) == 1 and result.rows == 3600
    put = s3.puts[0]
    assert put["Key"] == result.key and put["Bucket"] == "bucket"
    # lay the object out as S3 would and read it back as a Hive dataset
    path = tmp_path / put["Key"]
    path.parent.mkdir(parents=True)
    path.write_bytes(put["Body"])
    assert pq.ParquetFile(path).metadata.row_group(0).column(1).compression == "ZSTD"
    table = ds.dataset(tmp_path / "silver" / "features", partitioning="hive").to_table()
    back = table.to_pandas()
    assert back["symbol"].unique().tolist() == [SYM]
    assert str(back["date"].iloc[0]) == "2024-01-01" and int(back["hour"].iloc[0]) == 1
    assert back["ts"].tolist() == frame["ts"].tolist()
    # NaN became parquet null, values round-trip exactly
    col = table.column("depth_imbalance_5")
    assert col.null_count == int(frame["depth_imbalance_5"].isna().sum()) > 0
    np.testing.assert_array_equal(back["vwap"].to_numpy(), frame["vwap"].to_numpy())
    assert back["complete"].tolist() == frame["complete"].tolist()


def test_empty_frame_writes_nothing() -> None:
    s3 = FakeS3()
    previous, _, _ = inputs()
    from ingest_pipeline.features import SymbolInputs

    frame = hour_features(SYM, H0, SymbolInputs(), previous).frame
    assert SilverStore(s3, "b", "silver").write_hour(SYM, H0, frame).rows == 0
    assert s3.puts == []
