"""Resources for the external systems: Binance REST and the bronze store on S3."""

from collections.abc import Sequence
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from ingest_pipeline.aws import (
    CONNECT_TIMEOUT_S,
    MAX_ATTEMPTS,
    READ_TIMEOUT_S,
    boto3_client,
    call_bound_s,
    client_config,
)
from ingest_pipeline.binance.rest import BinanceRestClient
from ingest_pipeline.settings import Settings
from ingest_pipeline.storage.bronze import BronzeStore, write_rejects


class BinanceRestResource(dg.ConfigurableResource):
    """Binance spot REST (the real API or the local simulator), weight-aware with retries."""

    base_url: str
    connect_timeout_s: float = 3.05
    read_timeout_s: float = 10.0
    max_attempts: int = 8
    weight_headroom: float = 0.03

    _client: BinanceRestClient | None = PrivateAttr(default=None)

    def get_client(self) -> BinanceRestClient:
        # One client per resource instance, so that weight accounting spans the whole run.
        if self._client is None:
            self._client = BinanceRestClient(
                self.base_url,
                connect_timeout_s=self.connect_timeout_s,
                read_timeout_s=self.read_timeout_s,
                max_attempts=self.max_attempts,
                weight_headroom=self.weight_headroom,
            )
        return self._client


class BoundedS3Resource(dg.ConfigurableResource):
    """S3 with every call bounded in time: a call that gets no answer fails within
    ``call_bound_s()`` (87 s by default).

    Our own resource over ``ingest_pipeline.aws.boto3_client`` rather than dagster-aws's
    ``S3Resource``: that one builds its client with ``Config(retries={"max_attempts": n})``
    only (botocore's 60 s connect and read timeouts, ``max_attempts`` counted as *retries*: the
    default 5 meant six 60 s attempts, six minutes of a partition run on a stalled S3), and
    importing ``dagster_aws`` costs every run and step process about a second (its package
    imports all its components, and through them ``dagster._core.test_utils``)."""

    region_name: str = Field(description="AWS region.")
    endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (None: AWS's own, or AWS_ENDPOINT_URL_S3)."
    )
    max_attempts: int = Field(
        default=MAX_ATTEMPTS, description="Attempts per call in total, the first included."
    )
    connect_timeout_s: float = Field(default=CONNECT_TIMEOUT_S, description="Per attempt.")
    read_timeout_s: float = Field(
        default=READ_TIMEOUT_S, description="Per attempt: silence before an answer."
    )
    # Explicit credentials; None: the AWS credential chain (or the emulator's placeholders on a
    # loopback endpoint).
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None

    def call_bound_s(self) -> float:
        """The longest one S3 call can take before it fails."""
        return call_bound_s(self.connect_timeout_s, self.read_timeout_s, self.max_attempts)

    def get_client(self) -> Any:
        return boto3_client(
            "s3",
            region=self.region_name,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=client_config(self.connect_timeout_s, self.read_timeout_s, self.max_attempts),
        )


class BronzeResource(dg.ConfigurableResource):
    """The bronze layer: one bucket, a prefix for records and one for rejected payloads."""

    s3: dg.ResourceDependency[BoundedS3Resource]
    bucket: str
    bronze_prefix: str
    deadletter_prefix: str

    def get_store(self) -> BronzeStore:
        return BronzeStore(self.s3.get_client(), self.bucket, self.bronze_prefix)

    def write_rejects(
        self, symbol: str, data_type: str, hour_ms: int, rejects: Sequence[dict[str, Any]]
    ) -> str:
        return write_rejects(
            self.s3.get_client(),
            self.bucket,
            self.deadletter_prefix,
            symbol,
            data_type,
            hour_ms,
            rejects,
        )


def s3_resource(settings: Settings) -> BoundedS3Resource:
    """S3 at the configured endpoint; credentials from the AWS chain, except on an emulator
    (``aws.boto3_client`` decides on the endpoint it resolves, ``AWS_ENDPOINT_URL_S3`` first)."""
    return BoundedS3Resource(region_name=settings.region, endpoint_url=settings.aws_endpoint_url)


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {
        "binance": BinanceRestResource(base_url=settings.binance_rest_url),
        "bronze": BronzeResource(
            s3=s3_resource(settings),
            bucket=settings.bucket,
            bronze_prefix=settings.bronze_prefix,
            deadletter_prefix=settings.deadletter_prefix,
        ),
    }
