"""The registry of data types (``records.REGISTRY``) agrees with the records it describes and
with every table that is still kept elsewhere (a source's wire format, an asset's checks, the
settings' stream names): a type added or changed in one place and not the other fails here."""

from __future__ import annotations

import typing
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from ingest_pipeline import capture_loader, quality
from ingest_pipeline.binance import archive_csv, history
from ingest_pipeline.binance.archive import daily_file, file_kind
from ingest_pipeline.binance.rest import BinanceRestClient
from ingest_pipeline.binance.stream import DEFAULT_KINDS
from ingest_pipeline.defs.archive import ARCHIVE_KINDS, ARCHIVE_TYPES, build_archive_assets
from ingest_pipeline.defs.bronze import build_bronze_assets
from ingest_pipeline.records import (
    AGG_TRADES,
    BBA,
    DEPTH_DELTA,
    DEPTH_SNAPSHOT,
    KLINE_INTERVALS,
    KLINE_WIDTH_MS,
    KLINES,
    REGISTRY,
    ROUTES,
    STREAMED,
    TRADE,
    TRADES,
    datatype,
    klines_type,
    live_type,
    on_route,
    record_key,
)
from ingest_pipeline.settings import ENVIRONMENTS, Settings, load_settings
from ingest_pipeline.settings import KLINE_INTERVALS as SETTINGS_INTERVALS
from ingest_pipeline.storage.kinesis_reader import is_depth_snapshot
from ingest_pipeline.streaming import Streamer, StreamerConfig
from ingest_pipeline.streaming.config import DATA_TYPES
from ingest_pipeline.streaming.online_features import _REQUIRED, OnlineFeatureConsumer
from ingest_pipeline.timeutil import HOUR_MS
from ingest_pipeline_tests.streaming.test_streamer_unit import ListSink

H = 1_723_161_600_000  # 2024-08-09 00:00 UTC


def names(settings: Settings) -> set[str]:
    """Every bronze data type the settings give: one per registry entry, klines per interval."""
    out = {t.name for t in REGISTRY if t.name != KLINES}
    return out | {klines_type(i) for i in settings.kline_intervals}


@pytest.fixture(params=ENVIRONMENTS)
def env_settings(request: pytest.FixtureRequest) -> Settings:
    return load_settings(request.param, environ={})


# --- the registry and its records -------------------------------------------------------------


@pytest.mark.parametrize("kind", REGISTRY, ids=lambda t: t.name)
def test_key_id_and_time_fields_are_required_fields_of_the_record(kind: Any) -> None:
    fields = kind.fields()
    required = set(fields) - kind.optional
    assert set(kind.key_fields) <= required
    assert kind.time_field in required and fields[kind.time_field] is int
    # Within one object (one symbol, one type) only the last key field varies: bronze orders
    # and identifies records by it, and reports it as the object's first/last id.
    assert kind.key_fields[0] == "symbol" and len(kind.key_fields) >= 2
    assert kind.id_field == kind.key_fields[-1] and fields[kind.id_field] is int
    # Optional and absent fields are NotRequired in the TypedDict; the other NotRequired ones
    # are always there (aggTrades carry the trade id range MarketTrade makes optional).
    hints = typing.get_type_hints(kind.record, include_extras=True)
    not_required = {n for n, tp in hints.items() if typing.get_origin(tp) is typing.NotRequired}
    assert kind.optional | kind.absent <= not_required
    always = {"first_trade_id", "last_trade_id"} if kind.name == AGG_TRADES else set()
    assert not_required - kind.optional - kind.absent == always


def test_record_key_is_the_tuple_of_the_key_fields() -> None:
    trade = {"symbol": "BTCUSDT", "trade_id": 7, "event_ts": H, "price": 1.0}
    assert record_key(AGG_TRADES)(trade) == record_key(TRADE)(trade) == ("BTCUSDT", 7)
    kline = {"symbol": "BTCUSDT", "interval": "1m", "open_time": H, "close_time": H + 59_999}
    assert record_key(klines_type("1m"))(kline) == ("BTCUSDT", "1m", H)
    assert record_key(DEPTH_SNAPSHOT)({"symbol": "X", "last_update_id": 3}) == ("X", 3)


def test_lookup_by_name_and_kline_interval() -> None:
    assert [datatype(t.name) for t in REGISTRY] == list(REGISTRY)
    assert len({t.name for t in REGISTRY}) == len(REGISTRY)
    assert datatype(klines_type("1s")) is datatype(KLINES)
    with pytest.raises(ValueError, match="unknown data type 'nope'"):
        datatype("nope")


