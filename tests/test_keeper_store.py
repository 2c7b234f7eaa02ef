"""The keeper's SQLite file: acknowledged writes survive kill -9, zxids never go back,
sessions that come back within their timeout keep their ephemerals."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.retry import KazooRetry

from services.keeper import serialization as wire
from services.keeper.serialization import Create, Exists, GetData, SetData, Stat

from .keeper import TICK_MS, RawClient, start_server

OPEN = [wire.ACL(31, wire.Id("world", "anyone"))]


@pytest.mark.parametrize("sync", ["normal", "full"])  # commits on the loop, on a thread
def test_kill_9_under_writes_loses_no_acknowledged_write(tmp_path: Path, sync: str) -> None:
    keeper = start_server("keeper", tmp_path / "k", keeper_sync=sync)
    acked: list[list[str]] = [[] for _ in range(6)]
    stop = threading.Event()
    # no retries: a write is acknowledged only by its own reply
    clients = [
        KazooClient(keeper.hosts, timeout=10, connection_retry=KazooRetry(max_tries=0))
        for _ in acked
    ]

    def write(n: int) -> None:
        client = clients[n]
        client.start(timeout=15)
        client.ensure_path("/acked")
        i = 0
        try:
            while not stop.is_set():
                path = client.create(f"/acked/w{n}-{i}", str(i).encode())
                acked[n].append(path)
                i += 1
        except KazooException:
            pass  # the keeper died under us
        finally:
            client.stop()
            client.close()

    threads = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(len(acked))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while sum(map(len, acked)) < 600 and time.monotonic() < deadline:
        time.sleep(0.01)
    keeper.stop(signal.SIGKILL)
    stop.set()
    for thread, client in zip(threads, clients, strict=True):
        thread.join(10)
        if thread.is_alive():  # a create kazoo never failed (it can wait on with no timeout)
            client.stop()  # fails what it waits for: the thread ends
            thread.join(10)
        assert not thread.is_alive(), "a writer is stuck in kazoo"
    written = [path for paths in acked for path in paths]
    assert len(written) >= 600
    keeper.restart()
    check = KazooClient(keeper.hosts, timeout=10)
    check.start(timeout=15)
    try:
        present = {f"/acked/{name}" for name in check.get_children("/acked")}
        missing = [path for path in written if path not in present]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
        assert check.get(written[-1])[0] == written[-1].rsplit("-", 1)[1].encode()
    finally:
        check.stop()
        check.close()
        keeper.stop()


def test_restart_keeps_nodes_and_zxid_never_goes_back(tmp_path: Path) -> None:
    keeper = start_server("keeper", tmp_path / "k")
    try:
        with RawClient(keeper.hosts) as raw:
            raw.connect()
            assert raw.call(Create("/kept", b"v1", OPEN, 0))[0] == 0
            assert raw.call(SetData("/kept", b"v2", 0))[0] == 0
            raw.send(Exists("/kept", False))
            _, last_zxid, _, body = raw.read_reply()
            before = Stat.decode(body)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            keeper.stop(sig)
            keeper.restart()
            with RawClient(keeper.hosts) as raw:
                raw.connect()
                err, body = raw.call(GetData("/kept", False))
                assert err == 0 and body.buffer() == b"v2"
                assert Stat.decode(body) == before
                xid = raw.send(Create(f"/after-{sig}", b"", OPEN, 0))
                got, zxid, err, _ = raw.read_reply()
                assert (got, err) == (xid, 0)
                assert zxid > last_zxid
                last_zxid = zxid
        text = keeper.log_text()
        assert '"event": "keeper.listening"' in text
    finally:
        keeper.stop()
    with sqlite3.connect(tmp_path / "k" / "keeper.sqlite3") as db:
        assert db.execute("SELECT value FROM meta WHERE name = 'zxid'").fetchone()[0] >= last_zxid


def test_a_session_back_within_its_timeout_keeps_its_ephemerals(tmp_path: Path) -> None:
    keeper = start_server("keeper", tmp_path / "k")
    try:
        with RawClient(keeper.hosts) as raw:
            kept = raw.connect(timeout_ms=20 * TICK_MS)
            assert raw.call(Create("/mine", b"", OPEN, 1))[0] == 0
        with RawClient(keeper.hosts) as raw:
            lost = raw.connect(timeout_ms=2 * TICK_MS)
            assert raw.call(Create("/orphan", b"", OPEN, 1))[0] == 0
        keeper.stop(signal.SIGKILL)
        keeper.restart()
        with RawClient(keeper.hosts) as raw:
            again = raw.connect(20 * TICK_MS, kept.session_id, kept.passwd)
            assert again.session_id == kept.session_id
            err, body = raw.call(Exists("/mine", False))
            assert err == 0 and Stat.decode(body).ephemeralOwner == kept.session_id
            # the other session does not come back: after its timeout its node goes
            deadline = time.monotonic() + 10
            while raw.call(Exists("/orphan", False))[0] == 0:
                assert time.monotonic() < deadline, "the orphan ephemeral stayed"
                time.sleep(0.1)
        with RawClient(keeper.hosts) as raw:
            refused = raw.connect(2 * TICK_MS, lost.session_id, lost.passwd)
            assert refused.timeout == 0
    finally:
        keeper.stop()


def test_wipe_start_policy_begins_empty(tmp_path: Path) -> None:
    keeper = start_server("keeper", tmp_path / "k")
    try:
        with RawClient(keeper.hosts) as raw:
            raw.connect()
            assert raw.call(Create("/old", b"", OPEN, 0))[0] == 0
        keeper.stop()
        keeper.env["FUM_KEEPER_START_POLICY"] = "wipe"
        keeper.restart()
        with RawClient(keeper.hosts) as raw:
            raw.connect()
            assert raw.call(Exists("/old", False))[0] == -101
            assert raw.call(Exists("/zookeeper/quota", False))[0] == 0
    finally:
        keeper.stop()
