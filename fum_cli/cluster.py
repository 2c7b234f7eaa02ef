"""What ``fum up``/``down``/``status`` manage: the local cluster's state file, and compose.

``fum up`` writes ``<data>/fum-up.json`` once its cluster answers (its pid, URL and
service pids) and removes it when it stops; ``fum down`` signals that pid and waits
for it to go, ``fum status`` reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import fum_cli

STATE_FILE = "fum-up.json"


@dataclass(frozen=True)
class UpState:
    pid: int
    url: str
    data_dir: str
    started_at: float
    services: dict[str, int]


def state_path(data_dir: Path) -> Path:
    return data_dir / STATE_FILE


def write_state(data_dir: Path, state: UpState) -> None:
    path = state_path(data_dir)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)


def read_state(data_dir: Path) -> UpState | None:
    try:
        raw = json.loads(state_path(data_dir).read_text())
        return UpState(**raw)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def remove_state(data_dir: Path, pid: int) -> None:
    """Remove the state file if it is this pid's (a newer ``fum up`` may own it)."""
    state = read_state(data_dir)
    if state is not None and state.pid == pid:
        state_path(data_dir).unlink(missing_ok=True)


def is_fum_up(pid: int) -> bool:
    """Whether ``pid`` is a live ``fum up`` process (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc: trust the pid
    words = [w.decode(errors="replace") for w in cmdline]
    return "up" in words and any("fum" in w for w in words)


def running_state(data_dir: Path) -> UpState | None:
    """The state of the live ``fum up`` of ``data_dir``; a stale file is removed."""
    state = read_state(data_dir)
    if state is None:
        return None
    if not is_fum_up(state.pid):
        state_path(data_dir).unlink(missing_ok=True)
        return None
    return state


def stop_local(state: UpState, timeout: float) -> bool:
    """SIGTERM the ``fum up`` process (it stops its services); whether it ended in time."""
    try:
        os.kill(state.pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_fum_up(state.pid):
            return True
        time.sleep(0.1)  # polling a process we cannot wait() on, up to the deadline
    return False


def kill_local(state: UpState) -> None:
    """SIGKILL what is left: the ``fum up`` process and the services it recorded."""
    for pid in [state.pid, *state.services.values()]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# ---- the compose cluster


def checkout_root() -> Path:
    """The fum checkout this CLI runs from (deploy/ lives there)."""
    return Path(fum_cli.__file__).resolve().parent.parent


def default_compose_file() -> Path:
    return checkout_root() / "deploy" / "compose.yaml"


def compose_command() -> list[str]:
    """``docker compose`` (v2) where it exists, else ``docker-compose`` (v1)."""
    if shutil.which("docker") is not None:
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    raise FileNotFoundError("neither `docker compose` nor `docker-compose` is installed")
