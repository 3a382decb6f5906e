"""Resources for the external systems: Binance REST and the bronze store on S3."""

from collections.abc import Sequence
from typing import Any

import boto3
import dagster as dg
from botocore import UNSIGNED
from botocore.config import Config
from dagster_aws.s3 import S3Resource
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


class BronzeResource(dg.ConfigurableResource):
    """The bronze layer: one bucket, a prefix for records and one for rejected payloads."""

    s3: dg.ResourceDependency[S3Resource]
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


class BoundedS3Resource(S3Resource):
    """dagster-aws's ``S3Resource`` with every call bounded in time.

    dagster-aws builds its client with ``Config(retries={"max_attempts": max_attempts})`` only:
    botocore's 60 s connect and read timeouts, and ``max_attempts`` counted as *retries*, so the
    default 5 meant six 60 s attempts, six minutes of a partition run on a stalled S3. Here the
    client uses ``ingest_pipeline.aws.client_config``: per-attempt timeouts and a total attempt
    count, so a call that gets no answer fails within ``call_bound_s()`` (87 s by default)."""

    max_attempts: int = Field(
        default=MAX_ATTEMPTS, description="Attempts per call in total, the first included."
    )
    connect_timeout_s: float = Field(default=CONNECT_TIMEOUT_S, description="Per attempt.")
    read_timeout_s: float = Field(
        default=READ_TIMEOUT_S, description="Per attempt: silence before an answer."
    )

    def call_bound_s(self) -> float:
        """The longest one S3 call can take before it fails."""
        return call_bound_s(self.connect_timeout_s, self.read_timeout_s, self.max_attempts)

    def get_client(self) -> Any:
        config = client_config(self.connect_timeout_s, self.read_timeout_s, self.max_attempts)
        if self.use_unsigned_session:
            config = config.merge(Config(signature_version=UNSIGNED))
        return boto3_client(
            "s3",
            session=boto3.session.Session(profile_name=self.profile_name),
            region=self.region_name,
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=config,
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
