"""The embedded AWS (the ``[standins]`` extra): moto in server mode on a loopback port,
provisioned from the settings.

Everything that talks to S3 or Kinesis locally goes through a real socket to this server, the
same way it would talk to LocalStack or AWS.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import time
from typing import Any

import requests

from ingest_pipeline.aws import boto3_client
from ingest_pipeline.settings import Settings
from ingest_pipeline.standins import require

STARTUP_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _client(service: str, settings: Settings) -> Any:
    # This server, whatever AWS_ENDPOINT_URL_<SERVICE> in the environment says.
    return boto3_client(
        service, region=settings.region, endpoint_url=settings.aws_endpoint_url, environ={}
    )


def provision(settings: Settings) -> None:
    """Create the bucket and the three Kinesis streams of ``settings`` if they do not exist."""
    s3 = _client("s3", settings)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if settings.bucket not in existing:
        if settings.region == "us-east-1":
            s3.create_bucket(Bucket=settings.bucket)
        else:
            s3.create_bucket(
                Bucket=settings.bucket,
                CreateBucketConfiguration={"LocationConstraint": settings.region},
            )
    kinesis = _client("kinesis", settings)
    streams = set(kinesis.list_streams().get("StreamNames", []))
    for name in settings.kinesis_streams:
        if name not in streams:
            kinesis.create_stream(StreamName=name, ShardCount=1)
    waiter = kinesis.get_waiter("stream_exists")
    for name in settings.kinesis_streams:
        waiter.wait(StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})


class EmbeddedAWS:
    """A moto server subprocess; ``start()`` returns once it answers and is provisioned."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 0) -> None:
        self._settings = settings
        self.host = host
        self.port = port or free_port(host)
        self.endpoint_url = f"http://{host}:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def settings(self) -> Settings:
        """The given settings, pointed at this server."""
        return dataclasses.replace(self._settings, aws_endpoint_url=self.endpoint_url)

    def start(self) -> EmbeddedAWS:
        require("moto")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"moto server exited with code {self._proc.returncode} on port {self.port}"
                )
            try:
                if requests.get(f"{self.endpoint_url}/moto-api/", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server did not answer on {self.endpoint_url}")
            time.sleep(0.1)
        provision(self.settings)
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedAWS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
