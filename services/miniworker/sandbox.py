"""The driver interface: one persistent sandbox (a container or a process) per miniworker.

A sandbox goes through three steps, each of which a preload policy may do ahead of a call:
``start`` (generic for its runtime), ``install`` (a function's code and dependencies in
the runtime's ``path``), ``launch`` (the runtime's ``run`` command with the FUM
environment). ``relaunch`` restarts only the run command, keeping the installed code.
"""

from __future__ import annotations

import abc
import asyncio
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from services.common.errors import FumError
from services.common.models import Function, Limits, Runtime

# How much of a sandbox's output is kept for one call (its tail when it is longer).
LOG_LIMIT = 256 * 1024


class SandboxFailed(FumError):
    """The sandbox could not be set up or its run command died; the message has the tail."""

    code = "sandbox_failed"


class OutputBuffer:
    """The sandbox's merged stdout/stderr since the last ``take``, capped to its tail."""

    def __init__(self, limit: int = LOG_LIMIT) -> None:
        self._limit = limit
        self._chunks = bytearray()
        self._dropped = False

    def feed(self, data: bytes) -> None:
        self._chunks += data
        if len(self._chunks) > 2 * self._limit:
            del self._chunks[: len(self._chunks) - self._limit]
            self._dropped = True

    def take(self) -> str:
        data = bytes(self._chunks[-self._limit :])
        dropped = self._dropped or len(self._chunks) > self._limit
        self._chunks.clear()
        self._dropped = False
        text = data.decode("utf-8", "replace")
        return f"[... output cut to its last {self._limit} bytes]\n{text}" if dropped else text


def clear(folder: Path) -> None:
    """Remove everything in ``folder``."""
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def link_tree(source: Path, dest: Path) -> None:
    """Make ``source``'s files (a package's in the node's store) appear in the empty
    folder ``dest`` as hard links: folders are made, no file's data is copied (a file
    that cannot be linked, on another file system, is copied)."""
    root = str(source)
    for here, folders, files in os.walk(root):
        rel = os.path.relpath(here, root)
        target = str(dest) if rel == "." else os.path.join(dest, rel)
        for name in folders:
            os.mkdir(os.path.join(target, name))
            os.chmod(os.path.join(target, name), 0o755)
        for name in files:
            try:
                os.link(os.path.join(here, name), os.path.join(target, name))
            except OSError:
                shutil.copy2(os.path.join(here, name), os.path.join(target, name))


def take_spare(files: Path, dest: Path, claimed: Path) -> bool:
    """Move the entries of one of the spare link farms made ahead of ``files`` (its
    store entry's ``spare`` folder) into the empty folder ``dest``: a few renames
    where ``link_tree`` makes a link per file. Each farm is taken whole, by one sandbox
    (renamed first to ``claimed``, a path of its own). False when none is left."""
    spare = files.parent / "spare"
    try:
        names = [name for name in os.listdir(spare) if not name.startswith(".")]
    except FileNotFoundError:
        return False
    for name in names:
        try:
            os.rename(spare / name, claimed)
        except OSError:  # taken by another sandbox meanwhile
            continue
        for entry in os.listdir(claimed):
            os.rename(claimed / entry, dest / entry)
        os.rmdir(claimed)
        return True
    return False


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class Sandbox(abc.ABC):
    """One sandbox of one runtime; the miniworker drives it through these steps."""

    #: where the miniworker binds the PULL socket the sandbox sends ``ok`` to
    host_bind_ip: str = "127.0.0.1"
    #: the address the sandbox uses to reach that socket
    host_ip: str = "127.0.0.1"

    def __init__(self, runtime: Runtime, log_path: Path) -> None:
        self.runtime = runtime
        self.output = OutputBuffer()
        self.exited: asyncio.Event = asyncio.Event()  # the run command is gone
        # The run command's stdout and stderr go to this file (the driver sees to it), read
        # to its end when a call is over: what the function wrote before its ``ok`` is all
        # there (the library flushes first), nothing trails into the next call.
        self.log_path = log_path
        self._log: BinaryIO | None = None
        self._output_stamp = -1  # the output folder's mtime when it was last emptied

    @property
    @abc.abstractmethod
    def input_dir(self) -> Path:
        """The miniworker-side path of the sandbox's ``input_dir``."""

    @property
    @abc.abstractmethod
    def output_dir(self) -> Path:
        """The miniworker-side path of the sandbox's ``output_dir``."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Make the generic sandbox of the runtime, ready to take a function's code."""

    @abc.abstractmethod
    async def install(self, function: Function, files: Path) -> None:
        """Make the function's files appear in the runtime's path: ``files`` is the folder
        of the node's store they were unpacked in once (the function's own package, or
        its build's artifact, code and dependencies together). Nothing is installed
        here: a call never waits for an installer."""

    @abc.abstractmethod
    async def build(self, function: Function, package: Path, artifact: Path) -> str:
        """Place the files of the package (its archive) in the runtime's path, run the
        runtime's dependencies command there (``PIP_TARGET`` pointed at that path: what pip
        installs lands beside the code) and write the path as it is then to ``artifact``
        (a tar.gz); return the command's output. ``SandboxFailed`` (with the output's
        tail) when the command fails."""

    @abc.abstractmethod
    async def launch(self, env: dict[str, str]) -> tuple[str, int]:
        """Start the run command with ``env``; return where its FUM REP socket will listen."""

    @abc.abstractmethod
    async def stop_run(self) -> None:
        """Kill the run command (and everything it started); the installed code stays."""

    @abc.abstractmethod
    async def destroy(self) -> None:
        """Remove the sandbox and everything in it."""

    def new_log(self) -> None:
        """An empty log file for a launch of the run command, open for reading."""
        self.close_log()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")
        self.log_path.chmod(0o666)  # the image's user may be anyone
        self._log = self.log_path.open("rb")

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def clear_output(self) -> None:
        """Empty the output folder after a call. A folder whose mtime has not changed since
        it was emptied has had nothing added: one stat instead of a listing per call."""
        folder = self.output_dir
        try:
            if os.stat(folder).st_mtime_ns == self._output_stamp:
                return
            clear(folder)
            self._output_stamp = os.stat(folder).st_mtime_ns
        except FileNotFoundError:
            self._output_stamp = -1

    def take_output(self, upto: int | None = None) -> str:
        """What the sandbox printed since the last take: all of it, up to the ``ok`` that
        ended the call (and anything the driver caught on its own stream). With ``upto``
        (a call of a batch: the next one may be writing), only the log up to that offset."""
        if self._log is not None:
            if upto is not None:
                self.output.feed(self._log.read(max(0, upto - self._log.tell())))
            else:
                self.output.feed(self._log.read())
                if self._log.tell() > LOG_LIMIT:  # between calls: nothing is being written
                    os.truncate(self.log_path, 0)
                    self._log.seek(0)
        return self.output.take()

    def exit_reason(self) -> str:
        """Why the run command is gone, for the call's error text."""
        return "the function's process exited"


class Driver(abc.ABC):
    """Makes the sandboxes of one kind (processes, containers) for a miniworker."""

    @abc.abstractmethod
    def sandbox(self, runtime: Runtime, limits: Limits | None, build: bool = False) -> Sandbox:
        """A new, not yet started, sandbox of ``runtime``; ``build``: one for a build
        (``Sandbox.build``), whose runtime's path is its own to write in."""

    async def close(self) -> None:  # noqa: B027 - most drivers hold nothing
        """Release what the driver holds (a Docker client, say)."""
