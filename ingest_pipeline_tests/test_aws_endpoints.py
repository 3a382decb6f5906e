"""boto3's per-service endpoint variables next to ``AWS_ENDPOINT_URL``, against the real moto
server: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL_KINESIS`` win for their service over the
settings' endpoint (``AWS_ENDPOINT_URL`` or the config file), as in boto3 and the AWS CLI."""

from __future__ import annotations

import dataclasses

import pytest

from ingest_pipeline.aws import aws_client
from ingest_pipeline.defs.archive import kinesis_resource
from ingest_pipeline.defs.resources import s3_resource
from ingest_pipeline.settings import InvalidEndpoint, Settings, load_settings
from ingest_pipeline.standins.moto_server import EmbeddedAWS, free_port


@pytest.fixture
def nowhere() -> str:
    """A loopback endpoint nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


def test_s3_variable_wins_for_s3_only(
    aws: EmbeddedAWS, aws_settings: Settings, nowhere: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", aws.endpoint_url)
    settings = dataclasses.replace(aws_settings, aws_endpoint_url=nowhere)
    for s3 in (aws_client("s3", settings), s3_resource(settings).get_client()):
        assert s3.meta.endpoint_url == aws.endpoint_url
        # The truth: the bucket this test created on the moto server is there.
        assert settings.bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert aws_client("kinesis", settings).meta.endpoint_url == nowhere
    assert kinesis_resource(settings).get_client().meta.endpoint_url == nowhere


def test_kinesis_variable_wins_for_kinesis_only(
    aws: EmbeddedAWS, aws_settings: Settings, nowhere: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", aws.endpoint_url + "/")
    settings = dataclasses.replace(aws_settings, aws_endpoint_url=nowhere)
    for kinesis in (aws_client("kinesis", settings), kinesis_resource(settings).get_client()):
        assert kinesis.meta.endpoint_url == aws.endpoint_url
        streams = kinesis.list_streams()["StreamNames"]
        assert set(settings.kinesis_streams) <= set(streams)
    assert aws_client("s3", settings).meta.endpoint_url == nowhere


def test_without_any_settings_endpoint_the_variables_reach_moto_with_placeholders(
    aws: EmbeddedAWS, aws_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prod's config (no endpoint) plus both variables: the emulator gets the placeholder
    credentials, never the chain's (none are set here, so a missing placeholder would fail)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", aws.endpoint_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", aws.endpoint_url)
    prod = load_settings("prod", environ={})
    assert prod.aws_endpoint_url is None
    settings = dataclasses.replace(prod, bucket=aws_settings.bucket)
    s3 = aws_client("s3", settings)
    assert settings.bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    kinesis = aws_client("kinesis", dataclasses.replace(settings, region=aws.settings.region))
    assert set(aws.settings.kinesis_streams) <= set(kinesis.list_streams()["StreamNames"])


def test_the_global_variable_alone_is_the_settings_endpoint(
    aws: EmbeddedAWS, aws_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings("local", environ={"AWS_ENDPOINT_URL": aws.endpoint_url})
    assert settings.aws_endpoint_url == aws.endpoint_url
    for service in ("s3", "kinesis"):
        assert aws_client(service, settings).meta.endpoint_url == aws.endpoint_url


def test_ignore_configured_endpoint_urls_turns_the_variables_off(
    aws: EmbeddedAWS, nowhere: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", nowhere)
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert aws_client("s3", aws.settings).meta.endpoint_url == aws.endpoint_url


@pytest.mark.parametrize("value", ["ftp://127.0.0.1:1", "127.0.0.1:4566", "http://u:p@h"])
def test_a_malformed_variable_is_refused_by_name(
    aws: EmbeddedAWS, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", value)
    with pytest.raises(InvalidEndpoint, match="AWS_ENDPOINT_URL_KINESIS"):
        aws_client("kinesis", aws.settings)
