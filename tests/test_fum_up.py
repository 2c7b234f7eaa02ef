"""``fum up`` as a user runs it: a real process tree, stopped by a signal, nothing left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from .support import Api, fum_up

FUM = Path(sys.executable).parent / "fum"


def processes_using(folder: Path) -> list[int]:
    """Processes whose command line, environment or working folder mention ``folder``."""
    needle = str(folder).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            cwd = os.readlink(entry / "cwd").encode()
        except OSError:
            continue
        if needle in text or needle in cwd:
            found.append(int(entry.name))
    return found


def wait_gone(folder: Path, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := processes_using(folder)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_fum_up_runs_a_cluster_and_stops_cleanly(tmp_path: Path, sig: int) -> None:
    data = tmp_path / "data"
    with fum_up("--data", str(data), "--workers", "2") as (proc, url):
        async with aiohttp.ClientSession(url) as session:
            api = Api(session)
            nodes = await api.wait_nodes(lambda n: len(n) == 2)
            assert {n["nodeId"] for n in nodes} == {0, 1}
            await api.runtime("pyh")
            name = await api.handler_function("echo", "pyh")
            _, call = await api.invoke(name, {"up": 1})
            assert call["result"] == {"up": 1}
        # db, api, 2 workers, miniworkers and at least one sandbox process
        assert len(processes_using(data)) >= 6
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        left = wait_gone(data, 10)
        assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]


def test_fum_up_rejects_bad_options(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(FUM), "up", "--preload", "sometimes", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0 and "preload" in out.stderr


async def test_fum_up_serves_from_a_folder_holding_fum_and_services(tmp_path: Path) -> None:
    """Folders named like fum's packages in the caller's working folder (here the data
    folder itself is ``./fum``) stand in for nothing: every service and sandbox starts
    cwd-proof."""
    for name in ("fum", "services", "fum_cli", "fum_client", "virtualenv"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('the cwd {name}')\n")
    with fum_up("--data", "./fum", cwd=tmp_path) as (proc, url):
        async with aiohttp.ClientSession(url) as session:
            api = Api(session)
            await api.runtime("pyh")
            name = await api.handler_function("echo", "pyh")
            status, call = await api.invoke(name, {"cwd": 1})
            assert (status, call["status"], call["result"]) == (200, "DONE", {"cwd": 1}), call
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
