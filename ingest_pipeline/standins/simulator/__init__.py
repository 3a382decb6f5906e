"""Local Binance spot simulator: a deterministic synthetic market behind Binance's REST API.

It writes Binance's wire format on its own and imports nothing else from ``ingest_pipeline``,
so a bug in our client or normalizers cannot hide itself on both sides of the wire.
"""

from ingest_pipeline.standins.simulator.market import (
    Market,
    SymbolModel,
    SymbolSpec,
    default_universe,
)
from ingest_pipeline.standins.simulator.server import SimulatorConfig, SimulatorServer

__all__ = [
    "Market",
    "SimulatorConfig",
    "SimulatorServer",
    "SymbolModel",
    "SymbolSpec",
    "default_universe",
]
