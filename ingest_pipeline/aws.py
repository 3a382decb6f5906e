"""boto3 clients with timeouts and bounded retries, aimed at AWS, LocalStack or the moto server.

Every call is bounded: each attempt by ``connect_timeout`` + ``read_timeout`` (botocore's own
defaults are 60 s each), the attempts by ``total_max_attempts`` (the *total*, first attempt
included: botocore's ``max_attempts`` counts retries, so ``max_attempts=5`` is six attempts).
``call_bound_s`` is the resulting worst case for a call that never gets an answer.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from ingest_pipeline.settings import HTTP_SCHEMES, InvalidEndpoint, Settings, check_url

CONNECT_TIMEOUT_S = 5.0
# S3 answers a PUT or GET within a second or two once the body is sent; 15 s of silence is a
# stalled endpoint, not a slow one.
READ_TIMEOUT_S = 15.0
MAX_ATTEMPTS = 4
# botocore's retry backoff (standard and adaptive modes): after failed attempt n it sleeps
# rand * min(2 ** (n - 1), 20) s for a throttle, 0.05 * that otherwise.
_MAX_BACKOFF_S = 20.0


def client_config(
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    read_timeout_s: float = READ_TIMEOUT_S,
    max_attempts: int = MAX_ATTEMPTS,
    mode: str = "standard",
) -> Config:
    """A botocore config whose calls end within ``call_bound_s`` of the same arguments."""
    return Config(
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"total_max_attempts": max_attempts, "mode": mode},
    )


def call_bound_s(
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    read_timeout_s: float = READ_TIMEOUT_S,
    max_attempts: int = MAX_ATTEMPTS,
) -> float:
    """Worst case seconds of one call against an endpoint that never answers: every attempt
    times out, with the longest backoff between attempts (87 s with the defaults). Throttles
    answer at once; their ``x-amz-retry-after`` can add at most 5 s per retry on top."""
    backoff = sum(min(2.0 ** (n - 1), _MAX_BACKOFF_S) for n in range(1, max_attempts))
    return max_attempts * (connect_timeout_s + read_timeout_s) + backoff


# Adaptive mode adds client-side rate limiting on throttling errors on top of standard retries.
CLIENT_CONFIG = client_config(mode="adaptive")
# S3 in standard mode: its worst case is exactly call_bound_s() (adaptive may also wait for its
# rate limiter). Used by aws_client("s3") and by the Dagster S3 resource alike.
S3_CLIENT_CONFIG = client_config()

# moto accepts any credentials; these are placeholders, not secrets, and are used only when the
# endpoint is a loopback emulator so that a developer's real credentials never reach it.
EMULATOR_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def is_loopback(url: str | None) -> bool:
    """Is ``url``'s host this machine: exactly ``localhost``, or an address in 127.0.0.0/8 or
    ``::1``? Parsed, never matched by prefix (``localhost.evil.com`` is a remote host)."""
    if not url:
        return False
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_endpoint(
    service: str, configured: str | None, environ: Mapping[str, str] = os.environ
) -> str | None:
    """The endpoint of ``service``'s clients, in the order boto3 (>= 1.28) and the AWS CLI use:
    boto3's per-service variable ``AWS_ENDPOINT_URL_<SERVICE>`` (``AWS_ENDPOINT_URL_S3``,
    ``AWS_ENDPOINT_URL_KINESIS``), then ``configured`` (the settings' ``aws_endpoint_url``:
    ``AWS_ENDPOINT_URL`` or the config file), then None (AWS's own endpoint).
    ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`` turns the per-service variables off, as in
    boto3. A malformed per-service URL is ``InvalidEndpoint`` naming its variable."""
    name = f"AWS_ENDPOINT_URL_{service.upper().replace('-', '_')}"
    own = environ.get(name)
    if own and environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":
        try:
            return check_url(own, HTTP_SCHEMES).rstrip("/")
        except InvalidEndpoint as exc:
            raise InvalidEndpoint(f"{name}: {exc}") from None
    return configured


def boto3_client(
    service: str,
    *,
    region: str,
    endpoint_url: str | None = None,
    config: Config | None = None,
    session: boto3.session.Session | None = None,
    environ: Mapping[str, str] = os.environ,
    **kwargs: Any,
) -> Any:
    """The one place a boto3 client is made: ``service`` in ``region`` at
    ``resolve_endpoint(service, endpoint_url, environ)`` (a per-service variable first), with
    ``config`` (default ``S3_CLIENT_CONFIG`` for S3, ``CLIENT_CONFIG`` otherwise). A loopback
    endpoint gets the emulator's placeholder credentials unless others are given. ``kwargs`` go
    to ``client()`` as they are, None meaning boto3's default."""
    if config is None:
        config = S3_CLIENT_CONFIG if service == "s3" else CLIENT_CONFIG
    args: dict[str, Any] = {k: v for k, v in kwargs.items() if v is not None}
    args.update(region_name=region, config=config)
    url = resolve_endpoint(service, endpoint_url, environ)
    if url:
        args["endpoint_url"] = url
        if is_loopback(url):
            for name, value in EMULATOR_CREDENTIALS.items():
                args.setdefault(name, value)
    return (session or boto3).client(service, **args)


def aws_client(service: str, settings: Settings, config: Config | None = None) -> Any:
    """``boto3_client`` for ``service`` at the endpoint and region of ``settings``."""
    return boto3_client(
        service, region=settings.region, endpoint_url=settings.aws_endpoint_url, config=config
    )
