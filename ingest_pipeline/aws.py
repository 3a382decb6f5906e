"""boto3 clients with timeouts and bounded retries, aimed at AWS, LocalStack or the moto server."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from ingest_pipeline.settings import Settings

# Adaptive mode adds client-side rate limiting on throttling errors on top of standard retries.
CLIENT_CONFIG = Config(
    connect_timeout=5,
    read_timeout=30,
    retries={"max_attempts": 5, "mode": "adaptive"},
)

# moto accepts any credentials; these are placeholders, not secrets, and are used only when the
# endpoint is a loopback emulator so that a developer's real credentials never reach it.
EMULATOR_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def is_loopback(url: str | None) -> bool:
    return bool(url) and any(
        url.split("://", 1)[-1].startswith(h) for h in ("127.", "localhost", "[::1]")
    )


def aws_client(service: str, settings: Settings, config: Config = CLIENT_CONFIG) -> Any:
    """A boto3 client for ``service`` at the configured endpoint and region."""
    kwargs: dict[str, Any] = {"region_name": settings.region, "config": config}
    if settings.aws_endpoint_url:
        kwargs["endpoint_url"] = settings.aws_endpoint_url
        if is_loopback(settings.aws_endpoint_url):
            kwargs.update(EMULATOR_CREDENTIALS)
    return boto3.client(service, **kwargs)
