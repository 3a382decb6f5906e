"""The simulator's REST bodies in Binance's wire format: ``exchangeInfo`` symbol entries and
the rows of ``trades`` / ``historicalTrades``, ``aggTrades`` and ``klines``, built from the
market's (or a replay's) integer units. Pure: ``rest.py`` serves them."""

from __future__ import annotations

from typing import Any

from ingest_pipeline.standins.simulator.basics import (
    PRICE_DECIMALS,
    AggTrades,
    Kline,
    SymbolSpec,
    Trades,
    format_units,
)


def symbol_info(spec: SymbolSpec) -> dict[str, Any]:
    """exchangeInfo entry in the layout of a real 2021 response."""
    tick = format_units(1, spec.price_decimals)
    step = format_units(1, spec.qty_decimals)
    return {
        "symbol": spec.symbol,
        "status": "TRADING",
        "baseAsset": spec.base_asset,
        "baseAssetPrecision": 8,
        "quoteAsset": spec.quote_asset,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": tick,
                "maxPrice": "1000000.00000000",
                "tickSize": tick,
            },
            {
                "filterType": "PERCENT_PRICE",
                "multiplierUp": "5",
                "multiplierDown": "0.2",
                "avgPriceMins": 5,
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": step,
                "maxQty": "9000000.00000000",
                "stepSize": step,
            },
            {
                "filterType": "MIN_NOTIONAL",
                "minNotional": "10.00000000",
                "applyToMarket": True,
                "avgPriceMins": 5,
            },
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {
                "filterType": "MARKET_LOT_SIZE",
                "minQty": "0.00000000",
                "maxQty": "1000.00000000",
                "stepSize": "0.00000000",
            },
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
        ],
        "permissions": ["SPOT"],
    }


# Replayed data keeps Binance's 8-decimal strings as exact integer units.
REPLAY_DECIMALS = (PRICE_DECIMALS, PRICE_DECIMALS)


def decimals_of(spec: SymbolSpec) -> tuple[int, int]:
    return spec.price_decimals, spec.qty_decimals


def trade_rows(t: Trades, decimals: tuple[int, int]) -> list[dict[str, Any]]:
    pd, qd = decimals
    return [
        {
            "id": i,
            "price": format_units(p, pd),
            "qty": format_units(s, qd),
            "quoteQty": format_units(p * s, pd + qd),
            "time": ts,
            "isBuyerMaker": m,
            "isBestMatch": True,
        }
        for i, p, s, ts, m in zip(
            t.ids.tolist(),
            t.price.tolist(),
            t.qty.tolist(),
            t.time.tolist(),
            t.buyer_maker.tolist(),
            strict=True,
        )
    ]


def agg_rows(a: AggTrades, decimals: tuple[int, int]) -> list[dict[str, Any]]:
    pd, qd = decimals
    return [
        {
            "a": i,
            "p": format_units(p, pd),
            "q": format_units(s, qd),
            "f": f,
            "l": last,
            "T": ts,
            "m": m,
            "M": True,
        }
        for i, p, s, f, last, ts, m in zip(
            a.ids.tolist(),
            a.price.tolist(),
            a.qty.tolist(),
            a.first_id.tolist(),
            a.last_id.tolist(),
            a.time.tolist(),
            a.buyer_maker.tolist(),
            strict=True,
        )
    ]


def kline_rows(klines: list[Kline], decimals: tuple[int, int]) -> list[list[Any]]:
    pd, qd = decimals
    return [
        [
            k.open_time,
            format_units(k.open, pd),
            format_units(k.high, pd),
            format_units(k.low, pd),
            format_units(k.close, pd),
            format_units(k.volume, qd),
            k.close_time,
            format_units(k.quote_volume, pd + qd),
            k.count,
            format_units(k.taker_buy_volume, qd),
            format_units(k.taker_buy_quote, pd + qd),
            "0",
        ]
        for k in klines
    ]