def test_the_kline_intervals_are_those_that_tile_an_hour() -> None:
    assert KLINE_INTERVALS == ("1s", "1m", "3m", "5m", "15m", "30m", "1h")
    assert datatype(KLINES).intervals == KLINE_INTERVALS
    assert set(SETTINGS_INTERVALS) == set(KLINE_INTERVALS)
    assert all(HOUR_MS % KLINE_WIDTH_MS[i] == 0 for i in KLINE_INTERVALS)
    with pytest.raises(ValueError, match="tile"):
        quality.check_klines([], [], "2h", H)


# --- routes and Kinesis streams ---------------------------------------------------------------


def test_each_route_exists_for_one_websocket_type() -> None:
    assert [t.name for t in STREAMED] == [TRADE, BBA, DEPTH_DELTA]
    assert [live_type(r).name for r in ROUTES] == [TRADE, BBA, DEPTH_DELTA]
    assert [t.name for t in on_route("depth")] == [DEPTH_DELTA, DEPTH_SNAPSHOT]
    assert all(t.route is not None for t in STREAMED)
    # A snapshot rides on the depth stream: the readers tell it from a diff by its id fields.
    assert is_depth_snapshot({datatype(DEPTH_SNAPSHOT).id_field: 1})
    assert not is_depth_snapshot({datatype(DEPTH_DELTA).id_field: 1, "first_update_id": 1})


def test_every_kinesis_stream_carries_exactly_the_types_routed_to_it(
    env_settings: Settings,
) -> None:
    s = env_settings
    assert list(s.kinesis_routes) == list(ROUTES)
    assert s.kinesis_streams == tuple(s.kinesis_routes.values())
    carried: dict[str, set[str]] = defaultdict(set)
    for t in REGISTRY:
        if t.route is not None:
            carried[s.stream_of(t.name)].add(t.name)
    assert carried == {
        s.kinesis_trade_stream: {TRADE},
        s.kinesis_bba_stream: {BBA},
        s.kinesis_depth_stream: {DEPTH_DELTA, DEPTH_SNAPSHOT},
    }
    with pytest.raises(ValueError, match="not on Kinesis"):
        s.stream_of(AGG_TRADES)


# One WebSocket payload per streamed type, by its stream name (Binance's documented fields).
_FRAMES = {
    "trade": {"e": "trade", "E": H, "s": "BTCUSDT", "t": 5, "p": "1.5", "q": "2", "T": H,
              "m": True, "M": True},
    "bookTicker": {"u": 9, "s": "BTCUSDT", "b": "1", "B": "2", "a": "3", "A": "4"},
    "depth@100ms": {"e": "depthUpdate", "E": H, "s": "BTCUSDT", "U": 1, "u": 4,
                    "b": [["1.0", "0"]], "a": []},
}  # fmt: skip


def test_the_streamer_puts_each_websocket_type_on_its_stream_with_the_registry_fields(
    tmp_path: Path,
) -> None:
    settings = load_settings("local", environ={})
    cfg = StreamerConfig(deadletter_dir=str(tmp_path / "dl"), spill_dir=str(tmp_path / "sp"))
    sink = ListSink()
    streamer = Streamer(settings, cfg, producer=sink)
    assert DATA_TYPES == tuple(t.name for t in STREAMED)
    assert DEFAULT_KINDS == tuple(t.ws for t in STREAMED)
    for kind in STREAMED:
        frame = {"stream": f"btcusdt@{kind.ws}", "data": _FRAMES[str(kind.ws)]}
        assert streamer.on_frame(orjson.dumps(frame), H + 1) is False
        assert streamer.messages_in[kind.name] == streamer.records_out[kind.name] == 1
        ((stream, key, record),) = sink.records[-1:]
        assert (stream, key) == (settings.stream_of(kind.name), "BTCUSDT")
        fields = kind.fields()
        assert set(fields) - kind.optional <= set(record) <= set(fields) | {"epoch"}
        assert record_key(kind.name)(record)[1:] == (record[kind.id_field],)
    assert streamer.counts["malformed"] == 0


