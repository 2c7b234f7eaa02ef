"""Settings of the db service, read once from ``FUM_*`` environment variables."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from services.common.curve import DEFAULT_DIR
from services.common.metrics import MetricsSettings


class DbSettings(MetricsSettings, frozen=True, kw_only=True):
    """Where the db listens and stores, and how hard it tries to keep what it stored."""

    db_bind: str = "tcp://127.0.0.1:3002"
    db_path: str = "fum.sqlite3"
    # keep: open the existing data; wipe: drop every table at start and begin empty.
    db_start_policy: Literal["keep", "wipe"] = "keep"
    # SQLite ``synchronous`` under WAL. normal: a commit survives a crash or kill -9 of this
    # process (the WAL is written before the reply); full: it also survives power loss
    # (the WAL is fsynced at every commit, which group commit amortises over a batch).
    db_sync: Literal["normal", "full"] = "normal"
    # Retention of finished calls (0: off, the default; both may be set): calls older
    # than this many days, and calls beyond the newest this many, are deleted in the
    # background, a small batch at a time, and the space they held given back to the file.
    db_keep_days: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    db_keep_calls: Annotated[int, msgspec.Meta(ge=0)] = 0
    # seconds between two passes of retention
    db_retention_interval: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # Keep a workflow session's checkpoints and fan-in sets after it ends (for debugging);
    # by default they are removed when it ends, as unum's GC does.
    keep_checkpoints: bool = False
    keys_dir: str = DEFAULT_DIR  # the control plane's CURVE keys (services/common/curve.py)
    log_level: str = "info"

    @property
    def retention(self) -> bool:
        return bool(self.db_keep_days or self.db_keep_calls)
