"""Missing objects under a prefix-scoped ListBucket grant: 403 is confirmed by a listing."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from ingest_pipeline.storage.s3objects import get_bytes_or_none, head_or_none


class DeniedS3:
    """What S3 does for a caller without bucket-wide ListBucket: 403 for a missing key."""

    def __init__(self, keys: set[str], code: str = "403") -> None:
        self.keys, self.code, self.listed = keys, code, []

    def _deny(self, op: str) -> ClientError:
        return ClientError({"Error": {"Code": self.code, "Message": "Forbidden"}}, op)

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        raise self._deny("HeadObject")

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        raise self._deny("GetObject")

    def list_objects_v2(self, Bucket: str, Prefix: str, MaxKeys: int) -> dict[str, Any]:
        self.listed.append(Prefix)
        return {"Contents": [{"Key": k} for k in sorted(self.keys) if k.startswith(Prefix)][:1]}


def test_403_on_a_missing_key_means_absent() -> None:
    s3 = DeniedS3({"bronze/a/x.gz.bak"})  # a longer key sharing the prefix is not the object
    assert head_or_none(s3, "b", "bronze/a/x.gz") is None
    assert get_bytes_or_none(s3, "b", "bronze/a/x.gz") is None
    assert s3.listed == ["bronze/a/x.gz", "bronze/a/x.gz"]


def test_403_on_an_existing_key_is_a_real_denial() -> None:
    with pytest.raises(ClientError):
        head_or_none(DeniedS3({"bronze/a/x.gz"}), "b", "bronze/a/x.gz")


def test_other_errors_propagate_without_listing() -> None:
    s3 = DeniedS3(set(), code="SlowDown")
    with pytest.raises(ClientError):
        get_bytes_or_none(s3, "b", "k")
    assert s3.listed == []
