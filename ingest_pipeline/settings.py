"""Typed settings: ``config/<INGEST_ENV>.yaml`` plus environment overrides, validated on load."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ingest_pipeline.records import (
    KLINE_WIDTH_MS,
    KLINES,
    ROUTE_BBA,
    ROUTE_DEPTH,
    ROUTE_TRADE,
    datatype,
)
from ingest_pipeline.symbols import (
    UnsafeSymbol,
    asset_key_part,
    is_key_safe,
    normalize_symbol,
    parse_symbols,
)

CONFIG_DIR = Path(__file__).parent / "config"
ENVIRONMENTS = ("local", "dev", "prod")
# Only the intervals that tile an hourly partition (the registry's klines entry): 2h .. 1M open
# in some hours only and are refused here rather than failing a check later.
KLINE_INTERVALS = frozenset(datatype(KLINES).intervals)


class SettingsError(ValueError):
    """A configuration that cannot be used; the message names where the bad value came from:
    the file and key, or the environment variable."""


class InvalidEndpoint(ValueError):
    """A URL that cannot name an endpoint: a configuration error, never a transient one."""


HTTP_SCHEMES = ("http", "https")
WS_SCHEMES = ("ws", "wss")
# A DNS name (underscores tolerated: container hosts use them), an IPv4 or a bracketed IPv6.
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\]")


def check_url(url: object, schemes: Sequence[str]) -> str:
    """``url`` if it is an absolute ``scheme://host[:port][/path]`` URL of one of ``schemes``,
    else ``InvalidEndpoint`` saying what is wrong. No credentials, query or fragment: this is a
    base URL that paths are appended to."""
    if not isinstance(url, str) or not url:
        raise InvalidEndpoint(f"URL must be a non-empty string, got {url!r}")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise InvalidEndpoint(f"URL {url!r} contains whitespace or a control character")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidEndpoint(f"URL {url!r} is malformed: {exc}") from None
    want = " or ".join(f"{s}://" for s in schemes)
    if parts.scheme.lower() not in schemes:
        raise InvalidEndpoint(f"URL {url!r} must start with {want}")
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    if "@" in parts.netloc:
        raise InvalidEndpoint(f"URL {url!r} must not carry credentials")
    if not host or not _HOST.fullmatch(host):
        raise InvalidEndpoint(f"URL {url!r} has no valid host name")
    if port == 0:
        raise InvalidEndpoint(f"URL {url!r} has port 0")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise InvalidEndpoint(f"URL {url!r} must not have a query or fragment")
    return url


@dataclass(frozen=True)
class Settings:
    env: str
    bucket: str
    bronze_prefix: str
    silver_prefix: str
    deadletter_prefix: str
    region: str
    # None means the real AWS endpoints (boto3's own resolution).
    aws_endpoint_url: str | None
    binance_rest_url: str
    binance_ws_url: str
    kinesis_trade_stream: str
    kinesis_bba_stream: str
    kinesis_depth_stream: str
    symbols: tuple[str, ...]
    kline_intervals: tuple[str, ...]
    partitions_start: str
    # Stream archive: records arriving this long after an hour's end still belong to it.
    archive_grace_seconds: int = 240
    # The streamer supervisor sensor: its default status (RUNNING in prod, STOPPED where a
    # developer starts it by hand), its tick interval, how often the streamer run records a
    # heartbeat and after how long without one the run counts as dead.
    streamer_supervisor_status: str = "STOPPED"
    streamer_supervisor_interval_seconds: int = 30
    streamer_heartbeat_seconds: int = 60
    streamer_stale_after_seconds: int = 180
    # Spill and dead-letter files of the streamer run (None: under the Dagster instance's home).
    streamer_state_dir: str | None = None
    # Where bronze history comes from: "auto" (Binance's public archive where it holds the
    # hours, REST for the rest), "rest" or "archive" (never REST).
    history_source: str = "auto"
    # Base URL of the archive (https://data.binance.vision); None: the one binance_rest_url
    # serves, as the local simulator does.
    archive_base_url: str | None = None
    # Asset key names (``[A-Za-z0-9_]``) for symbols Dagster cannot spell, e.g. 币安人生USDT:
    # (symbol, alias) pairs. Without one a key spells each such character as ``_u<hex>_``. S3
    # keys, metadata and the ``symbol`` tag keep the real symbol.
    symbol_aliases: tuple[tuple[str, str], ...] = ()
    # Default status of the sensor that runs the hourly freshness checks.
    freshness_sensor_status: str = "STOPPED"

    def key_part(self, symbol: str) -> str:
        """The asset key part of ``symbol``: its alias, else ``symbols.asset_key_part``."""
        return dict(self.symbol_aliases).get(symbol) or asset_key_part(symbol)

    @property
    def archive_url(self) -> str:
        return self.archive_base_url or self.binance_rest_url

    @property
    def kinesis_streams(self) -> tuple[str, ...]:
        return tuple(self.kinesis_routes.values())

    @property
    def kinesis_routes(self) -> dict[str, str]:
        """The Kinesis stream of each route (``records.ROUTES``, in that order)."""
        return {
            ROUTE_TRADE: self.kinesis_trade_stream,
            ROUTE_BBA: self.kinesis_bba_stream,
            ROUTE_DEPTH: self.kinesis_depth_stream,
        }

    def stream_of(self, data_type: str) -> str:
        """The Kinesis stream that carries ``data_type`` (the registry's route)."""
        route = datatype(data_type).route
        if route is None:
            raise ValueError(f"{data_type} is not on Kinesis")
        return self.kinesis_routes[route]


# Environment variable -> settings field. AWS_ENDPOINT_URL is boto3's own variable: honouring it
# here keeps one meaning for it across boto3, the AWS CLI and this project.
ENV_OVERRIDES = {
    "BINANCE_REST_URL": "binance_rest_url",
    "BINANCE_WS_URL": "binance_ws_url",
    "INGEST_SYMBOLS": "symbols",
    "AWS_ENDPOINT_URL": "aws_endpoint_url",
    "INGEST_ARCHIVE_GRACE_SECONDS": "archive_grace_seconds",
    "INGEST_STREAMER_SUPERVISOR_STATUS": "streamer_supervisor_status",
    "INGEST_STREAMER_SUPERVISOR_INTERVAL_SECONDS": "streamer_supervisor_interval_seconds",
    "INGEST_STREAMER_HEARTBEAT_SECONDS": "streamer_heartbeat_seconds",
    "INGEST_STREAMER_STALE_AFTER_SECONDS": "streamer_stale_after_seconds",
    "INGEST_STREAMER_STATE_DIR": "streamer_state_dir",
    "INGEST_HISTORY_SOURCE": "history_source",
    "BINANCE_ARCHIVE_URL": "archive_base_url",
    "INGEST_PARTITIONS_START": "partitions_start",
    "INGEST_FRESHNESS_SENSOR_STATUS": "freshness_sensor_status",
}

_FIELDS = {f.name for f in dataclasses.fields(Settings)} - {"env"}
_INT_FIELDS = {
    "archive_grace_seconds",
    "streamer_supervisor_interval_seconds",
    "streamer_heartbeat_seconds",
    "streamer_stale_after_seconds",
}
# Keys with a default (the dataclass's) when a config file leaves them out.
_DEFAULTED = _INT_FIELDS | {
    "symbol_aliases",
    "freshness_sensor_status",
    "streamer_supervisor_status",
    "streamer_state_dir",
    "history_source",
    "archive_base_url",
}
_OPTIONAL = {"aws_endpoint_url"} | _DEFAULTED
SUPERVISOR_STATUSES = ("RUNNING", "STOPPED")
HISTORY_SOURCES = ("auto", "rest", "archive")


def load_settings(
    env: str | None = None,
    environ: Mapping[str, str] | None = None,
    config_dir: Path = CONFIG_DIR,
) -> Settings:
    """Load and validate the settings of ``env`` (default: ``$INGEST_ENV``, else ``local``)."""
    environ = os.environ if environ is None else environ
    env = env or environ.get("INGEST_ENV") or "local"
    if env not in ENVIRONMENTS:
        raise SettingsError(f"INGEST_ENV={env!r} is not one of {', '.join(ENVIRONMENTS)}")
    path = config_dir / f"{env}.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"{path}: cannot read config: {exc}") from exc
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    values: dict[str, Any] = dict(raw)
    # Where each value came from, for the error message: the file, or the variable.
    origins: dict[str, str] = {}
    for var, field in ENV_OVERRIDES.items():
        if environ.get(var):
            value: Any = environ[var]
            if field in _INT_FIELDS:
                try:
                    value = int(value)
                except ValueError:
                    raise SettingsError(
                        f"environment variable {var}={value!r} is not an integer"
                    ) from None
            values[field] = value
            origins[field] = f"environment variable {var}"
    return _validate(values, env, str(path), origins)


def _validate(
    values: dict[str, Any], env: str, origin: str, origins: Mapping[str, str] | None = None
) -> Settings:
    origins = origins or {}

    def where(key: str) -> str:
        return origins[key] if key in origins else f"{origin}: key {key!r}"

    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise SettingsError(f"{origin}: unknown key(s) {', '.join(map(repr, unknown))}")
    missing = sorted(k for k in _FIELDS - _OPTIONAL if values.get(k) in (None, "", []))
    if missing:
        raise SettingsError(f"{origin}: missing or empty key(s) {', '.join(map(repr, missing))}")
    for key in _INT_FIELDS & set(values):
        if isinstance(values[key], bool) or not isinstance(values[key], int) or values[key] < 0:
            raise SettingsError(f"{where(key)} must be an integer >= 0, got {values[key]!r}")
    for key in _FIELDS - {"symbols", "kline_intervals", "symbol_aliases"} - _INT_FIELDS:
        if values.get(key) is not None and not isinstance(values[key], str):
            raise SettingsError(f"{where(key)} must be a string, got {values[key]!r}")
    if not isinstance(values["kline_intervals"], list) or not all(
        isinstance(v, str) for v in values["kline_intervals"]
    ):
        raise SettingsError(f"{where('kline_intervals')} must be a list of strings")
    # A list in the file; a comma-separated string from INGEST_SYMBOLS.
    if not isinstance(values["symbols"], str if "symbols" in origins else list):
        raise SettingsError(f"{where('symbols')} must be a list of strings")
    try:
        symbols = parse_symbols(values["symbols"])
    except UnsafeSymbol as exc:
        raise SettingsError(f"{where('symbols')}: {exc}") from None
    values["symbols"] = symbols
    if values.get("symbol_aliases") is not None:
        values["symbol_aliases"] = _aliases(values["symbol_aliases"], symbols, where)
    bad = [i for i in values["kline_intervals"] if i not in KLINE_INTERVALS]
    if bad:
        allowed = ", ".join(sorted(KLINE_INTERVALS, key=KLINE_WIDTH_MS.__getitem__))
        raise SettingsError(
            f"{where('kline_intervals')}: {bad} do not tile an hourly partition "
            f"(allowed: {allowed})"
        )
    try:
        date.fromisoformat(values["partitions_start"])
    except ValueError:
        raise SettingsError(
            f"{where('partitions_start')} must be a date YYYY-MM-DD, "
            f"got {values['partitions_start']!r}"
        ) from None
    for key in ("aws_endpoint_url", "binance_rest_url", "binance_ws_url", "archive_base_url"):
        url = values.get(key)
        if url is not None:
            try:
                check_url(url, WS_SCHEMES if key == "binance_ws_url" else HTTP_SCHEMES)
            except InvalidEndpoint as exc:
                raise SettingsError(f"{where(key)}: {exc}") from None
    for key in ("bronze_prefix", "silver_prefix", "deadletter_prefix"):
        if values[key].startswith("/") or values[key].endswith("/") or ".." in values[key]:
            raise SettingsError(f"{where(key)} must be a relative prefix without '/' ends")
    for key in ("streamer_supervisor_status", "freshness_sensor_status"):
        status = values.get(key)
        if status is not None and status not in SUPERVISOR_STATUSES:
            raise SettingsError(
                f"{where(key)} must be one of {', '.join(SUPERVISOR_STATUSES)}, got {status!r}"
            )
    source = values.get("history_source")
    if source is not None and source not in HISTORY_SOURCES:
        raise SettingsError(
            f"{where('history_source')} must be one of {', '.join(HISTORY_SOURCES)}, got {source!r}"
        )
    for key in ("streamer_supervisor_interval_seconds", "streamer_heartbeat_seconds"):
        if values.get(key) == 0:
            raise SettingsError(f"{where(key)} must be > 0")
    heartbeat = values.get("streamer_heartbeat_seconds", 60)
    stale = values.get("streamer_stale_after_seconds", 180)
    if stale < 2 * heartbeat:
        raise SettingsError(
            f"{where('streamer_stale_after_seconds')} ({stale}) must be at least twice "
            f"{where('streamer_heartbeat_seconds')} ({heartbeat}): one late heartbeat is not a "
            "dead run"
        )
    values = {k: v for k, v in values.items() if not (k in _DEFAULTED and v is None)}
    values["kline_intervals"] = tuple(values["kline_intervals"])
    for key in ("binance_rest_url", "binance_ws_url", "aws_endpoint_url", "archive_base_url"):
        if values.get(key):
            values[key] = values[key].rstrip("/")
    values.setdefault("aws_endpoint_url", None)
    return Settings(env=env, **values)


def _aliases(raw: object, symbols: tuple[str, ...], where: Any) -> tuple[tuple[str, str], ...]:
    """``{symbol: alias}`` -> sorted pairs. An alias is asset-key-safe and names one symbol:
    never another alias, nor the key of another configured symbol. Aliases of symbols not
    configured are kept (``INGEST_SYMBOLS`` may narrow the list)."""
    if not isinstance(raw, dict):
        raise SettingsError(f"{where('symbol_aliases')} must be a mapping symbol: alias")
    pairs: dict[str, str] = {}
    for symbol, alias in raw.items():
        try:
            canonical = normalize_symbol(symbol)
        except UnsafeSymbol as exc:
            raise SettingsError(f"{where('symbol_aliases')}: {exc}") from None
        if not isinstance(alias, str) or not is_key_safe(alias):
            raise SettingsError(
                f"{where('symbol_aliases')}: alias {alias!r} of {canonical} must be letters, "
                "digits and underscores (Dagster asset key rules)"
            )
        pairs[canonical] = alias
    taken: dict[str, str] = {asset_key_part(s): s for s in symbols if s not in pairs}
    for symbol, alias in pairs.items():
        other = taken.get(alias)
        if other is not None:
            raise SettingsError(
                f"{where('symbol_aliases')}: alias {alias!r} of {symbol} is already the asset "
                f"key of {other}"
            )
        taken[alias] = symbol
    return tuple(sorted(pairs.items()))
