"""Settings of the keeper, read once from ``FUM_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from services.common.metrics import MetricsSettings


class KeeperSettings(MetricsSettings, frozen=True, kw_only=True):
    """Where the keeper listens and stores, and its session clock (ZooKeeper's names in
    brackets)."""

    keeper_host: str = "127.0.0.1"  # (clientPortAddress) one address, or several: "a,b"
    keeper_port: int = 2181  # (clientPort); 0: any free port, logged at start
    keeper_path: str = "keeper.sqlite3"  # the SQLite file (dataDir)
    # keep: open the existing tree; wipe: start from an empty one.
    keeper_start_policy: Literal["keep", "wipe"] = "keep"
    # normal: a reply's write survives a crash or kill -9 of the keeper; full: a power cut
    # too (an fsync per group commit, as ZooKeeper's forceSync=yes does per log flush).
    keeper_sync: Literal["normal", "full"] = "normal"
    keeper_tick_ms: int = 2000  # (tickTime) the session clock's resolution
    # Negotiated session timeouts are kept within these; 0: 2 and 20 ticks, as ZooKeeper.
    keeper_min_session_timeout_ms: int = 0  # (minSessionTimeout)
    keeper_max_session_timeout_ms: int = 0  # (maxSessionTimeout)
    keeper_max_connections: int = 0  # open connections from one address; 0: no limit
    log_level: str = "info"

    @property
    def min_session_timeout(self) -> int:
        return self.keeper_min_session_timeout_ms or 2 * self.keeper_tick_ms

    @property
    def max_session_timeout(self) -> int:
        return self.keeper_max_session_timeout_ms or 20 * self.keeper_tick_ms
