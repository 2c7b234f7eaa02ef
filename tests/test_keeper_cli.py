"""``fum keeper``: one-shot commands (against the keeper and ZooKeeper), the interactive
shell through a real pty, and ``fum up``/``fum status`` naming the keeper."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from kazoo.client import KazooClient
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from fum_cli.keeper import KeeperShell
from fum_cli.keeper_shell import KeeperCompleter
from fum_cli.local import free_port

from .keeper import Server
from .support import fum_up

FUM = Path(sys.executable).parent / "fum"


def fum(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FUM), *args], capture_output=True, text=True, timeout=60, env=env or dict(os.environ)
    )


def test_one_shot_commands(zk_server: Server) -> None:
    hosts = ["--hosts", zk_server.hosts]
    base = f"/cli-{uuid.uuid4().hex[:8]}"
    made = fum("keeper", "create", base, "hello", *hosts)
    assert made.returncode == 0 and made.stdout.strip() == base, made.stderr
    got = fum("keeper", "get", base, "--json", *hosts)
    assert got.returncode == 0, got.stderr
    node = json.loads(got.stdout)
    assert node["data"] == "hello" and node["stat"]["version"] == 0
    assert fum("keeper", "get", base, *hosts).stdout == "hello\n"
    seq = fum("keeper", "create", f"{base}/s-", "-s", "--json", *hosts)
    assert json.loads(seq.stdout)["path"] == f"{base}/s-0000000000"
    assert fum("keeper", "set", base, "bye", "--version", "0", *hosts).stdout == "version 1\n"
    stale = fum("keeper", "set", base, "again", "--version", "0", *hosts)
    assert stale.returncode == 1 and "version No is not valid" in stale.stderr
    assert json.loads(fum("keeper", "ls", base, "--json", *hosts).stdout) == ["s-0000000000"]
    stat = json.loads(fum("keeper", "stat", base, "--json", *hosts).stdout)["stat"]
    assert (stat["version"], stat["numChildren"]) == (1, 1)
    not_empty = fum("keeper", "delete", base, *hosts)
    assert not_empty.returncode == 1 and "Node not empty" in not_empty.stderr
    assert fum("keeper", "delete", base, "-r", *hosts).returncode == 0
    missing = fum("keeper", "get", base, *hosts)
    assert missing.returncode == 1 and f"Node does not exist: {base}" in missing.stderr
    binary = KazooClient(zk_server.hosts)
    binary.start(timeout=15)
    try:
        binary.create(f"{base}-bin", b"\xff\x00")
    finally:
        binary.stop()
        binary.close()
    raw = json.loads(fum("keeper", "get", f"{base}-bin", "--json", *hosts).stdout)
    assert raw["data"] is None and raw["dataBase64"] == "/wA="
    nowhere = fum("keeper", "ls", "/", "--hosts", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert nowhere.returncode == 1 and "did not answer" in nowhere.stderr


class Pty:
    """A program on a pseudo-terminal: type lines, read the screen's text."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.seen = b""

    def read_until(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never came; the screen had:\n{self.seen.decode()[-2000:]}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    break
        at = self.seen.index(text.encode()) + len(text)
        shown, self.seen = self.seen[:at], self.seen[at:]
        return shown.decode(errors="replace")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        os.close(self.master)


def test_the_shell_on_a_terminal(keeper_server: Server, tmp_path: Path) -> None:
    base = f"/shell-{uuid.uuid4().hex[:8]}"
    history = tmp_path / "history"
    env = {
        **os.environ,
        "TERM": "xterm",
        "COLUMNS": "200",
        "LINES": "50",
        "PROMPT_TOOLKIT_NO_CPR": "1",
    }
    term = Pty(
        [str(FUM), "keeper", "shell", "--hosts", keeper_server.hosts, "--history", str(history)],
        env,
    )
    try:
        term.read_until("(CONNECTED)]")

        def run(line: str, shows: str) -> None:
            term.type(line + "\r")
            term.read_until(shows)

        run(f"create {base} top", f"Created {base}")
        run(f"create -e -s {base}/eph- mine", f"Created {base}/eph-0000000000")
        run(f"create {base}/completion-target found", f"Created {base}/completion-target")
        # a path completes from the live tree, a command from its name (Tab)
        term.type(f"get {base}/compl\t")
        term.read_until("etion-target")  # the screen shows what Tab added
        run("", "found")
        term.type("getEph\t")
        term.read_until("emerals")
        run(f" {base}", f"[{base}/eph-0000000000]")
        term.type(f"set {base} changed 0\r")
        run(f"set {base} stale 0", f"version No is not valid : {base}")
        run(f"stat {base}", "dataVersion = 1")
        run(f"ls {base}", "[completion-target, eph-0000000000]")
        run(f"get -w {base}", "changed")
        run(f"sync {base}", "Sync is OK")
        run(f"exists {base}/nope", "false")
        run("close", "Closed")
        run(f"get {base}", "not connected")
        run(f"connect {keeper_server.hosts}", "Connected to")
        # the shell's old session is gone: so is its ephemeral
        run(f"ls {base}", "[completion-target]")
        run("frobnicate", "unknown command")
        term.type("quit\r")
        assert term.proc.wait(10) == 0
    finally:
        term.close()
    assert f"create {base} top" in history.read_text()


def test_completion_from_the_live_tree(keeper_server: Server) -> None:
    base = f"/complete-{uuid.uuid4().hex[:8]}"
    shell = KeeperShell(keeper_server.hosts)
    shell.open()
    try:
        for name in ("alpha", "alps", "beta"):
            assert shell.run_line(f"create {base}-{name} x")
        completer = KeeperCompleter(shell)

        def complete(text: str) -> list[str]:
            document = Document(text, len(text))
            return [c.text for c in completer.get_completions(document, CompleteEvent())]

        assert complete(f"get {base}-al") == [f"{base}-alpha", f"{base}-alps"]
        assert complete(f"ls {base}-b") == [f"{base}-beta"]
        assert complete("ge") == ["get", "getEphemerals", "getAcl"]
        assert complete("connect ") == []  # not a path command
        assert complete(f"get {base}-zzz") == []
    finally:
        shell.close()


def test_fum_up_prints_the_keeper_and_status_gives_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with fum_up("--data", str(data)) as (proc, url):
        assert proc.stdout is not None
        keeper_line = proc.stdout.readline()
        assert keeper_line.startswith("keeper: 127.0.0.1:"), keeper_line
        keeper = keeper_line.split(": ", 1)[1].strip()
        status = fum("status", "--json", "--data", str(data))
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["keeper"] == keeper
        # without --hosts, `fum keeper` asks the api where the keeper is
        env = {**os.environ, "FUM_API_URL": url}
        env.pop("FUM_KEEPER_HOSTS", None)
        listed = fum("keeper", "ls", "/", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        assert "zookeeper" in json.loads(listed.stdout)
        assert (data / "keeper.sqlite3").exists()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


ZKCLI = "/usr/share/zookeeper/bin/zkCli.sh"


def zkcli(server: Server, *command: str) -> str:
    """One command of ZooKeeper's own zkCli (its Java client), as a user types it.

    zkCli sends a command line's request without waiting for its session: on a busy
    machine that is ConnectionLoss before anything was sent, so it is tried again."""
    for _ in range(5):
        out = subprocess.run(
            [ZKCLI, "-server", server.hosts, *command],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=server.folder,
        )
        text = out.stdout + out.stderr
        if "KeeperErrorCode = ConnectionLoss" not in text:
            return text
    raise AssertionError(f"zkCli never connected: {text}")


def test_zookeepers_own_zkcli(zk_server: Server) -> None:
    base = f"/zkcli-{uuid.uuid4().hex[:8]}"
    assert f"Created {base}" in zkcli(zk_server, "create", base, "hello")
    assert f"Created {base}/s0000000000" in zkcli(zk_server, "create", "-s", f"{base}/s", "x")
    shown = zkcli(zk_server, "get", "-s", base)
    assert "hello" in shown and "dataVersion = 0" in shown and "numChildren = 1" in shown
    assert "[s0000000000]" in zkcli(zk_server, "ls", base)
    zkcli(zk_server, "set", "-v", "0", base, "bye")
    assert "version No is not valid" in zkcli(zk_server, "set", "-v", "0", base, "again")
    assert "Node not empty" in zkcli(zk_server, "delete", base)
    zkcli(zk_server, "deleteall", base)
    assert f"Node does not exist: {base}" in zkcli(zk_server, "get", base)
