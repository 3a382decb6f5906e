"""Local Binance spot simulator: a deterministic synthetic market behind Binance's REST API.

It writes Binance's wire format on its own and imports nothing else from ``ingest_pipeline``
(checked by ``make lint``),
so a bug in our client or normalizers cannot hide itself on both sides of the wire.
"""

from ingest_pipeline.standins.simulator.basics import SymbolSpec, default_universe
from ingest_pipeline.standins.simulator.config import SimulatorConfig
from ingest_pipeline.standins.simulator.market import Market, SymbolModel
from ingest_pipeline.standins.simulator.server import SimulatorServer

__all__ = [
    "Market",
    "SimulatorConfig",
    "SimulatorServer",
    "SymbolModel",
    "SymbolSpec",
    "default_universe",
]
