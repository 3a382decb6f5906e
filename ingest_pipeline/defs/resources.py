"""Resources for the external systems: Binance REST and the bronze store on S3."""

from collections.abc import Sequence
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

from ingest_pipeline.aws import EMULATOR_CREDENTIALS, is_loopback
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


def s3_resource(settings: Settings) -> S3Resource:
    """S3 at the configured endpoint; credentials from the AWS chain, except on an emulator."""
    emulator = EMULATOR_CREDENTIALS if is_loopback(settings.aws_endpoint_url) else {}
    return S3Resource(
        region_name=settings.region,
        endpoint_url=settings.aws_endpoint_url,
        max_attempts=5,
        **emulator,
    )


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
