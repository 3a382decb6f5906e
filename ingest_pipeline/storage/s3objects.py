"""Reading S3 objects that may not exist, under a least-privilege policy.

S3 answers a GET or HEAD of a missing key with 404 only to a caller allowed ``s3:ListBucket``
on the whole bucket; our IAM policy grants listing under the data prefixes only, so a missing
key can come back as 403. A 403 is therefore confirmed with a listing of that exact key (which
the prefix-scoped grant allows) before it is taken to mean "absent".
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

_MISSING = {"404", "NoSuchKey", "NotFound"}
_DENIED = {"403", "AccessDenied", "Forbidden"}


def _absent(s3: Any, bucket: str, key: str, exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code")
    if code in _MISSING:
        return True
    if code in _DENIED:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        return not any(o["Key"] == key for o in listed.get("Contents", []))
    return False


def head_or_none(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """``HeadObject``, or None when the object does not exist."""
    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _absent(s3, bucket, key, exc):
            return None
        raise


def get_bytes_or_none(s3: Any, bucket: str, key: str) -> bytes | None:
    """The object's body, or None when the object does not exist."""
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if _absent(s3, bucket, key, exc):
            return None
        raise


def get_object_or_none(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The ``GetObject`` response (body still to read, ``ETag``), or None when absent."""
    try:
        return s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _absent(s3, bucket, key, exc):
            return None
        raise