def test_online_features_read_each_stream_as_its_live_type(env_settings: Settings) -> None:
    consumer = OnlineFeatureConsumer(None, env_settings, lambda row: None, start_ms=H)
    assert consumer._streams == {env_settings.stream_of(t.name): t.name for t in STREAMED}
    # What the engines require of a record is a subset of its fields, key and time included.
    assert set(_REQUIRED) == {t.name for t in REGISTRY if t.route is not None}
    for name, required in _REQUIRED.items():
        kind = datatype(name)
        wanted = {f for f, _ in required}
        assert wanted <= set(kind.fields())
        assert {*kind.key_fields, kind.time_field} <= wanted


def test_the_stream_archive_has_one_asset_per_streamed_type_on_its_stream(
    env_settings: Settings,
) -> None:
    assert set(ARCHIVE_KINDS) == set(ARCHIVE_TYPES) == {t.name for t in STREAMED}
    assert all(k.data_type == name for name, k in ARCHIVE_KINDS.items())
    for asset in build_archive_assets(env_settings):
        (spec,) = asset.specs
        data_type = spec.key.path[-1]
        assert spec.metadata["kinesis_stream"].value == env_settings.stream_of(data_type)


def test_capture_types_are_what_the_streamer_puts_on_kinesis() -> None:
    assert set(capture_loader.CAPTURE_TYPES) == {t.name for t in REGISTRY if t.route}
    assert capture_loader.STREAM_TYPES == tuple(t.name for t in STREAMED)


# --- bronze assets and their schemas ----------------------------------------------------------


def test_one_bronze_asset_per_symbol_and_type_with_the_record_columns(
    env_settings: Settings,
) -> None:
    assets = build_bronze_assets(env_settings) + build_archive_assets(env_settings)
    by_symbol: dict[str, set[str]] = defaultdict(set)
    for asset in assets:
        (spec,) = asset.specs
        _, symbol, data_type = spec.key.path
        by_symbol[symbol].add(data_type)
        columns = spec.metadata["dagster/column_schema"].columns
        kind = datatype(data_type)
        assert [c.name for c in columns] == list(kind.fields())
        assert {c.name for c in columns if c.constraints.nullable} == kind.optional
        assert spec.tags["data_type"] == data_type
    assert len(by_symbol) == len(env_settings.symbols)
    assert all(types == names(env_settings) for types in by_symbol.values())


# --- sources: archive folders, REST endpoints -------------------------------------------------


def test_archive_files_and_their_csv_columns_are_keyed_by_the_registry() -> None:
    archived = [t for t in REGISTRY if t.archive is not None]
    assert set(archive_csv.COLUMNS) == {t.name for t in archived}
    for kind in archived:
        data_type = klines_type("1m") if kind.name == KLINES else kind.name
        folder, interval = file_kind(data_type)
        assert folder == kind.archive and interval == ("1m" if kind.name == KLINES else None)
        path = daily_file("BTCUSDT", data_type, H).path
        assert path.startswith(f"data/spot/daily/{kind.archive}/BTCUSDT/")
    for kind in REGISTRY:
        if kind.archive is None:
            with pytest.raises(ValueError, match="archive holds no"):
                file_kind(kind.name)


class _Recorder:
    """A REST session that answers every call with an empty body and records its path."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def get(self, url: str, timeout: Any) -> Any:
        path = urlsplit(url).path
        self.paths.append(path)
        body = b'{"serverTime": 1}' if path == "/api/v3/time" else b"[]"
        return type("Reply", (), {"status_code": 200, "content": body, "headers": {}})()


def test_each_rest_type_is_fetched_from_its_registry_endpoint() -> None:
    fetchers = {
        AGG_TRADES: lambda c: history.fetch_agg_trades(c, "BTCUSDT", H),
        TRADES: lambda c: history.fetch_trades(c, "BTCUSDT", 1, 1),
        KLINES: lambda c: history.fetch_klines(c, "BTCUSDT", "1m", H),
        DEPTH_SNAPSHOT: lambda c: history.fetch_depth_snapshot(c, "BTCUSDT", 5),
        # The streamer fills the trade ids it missed from the same endpoint as ``trades``.
        TRADE: lambda c: list(c.historical_trades_range("BTCUSDT", 1, 1)),
    }
    assert set(fetchers) == {t.name for t in REGISTRY if t.rest is not None}
    for name, fetch in fetchers.items():
        session = _Recorder()
        client = BinanceRestClient("http://sim", session=session)
        fetch(client)
        assert session.paths[-1] == datatype(name).rest, name
