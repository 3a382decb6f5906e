"""Feature definitions shared by the offline and online forms (SPEC §4).

Everything both forms must agree on lives here: the grid, the windows and horizons, the column
names and their order, the column descriptions written into silver parquet, and the range of
time a computation covers.

Column naming: windows and horizons are suffixed with their length, ``_{n}s`` for whole seconds
(``ret_10s``, ``rv_300s``, ``signed_volume_60s``), ``_{n}ms`` otherwise; the mid-move label puts
the horizon before the unit: ``fwd_mid_move_10s_bps``.

Time: every row ``ts`` is the end of a grid step, ``ts = origin + k * step_ms``. Row ``ts`` sees
records with ``event_ts < ts`` only (labels excepted). Trades and depth diffs are in exchange
time (trade time ``T``, diff ``E``); BBA ``event_ts`` is the *receive* time, because spot
bookTicker carries no exchange time; klines are placed by ``close_time``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest_pipeline.timeutil import HOUR_MS

SECOND_MS = 1000


def duration_suffix(ms: int) -> str:
    """``10000 -> "10s"``, ``1500 -> "1500ms"``."""
    return f"{ms // SECOND_MS}s" if ms % SECOND_MS == 0 else f"{ms}ms"


@dataclass(frozen=True)
class FeatureSpec:
    """Grid step, windows and horizons (all in ms). Windows and horizons are step multiples."""

    step_ms: int = 1000
    windows_ms: tuple[int, ...] = (10_000, 60_000, 300_000)
    horizons_ms: tuple[int, ...] = (10_000, 60_000)
    depth_levels: tuple[int, ...] = (5, 10)
    kline_interval: str = "1m"

    def __post_init__(self) -> None:
        if self.step_ms <= 0 or HOUR_MS % self.step_ms:
            raise ValueError(f"step_ms={self.step_ms} must divide an hour")
        for name, values in (("windows_ms", self.windows_ms), ("horizons_ms", self.horizons_ms)):
            if not values or any(v <= 0 or v % self.step_ms for v in values):
                raise ValueError(f"{name}={values} must be positive multiples of the step")
            if list(values) != sorted(set(values)):
                raise ValueError(f"{name}={values} must be increasing and distinct")
        if not self.depth_levels or min(self.depth_levels) < 1:
            raise ValueError("depth_levels must be >= 1")

    @property
    def max_window_ms(self) -> int:
        return self.windows_ms[-1]

    @property
    def max_horizon_ms(self) -> int:
        return self.horizons_ms[-1]

    @property
    def max_depth(self) -> int:
        return max(self.depth_levels)

    def steps(self, ms: int) -> int:
        return ms // self.step_ms

    # --- column names ------------------------------------------------------------------

    def trade_columns(self) -> list[str]:
        cols = ["trade_count", "volume", "vwap", "buy_volume", "sell_volume"]
        for w in self.windows_ms:
            s = duration_suffix(w)
            cols += [f"signed_volume_{s}", f"trade_imbalance_{s}", f"ret_{s}", f"rv_{s}"]
        return cols

    def bba_columns(self) -> list[str]:
        return ["spread", "spread_bps", "mid", "microprice", "obi_1"]

    def depth_columns(self) -> list[str]:
        return [f"depth_imbalance_{k}" for k in self.depth_levels]

    def kline_columns(self) -> list[str]:
        return ["kline_ret", "kline_range", "kline_taker_buy_ratio"]

    def trade_label_columns(self) -> list[str]:
        return [f"fwd_ret_{duration_suffix(n)}" for n in self.horizons_ms]

    def mid_label_columns(self) -> list[str]:
        return [f"fwd_mid_move_{duration_suffix(n)}_bps" for n in self.horizons_ms]

    def feature_columns(self) -> list[str]:
        """Value columns that see only the past (no labels)."""
        return (
            self.trade_columns() + self.bba_columns() + self.depth_columns() + self.kline_columns()
        )

    def label_columns(self) -> list[str]:
        return self.trade_label_columns() + self.mid_label_columns()

    def columns(self) -> list[str]:
        """Every column of a training-set row, in order."""
        return ["symbol", "ts", *self.feature_columns(), *self.label_columns(), "complete"]

    def nullable_by_definition(self) -> frozenset[str]:
        """Columns whose null is a defined value, not missing input (the ``complete`` flag
        ignores them): ``vwap`` of an empty bucket, the taker ratio of a zero-volume kline."""
        return frozenset({"vwap", "kline_taker_buy_ratio"})

    def descriptions(self) -> dict[str, str]:
        """Column descriptions, written into the silver parquet schema.

        "Not covered" means time the source was not listened to: outside the hours in bronze,
        outside the spans a bronze object records as covered (a capture's ends, streamer
        downtime), before an online engine started. Bucket and window columns are null when
        any of their time is not covered; a state (last price, BBA, book, kline) is null from
        the first uncovered moment after it until the source's next record: nothing is carried
        across a hole. Sizes are summed as exact decimals (Binance's 8-decimal strings) and
        rounded to float once.
        """
        d: dict[str, str] = {
            "symbol": "Binance symbol",
            "ts": "grid time, epoch ms UTC; the row sees only records with event time < ts "
            "(labels excepted)",
            "trade_count": "number of trade records (of the trade source) in [ts - step, ts), "
            "trade time T; null before the first trade and when the bucket is not wholly "
            "covered",
            "volume": "sum of qty in [ts - step, ts), exact decimal sum rounded once; null as "
            "trade_count",
            "vwap": "sum(price*qty)/sum(qty) in [ts - step, ts); null when volume is 0 or null",
            "buy_volume": "taker-buy qty (is_buyer_maker false) in [ts - step, ts), exact; "
            "null as trade_count",
            "sell_volume": "taker-sell qty (is_buyer_maker true) in [ts - step, ts), exact; "
            "null as trade_count",
            "spread": "ask - bid of the last BBA with event_ts < ts; BBA event_ts is the "
            "receive time (spot bookTicker has no exchange time); null before the first BBA "
            "and after uncovered BBA time until the next BBA",
            "spread_bps": "(ask - bid)/mid * 1e4 from the BBA at ts (receive time); null as spread",
            "mid": "(bid + ask)/2 from the BBA at ts (receive time); null as spread",
            "microprice": "(bid_px*ask_sz + ask_px*bid_sz)/(bid_sz + ask_sz), BBA at ts "
            "(receive time); null as spread",
            "obi_1": "(bid_sz - ask_sz)/(bid_sz + ask_sz), BBA at ts (receive time); null as "
            "spread",
            "kline_ret": "ln(close/open) of the last kline with close_time < ts; null before "
            "the first and after uncovered kline time until the next close",
            "kline_range": "(high - low)/open of the kline at ts; null as kline_ret",
            "kline_taker_buy_ratio": "taker_buy_base_volume/volume of the kline at ts; null "
            "when volume is 0, and as kline_ret",
            "complete": "true when every input of every column existed: warm-up and label "
            "horizons inside the known data and covered, no value missing for lack of input",
        }
        for w in self.windows_ms:
            s = duration_suffix(w)
            d[f"signed_volume_{s}"] = (
                f"sum(buy qty - sell qty) over trades in [ts - {s}, ts), exact decimal sum "
                "rounded once; null before the first trade and when the window is not wholly "
                "covered"
            )
            d[f"trade_imbalance_{s}"] = (
                f"(buy - sell)/(buy + sell) qty over [ts - {s}, ts); 0 when no volume; null as "
                f"signed_volume_{s}"
            )
            d[f"ret_{s}"] = (
                f"ln(p_ts / p_(ts-{s})), p = price of the last trade with T < t; p is null "
                "before the first trade and after uncovered trade time until the next trade"
            )
            d[f"rv_{s}"] = (
                f"sqrt(sum of r^2 over the steps ending at ts within {s}), r = ln(p_t/p_(t-step)),"
                " summed oldest step first; null unless the window is wholly covered and "
                f"p_(ts-{s}) known"
            )
        for k in self.depth_levels:
            d[f"depth_imbalance_{k}"] = (
                f"(sum bid qty - sum ask qty)/(sum of both) over the top {k} levels of the book "
                "rebuilt from snapshot + diffs with exchange time E < ts; null while the book "
                "is not synced (before the first snapshot bridge or after a gap until resync) "
                "and after uncovered diff time until the next diff"
            )
        for n in self.horizons_ms:
            s = duration_suffix(n)
            d[f"fwd_ret_{s}"] = f"label: ln(p_(ts+{s}) / p_ts); null when either price is"
            d[f"fwd_mid_move_{s}_bps"] = (
                f"label: (mid_(ts+{s}) - mid_ts)/mid_ts * 1e4, BBA mids (receive time); null "
                "when either mid is"
            )
        return {c: d[c] for c in self.columns()}


DEFAULT_SPEC = FeatureSpec()


@dataclass(frozen=True)
class GridRange:
    """What one computation covers.

    Rows are at ``ts`` in ``(start_ms, end_ms]`` on the grid. Input is known to be complete in
    ``[known_from, known_until)``: records outside it are ignored, a window reaching before
    ``known_from`` or a horizon past ``known_until`` makes the row incomplete, and a label
    whose horizon passes ``known_until`` is null.
    """

    start_ms: int
    end_ms: int
    known_from: int
    known_until: int

    def __post_init__(self) -> None:
        if not (self.known_from <= self.start_ms < self.end_ms <= self.known_until):
            raise ValueError(f"inconsistent range {self}")


def hour_range(hour_ms: int, has_previous: bool, has_next: bool) -> GridRange:
    """Rows of hour ``H``: ``ts = h0 + k*step``, k = 1..n; warm-up from the previous hour,
    labels from the next one, when they were provided."""
    if hour_ms % HOUR_MS:
        raise ValueError(f"{hour_ms} is not the start of an hour")
    return GridRange(
        start_ms=hour_ms,
        end_ms=hour_ms + HOUR_MS,
        known_from=hour_ms - HOUR_MS if has_previous else hour_ms,
        known_until=hour_ms + 2 * HOUR_MS if has_next else hour_ms + HOUR_MS,
    )


# The silver tables (computed in :mod:`.tables`): the training set split by source, and joined
# back. Here, without numpy or pandas, for the asset definitions.
TRADE_TABLE = "trade_features"
BOOK_TABLE = "book_features"
KLINE_TABLE = "kline_features"
TRAINING_TABLE = "training_set"
SOURCE_TABLES = (TRADE_TABLE, BOOK_TABLE, KLINE_TABLE)


def table_columns(table: str, spec: FeatureSpec = DEFAULT_SPEC) -> list[str]:
    """Value columns of a silver table, in training-set order (no ``symbol``, ``ts``,
    ``complete``). Trade labels live with the trades, mid labels with the book."""
    if table == TRADE_TABLE:
        return spec.trade_columns() + spec.trade_label_columns()
    if table == BOOK_TABLE:
        return spec.bba_columns() + spec.depth_columns() + spec.mid_label_columns()
    if table == KLINE_TABLE:
        return spec.kline_columns()
    if table == TRAINING_TABLE:
        return spec.feature_columns() + spec.label_columns()
    raise ValueError(f"unknown silver table {table!r}")


def table_has_labels(table: str) -> bool:
    return table in (TRADE_TABLE, BOOK_TABLE, TRAINING_TABLE)
