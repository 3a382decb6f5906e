"""Binance's public data archive (``data.binance.vision``) over the synthetic market.

Serves ``data/spot/{daily,monthly}/{aggTrades,trades,klines}/...`` zips and their ``.CHECKSUM``
files with the same ids and values as the simulator's REST (both read the same
:class:`SymbolModel` hours), in the archive's own CSV format: no header, ``True``/``False``,
8-decimal strings, times in ms up to 2024-12-31 and in µs from 2025-01-01. A file appears only
after its publication lag (daily: a day after the day ends; monthly: days into the next month).

Faults, switched through ``/_sim/archive/faults``, mimic the archive's known defects:
``missing`` (404 for a symbol-day), ``truncated`` (rows cut from a time of day on),
``bad_checksum`` (the CHECKSUM never matches), ``replaced`` (the first downloads get an older,
cut version; the CHECKSUM always describes the current one), ``header`` (a header row),
``invalid_row`` (the first aggTrade at ``cut_at`` written as Binance marks a row it lost:
``p=0, q=0, f=-1, l=-1``), and ``microseconds: false`` turns off the 2025 switch to µs.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from aiohttp import web

from ingest_pipeline.standins.simulator.basics import (
    HOUR_MS,
    KLINE_INTERVALS,
    PRICE_DECIMALS,
    HourData,
    format_units,
)
from ingest_pipeline.standins.simulator.market import Market, SymbolModel

DAY_MS = 24 * HOUR_MS
# Binance's spot archive writes microseconds from this day on.
MICROS_FROM_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
KINDS = ("aggTrades", "trades", "klines")
FAULTS = ("missing", "truncated", "bad_checksum", "replaced", "header", "invalid_row")
# Header rows as some newer archive files carry them.
HEADERS = {
    "aggTrades": "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,"
    "is_buyer_maker,is_best_match",
    "trades": "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match",
    "klines": "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore",
}


@dataclass
class ArchiveFault:
    """One switched-on defect of one file (``kind`` None: every kind of that symbol-date)."""

    fault: str
    symbol: str
    date: str  # YYYY-MM-DD (daily file) or YYYY-MM (monthly file)
    kind: str | None = None
    # truncated / replaced: rows from this time of day on are cut ("HH:MM"); invalid_row: the
    # row marked invalid is the first at this time.
    cut_at: str = "20:30"
    # replaced: how many downloads get the older, cut version before the current one.
    old_downloads: int = 1

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown archive fault {self.fault!r}; known: {FAULTS}")
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"unknown archive kind {self.kind!r}")
        hh, mm = (int(x) for x in self.cut_at.split(":"))
        if not (0 <= hh < 24 and 0 <= mm < 60):
            raise ValueError(f"cut_at {self.cut_at!r} is not HH:MM")

    def cut_ms(self) -> int:
        hh, mm = (int(x) for x in self.cut_at.split(":"))
        return (hh * 60 + mm) * 60_000

    def applies(self, symbol: str, kind: str, label: str) -> bool:
        return self.symbol == symbol and self.date == label and self.kind in (None, kind)


@dataclass
class ArchiveSettings:
    daily_lag_s: float = 86_400.0
    monthly_lag_s: float = 3 * 86_400.0
    microseconds: bool = True  # the 2025-01-01 switch to µs timestamps
    zip_level: int = 1  # deflate level of the served zips (any level reads the same)
    cache_files: int = 6
    faults: list[ArchiveFault] = field(default_factory=list)


@dataclass
class _File:
    symbol: str
    kind: str
    interval: str | None
    period: str
    start_ms: int
    end_ms: int
    label: str
    name: str


def _parse_path(parts: list[str]) -> _File | None:
    """``{period}/{kind}/{SYM}/[interval/]{name}`` -> the file it names, if it is one."""
    if len(parts) < 4 or parts[0] not in ("daily", "monthly") or parts[1] not in KINDS:
        return None
    period, kind, symbol = parts[0], parts[1], parts[2]
    interval = None
    if kind == "klines":
        if len(parts) != 5:
            return None
        interval = "1M" if parts[3] == "1mo" else parts[3]
        if interval not in KLINE_INTERVALS or interval == "1M" and parts[3] != "1mo":
            return None
    elif len(parts) != 4:
        return None
    name = parts[-1]
    stem = parts[3] if kind == "klines" else kind
    prefix = f"{symbol}-{stem}-"
    if not (name.startswith(prefix) and name.endswith(".zip")):
        return None
    label = name[len(prefix) : -len(".zip")]
    try:
        if period == "daily":
            d = date.fromisoformat(label)
            start = datetime(d.year, d.month, d.day, tzinfo=UTC)
            end_ms = int(start.timestamp() * 1000) + DAY_MS
        else:
            start = datetime.strptime(label, "%Y-%m").replace(tzinfo=UTC)
            y, m = divmod(start.month, 12)
            end_ms = int(datetime(start.year + y, m + 1, 1, tzinfo=UTC).timestamp() * 1000)
    except ValueError:
        return None
    if (period == "daily" and len(label) != 10) or (period == "monthly" and len(label) != 7):
        return None
    start_ms = int(start.timestamp() * 1000)
    return _File(symbol, kind, interval, period, start_ms, end_ms, label, name)


def _decimal_strings(units: np.ndarray, decimals: int) -> pa.Array:
    """Integer ``units`` of 10**-decimals as Binance's 8-decimal strings, vectorized."""
    if decimals > PRICE_DECIMALS:
        return pa.array([format_units(int(u), decimals) for u in units.tolist()], pa.string())
    v = units.astype(np.int64) * 10 ** (PRICE_DECIMALS - decimals)
    whole = pc.cast(pa.array(v // 10**PRICE_DECIMALS), pa.string())
    frac = pc.utf8_lpad(pc.cast(pa.array(v % 10**PRICE_DECIMALS), pa.string()), 8, "0")
    return pc.binary_join_element_wise(whole, frac, ".")


def _bools(values: np.ndarray) -> pa.Array:
    return pa.array(np.where(values, "True", "False"))


class BinanceArchive:
    """Handlers and state of the archive routes (one per server)."""

    def __init__(
        self, market: Market, clock: Callable[[], int], settings: ArchiveSettings | None = None
    ) -> None:
        self.market = market
        self.clock = clock
        self.settings = settings or ArchiveSettings()
        self.requests: Counter[str] = Counter()
        self._downloads: Counter[str] = Counter()
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    def install(self, app: web.Application) -> None:
        app.router.add_get("/data/spot/{tail:.+}", self._serve)
        app.router.add_get("/_sim/archive/faults", self._get_faults)
        app.router.add_post("/_sim/archive/faults", self._post_faults)
        app.router.add_get("/_sim/archive/stats", self._get_stats)

    # ---- admin ---------------------------------------------------------------------------
    def _settings_json(self) -> dict[str, Any]:
        return asdict(self.settings)

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self._settings_json())

    async def _post_faults(self, request: web.Request) -> web.Response:
        """Replace the archive's settings: ``{"faults": [...], "microseconds": bool, ...}``."""
        try:
            body = await request.json() if request.can_read_body else {}
            values = {**self._settings_json(), **body}
            values["faults"] = [ArchiveFault(**f) for f in values.get("faults") or []]
            self.settings = ArchiveSettings(**values)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self._cache.clear()
        self._downloads.clear()
        return web.json_response(self._settings_json())

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": dict(sorted(self.requests.items()))})

    # ---- files ---------------------------------------------------------------------------
    async def _serve(self, request: web.Request) -> web.Response:
        tail = request.match_info["tail"]
        checksum = tail.endswith(".CHECKSUM")
        parts = [unquote(p) for p in tail.removesuffix(".CHECKSUM").split("/")]
        f = _parse_path(parts)
        what = "checksum" if checksum else "zip"
        if (
            f is None
            or f.symbol not in self.market
            or not self._published(f)
            or self._fault(f, "missing")
        ):
            self.requests[f"{what} 404"] += 1
            return self._not_found()
        model = self.market[f.symbol]
        if model.hour_of(f.end_ms - 1) < 0:  # before the symbol's first trade
            self.requests[f"{what} 404"] += 1
            return self._not_found()
        key = tail.removesuffix(".CHECKSUM")
        replaced = self._fault(f, "replaced")
        old = replaced is not None and self._downloads[key] < replaced.old_downloads
        if checksum:
            self.requests[f"checksum {f.kind}"] += 1
            body = self._zip(f, model, old)
            digest = hashlib.sha256(body).hexdigest()
            if self._fault(f, "bad_checksum"):
                digest = hashlib.sha256(body + b"!").hexdigest()
            text = f"{digest}  {f.name}\n"
            return web.Response(body=text.encode(), content_type="text/plain")
        self.requests[f"zip {f.kind}"] += 1
        self._downloads[key] += 1
        body = self._zip(f, model, old)
        return web.Response(body=body, content_type="application/zip")

    @staticmethod
    def _not_found() -> web.Response:
        # S3 behind the archive answers a missing key with an XML NoSuchKey error.
        xml = "<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code></Error>"
        return web.Response(status=404, text=xml, content_type="application/xml")

    def _published(self, f: _File) -> bool:
        lag = self.settings.daily_lag_s if f.period == "daily" else self.settings.monthly_lag_s
        return self.clock() >= f.end_ms + lag * 1000

    def _fault(self, f: _File, name: str) -> ArchiveFault | None:
        return next(
            (
                x
                for x in self.settings.faults
                if x.fault == name and x.applies(f.symbol, f.kind, f.label)
            ),
            None,
        )

    def _zip(self, f: _File, model: SymbolModel, old: bool) -> bytes:
        key = (f"{f.period}/{f.kind}/{f.symbol}/{f.interval}/{f.label}", int(old))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        cut = None
        truncated = self._fault(f, "truncated")
        replaced = self._fault(f, "replaced")
        if truncated is not None:
            cut = truncated.cut_ms()
        elif old and replaced is not None:
            cut = replaced.cut_ms()
        csv = self.csv(f, model, cut, header=self._fault(f, "header") is not None)
        buf = io.BytesIO()
        with zipfile.ZipFile(
            buf, "w", zipfile.ZIP_DEFLATED, compresslevel=self.settings.zip_level
        ) as z:
            z.writestr(f.name.removesuffix(".zip") + ".csv", csv)
        body = buf.getvalue()
        self._cache[key] = body
        while len(self._cache) > self.settings.cache_files:
            self._cache.popitem(last=False)
        return body

    def csv(self, f: _File, model: SymbolModel, cut_ms: int | None, header: bool) -> bytes:
        """The CSV text of a file; ``cut_ms`` (offset into each day) drops rows from then on."""
        out = io.BytesIO()
        if header:
            out.write(HEADERS[f.kind].encode() + b"\n")
        if f.kind == "klines":
            self._write(out, self._klines_table(f, model, cut_ms))
            return out.getvalue()
        for h in range(max(model.hour_of(f.start_ms), 0), model.hour_of(f.end_ms - 1) + 1):
            hd = model.hour(h)
            table = self._trades_table(f, model, hd, cut_ms)
            if table.num_rows:
                self._write(out, table)
        return out.getvalue()

    @staticmethod
    def _write(out: io.BytesIO, table: pa.Table) -> None:
        pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=False, quoting_style="none"))

    def _times(self, ms: np.ndarray, ids: np.ndarray, start_ms: int) -> pa.Array:
        if not self.settings.microseconds or start_ms < MICROS_FROM_MS:
            return pa.array(ms)
        # Microseconds carry sub-millisecond digits the REST times have cut off.
        return pa.array(ms * 1000 + (ids * 7919) % 1000)

    def _keep(self, times: np.ndarray, cut_ms: int | None) -> np.ndarray | None:
        if cut_ms is None:
            return None
        return (times % DAY_MS) < cut_ms

    def _trades_table(
        self, f: _File, model: SymbolModel, hd: HourData, cut_ms: int | None
    ) -> pa.Table:
        pd, qd = model.spec.price_decimals, model.spec.qty_decimals
        if f.kind == "trades":
            ids = hd.first_trade_id + np.arange(hd.n_trades, dtype=np.int64)
            cols = {
                "id": ids,
                "price": hd.price,
                "qty": hd.qty,
                "quote": hd.price * hd.qty,
                "time": hd.time,
                "m": hd.buyer_maker,
            }
        else:
            first = hd.agg_first
            ids = hd.first_agg_id + np.arange(hd.n_aggs, dtype=np.int64)
            cols = {
                "a": ids,
                "price": hd.price[first],
                "qty": hd.agg_qty,
                "f": hd.first_trade_id + first,
                "l": hd.first_trade_id + hd.agg_last,
                "time": hd.time[first],
                "m": hd.buyer_maker[first],
            }
        invalid = self._fault(f, "invalid_row")
        h0 = model.hour_start(hd.hour)
        if f.kind == "aggTrades" and invalid is not None:
            at = h0 - h0 % DAY_MS + invalid.cut_ms()
            late = np.flatnonzero(cols["time"] >= at)
            if h0 <= at < h0 + HOUR_MS and late.size:
                i = late[0]
                cols = {k: v.copy() for k, v in cols.items()}
                cols["price"][i] = cols["qty"][i] = 0
                cols["f"][i] = cols["l"][i] = -1
        keep = self._keep(cols["time"], cut_ms)
        if keep is not None:
            cols = {k: v[keep] for k, v in cols.items()}
            ids = ids[keep]
        n = cols["time"].size
        best = pa.array(np.full(n, "True"))
        if f.kind == "trades":
            arrays = [
                pa.array(cols["id"]),
                _decimal_strings(cols["price"], pd),
                _decimal_strings(cols["qty"], qd),
                _decimal_strings(cols["quote"], pd + qd),
                self._times(cols["time"], ids, f.start_ms),
                _bools(cols["m"]),
                best,
            ]
        else:
            arrays = [
                pa.array(cols["a"]),
                _decimal_strings(cols["price"], pd),
                _decimal_strings(cols["qty"], qd),
                pa.array(cols["f"]),
                pa.array(cols["l"]),
                self._times(cols["time"], ids, f.start_ms),
                _bools(cols["m"]),
                best,
            ]
        return pa.table(arrays, names=[f"c{i}" for i in range(len(arrays))])

    def _klines_table(self, f: _File, model: SymbolModel, cut_ms: int | None) -> pa.Table:
        now = max(self.clock(), f.end_ms)
        ks = model.klines(f.interval or "1m", f.start_ms, f.end_ms - 1, 10_000_000, now)
        if cut_ms is not None:
            ks = [k for k in ks if k.open_time % DAY_MS < cut_ms]
        pd, qd = model.spec.price_decimals, model.spec.qty_decimals

        def col(name: str) -> np.ndarray:
            return np.array([getattr(k, name) for k in ks], dtype=np.int64)

        opens, closes = col("open_time"), col("close_time")
        if self.settings.microseconds and f.start_ms >= MICROS_FROM_MS:
            open_a, close_a = pa.array(opens * 1000), pa.array(closes * 1000 + 999)
        else:
            open_a, close_a = pa.array(opens), pa.array(closes)
        arrays = [
            open_a,
            _decimal_strings(col("open"), pd),
            _decimal_strings(col("high"), pd),
            _decimal_strings(col("low"), pd),
            _decimal_strings(col("close"), pd),
            _decimal_strings(col("volume"), qd),
            close_a,
            _decimal_strings(col("quote_volume"), pd + qd),
            pa.array(col("count")),
            _decimal_strings(col("taker_buy_volume"), qd),
            _decimal_strings(col("taker_buy_quote"), pd + qd),
            pa.array(np.full(len(ks), "0")),
        ]
        return pa.table(arrays, names=[f"c{i}" for i in range(len(arrays))])
