"""What shapes one simulated exchange (``SimulatorConfig``) and the simulator's wall clock: the
bottom of the simulator's modules, imported by the REST, WebSocket and replay servers alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ingest_pipeline.standins.simulator.archive import ArchiveSettings
from ingest_pipeline.standins.simulator.basics import GENESIS_MS, SymbolSpec, default_universe

# The REST faults ``/_sim/faults`` (and ``fault_rate``) can switch on.
FAULT_KINDS: tuple[str, ...] = ("429", "5xx", "slow", "truncated", "malformed")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class SimulatorConfig:
    """Everything that shapes one simulated exchange."""

    symbols: list[SymbolSpec] = field(default_factory=default_universe)
    extra_symbols: int = 0  # adds SYM0001USDT... for scale tests
    genesis_ms: int = GENESIS_MS
    weight_limit: int = 6000  # REQUEST_WEIGHT per minute, also announced by exchangeInfo
    ban_seconds: float = 120.0  # Binance bans for 2 min to 3 days; tests shrink it
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    fault_retry_after: int = 1
    slow_seconds: float = 30.0
    seed: int = 0  # seeds the fault sequence; the market is seeded per SymbolSpec
    # Replay of real captures (see replay.py): a file, a glob or a directory.
    replay_path: str | None = None
    replay_speed: float = 1.0  # 1.0 real time (looks live), 100.0 fast, 0 = as fast as possible
    replay_shift: bool = True  # times + one offset chosen at start; False: the recorded bytes
    replay_from_ms: int | None = None  # the slice played, in recorded receive time (epoch ms)
    replay_until_ms: int | None = None
    # WebSocket rules (Binance's values; tests shrink them)
    ws_ping_interval: float = 20.0
    ws_pong_timeout: float = 60.0
    ws_max_lifetime: float = 86_400.0
    ws_shutdown_event_at_lifetime: bool = False  # send serverShutdown before the 24 h close
    ws_max_streams: int = 1024
    ws_max_incoming_per_second: int = 5
    ws_connect_limit: int = 300
    ws_connect_window: float = 300.0
    ws_tick_ms: int = 10  # how often due trades are flushed
    ws_max_pending: int = 1_000_000  # frames queued for one client before it is dropped
    ws_emitted_log: int = 200_000  # ids kept per stream by GET /_sim/ws/emitted
    clock: Callable[[], int] = wall_clock_ms  # epoch ms; "now" of the market
    # The public data archive (data.binance.vision layout) served beside REST.
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)

    def all_symbols(self) -> list[SymbolSpec]:
        extra = default_universe(self.extra_symbols)[len(default_universe()) :]
        return [*self.symbols, *extra]
