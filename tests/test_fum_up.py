"""``fum up`` as a user runs it: a real process tree, stopped by a signal, nothing left."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from fum_cli.cluster import read_state

from .support import FUM, Api, fum_up


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


def service_pid(data: Path, name: str) -> int:
    """The pid of one of ``fum up``'s services, as its state file has it now."""
    up = read_state(data)
    assert up is not None, "fum up wrote no state file"
    return up.services[name]


async def test_fum_up_restarts_a_killed_worker_and_every_call_ends_done(tmp_path: Path) -> None:
    """SIGKILL of one of two workers mid-load: it is started again (and says so), its
    calls finish elsewhere or on it, and every call ends DONE."""
    data = tmp_path / "data"
    with fum_up("--data", str(data), "--workers", "2", "--preload", "none") as (proc, url):
        async with aiohttp.ClientSession(url) as session:
            api = Api(session)
            await api.wait_nodes(lambda n: len(n) == 2)
            await api.runtime("pyh")
            name = await api.handler_function("sleepy", "pyh")
            calls = [{"function": name, "params": {"s": 0.2}}] * 160
            status, body = await api.request("POST", "/v1/calls", json={"calls": calls})
            assert status == 202, body
            nums = body["callNums"]
            while True:  # mid-load: node 1 has finished calls, and calls are left
                _, waited = await api.request(
                    "POST", "/v1/calls/wait", json={"callNums": nums, "timeout": 0}
                )
                if any(c["nodeId"] == 1 for c in waited["done"]):
                    break
                await asyncio.sleep(0.05)
            assert waited["pending"], "too late: every call was done before the kill"
            victim = service_pid(data, "worker-1")
            os.kill(victim, signal.SIGKILL)
            _, waited = await api.request(
                "POST", "/v1/calls/wait", json={"callNums": nums, "timeout": 90}
            )
            assert waited["pending"] == []
            assert {c["status"] for c in waited["done"]} == {"DONE"}
            await api.wait_nodes(lambda n: {x["nodeId"] for x in n} == {0, 1})
        assert service_pid(data, "worker-1") != victim
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout is not None
        said = proc.stdout.read()
        assert "worker-1 exited with signal 9 (SIGKILL); restarting it in" in said, said
        assert "worker-1 restarted (pid" in said, said
    assert wait_gone(data, 10) == []


def test_fum_up_stops_when_a_service_crash_loops(tmp_path: Path) -> None:
    """A db that cannot start again (its file replaced by a folder) exits each time it is
    restarted: after 5 exits within 60 s, ``fum up`` stops, status 1, saying why."""
    data = tmp_path / "data"
    with fum_up("--data", str(data)) as (proc, _):
        db_file = data / "fum.sqlite3"
        db_file.rename(data / "moved.sqlite3")  # the running db keeps the file it has open
        db_file.mkdir()
        os.kill(service_pid(data, "db"), signal.SIGKILL)
        assert proc.wait(timeout=90) == 1
        assert proc.stdout is not None
        said = proc.stdout.read()
        assert "db exited with signal 9 (SIGKILL); restarting it in 0.1s" in said, said
        assert "fum up: db exited 5 times within 60s, the last with status 1" in said, said
        assert "crash-looping" in said and str(data / "logs" / "db.log") in said
    assert wait_gone(data, 10) == []
