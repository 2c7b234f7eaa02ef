"""``fum keeper``: the cluster's keeper from the command line (kazoo underneath).

``fum keeper shell`` is an interactive shell with zkCli's and fkCli's commands, history
and completion of commands and of paths from the live tree; ``fum keeper get/ls/create/
set/delete/stat PATH`` run one command for scripts (``--json``). The keeper is found at
``--hosts``, else ``FUM_KEEPER_HOSTS``, else where the api's ``/healthz`` says; the same
commands work against a real ZooKeeper.
"""

from __future__ import annotations

import base64
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    InvalidACLError,
    KazooException,
    NoAuthError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
)
from kazoo.protocol.states import WatchedEvent, ZnodeStat

from fum_client import FumError
from fum_client.keeper import configured_hosts, start_keeper

from .output import fail, print_json

keeper_app = typer.Typer(
    help="The keeper: ZooKeeper's data model for functions (zkCli-style commands).",
    no_args_is_help=True,
)

HostsOpt = Annotated[
    str | None,
    typer.Option(
        "--hosts", help="host:port[,host:port] (else $FUM_KEEPER_HOSTS, else the api's /healthz)"
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for the keeper to answer")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts)")]
PathArg = Annotated[str, typer.Argument(help="A znode path, e.g. /app/config")]

# zkCli's words for the errors a command can meet
MESSAGES: dict[type[Exception], str] = {
    NoNodeError: "Node does not exist: {path}",
    NodeExistsError: "Node already exists: {path}",
    NotEmptyError: "Node not empty: {path}",
    BadVersionError: "version No is not valid : {path}",
    NoAuthError: "Insufficient permission : {path}",
    NoChildrenForEphemeralsError: "Ephemerals cannot have children: {path}",
    InvalidACLError: "Acl is not valid : {path}",
}


class ShellError(Exception):
    """A command that cannot run: its message is what the user reads."""


@contextmanager
def explained(path: str) -> Iterator[None]:
    """kazoo's errors in zkCli's words."""
    try:
        yield
    except KazooException as exc:
        template = MESSAGES.get(type(exc))
        if template is None:
            raise ShellError(f"{type(exc).__name__}: {exc or 'the keeper refused'}") from None
        raise ShellError(template.format(path=path)) from None


def stat_fields(stat: ZnodeStat) -> dict[str, int]:
    return {name: getattr(stat, name) for name in ZnodeStat._fields}


def stat_lines(stat: ZnodeStat) -> list[str]:
    """A Stat as zkCli prints it."""

    def when(ms: int) -> str:
        return time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(ms / 1000))

    return [
        f"cZxid = {stat.czxid:#x}",
        f"ctime = {when(stat.ctime)}",
        f"mZxid = {stat.mzxid:#x}",
        f"mtime = {when(stat.mtime)}",
        f"pZxid = {stat.pzxid:#x}",
        f"cversion = {stat.cversion}",
        f"dataVersion = {stat.version}",
        f"aclVersion = {stat.aversion}",
        f"ephemeralOwner = {stat.ephemeralOwner:#x}",
        f"dataLength = {stat.dataLength}",
        f"numChildren = {stat.numChildren}",
    ]


def data_json(data: bytes | None) -> dict[str, Any]:
    """Data as JSON: text when it is UTF-8, else base64."""
    if data is None:
        return {"data": None}
    try:
        return {"data": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"data": None, "dataBase64": base64.b64encode(data).decode()}


def walk(client: KazooClient, path: str) -> Iterator[str]:
    """``path`` and every node under it, parents first."""
    yield path
    try:
        children = sorted(client.get_children(path))
    except NoNodeError:
        return
    for child in children:
        yield from walk(client, f"{path.rstrip('/')}/{child}")


@dataclass
class Flags:
    """The ``-x`` flags of a shell command, the ``-v N`` version, and the other words."""

    letters: set[str] = field(default_factory=set)
    version: int | None = None
    words: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, args: list[str], allowed: str) -> Flags:
        flags = cls()
        items = iter(args)
        for arg in items:
            if arg == "-v" and "v" in allowed:
                value = next(items, None)
                if value is None or not value.lstrip("-").isdigit():
                    raise ShellError("-v needs a version number")
                flags.version = int(value)
            elif arg.startswith("-") and len(arg) > 1 and not arg[1:].isdigit():
                for letter in arg[1:]:
                    if letter not in allowed:
                        raise ShellError(f"unknown option -{letter}")
                    flags.letters.add(letter)
            else:
                flags.words.append(arg)
        return flags


@dataclass
class Command:
    run: Callable[[KeeperShell, list[str]], None]
    usage: str
    paths: bool = True  # its arguments complete as paths
    needs_session: bool = True


class KeeperShell:
    """The shell's commands on one kazoo client; ``run_line`` runs one line."""

    def __init__(self, hosts: str, out: TextIO | None = None, timeout: float = 15.0) -> None:
        self.hosts = hosts
        self.out = out or sys.stdout
        self.timeout = timeout
        self.client: KazooClient | None = None
        self.done = False

    # ---- the session

    def open(self, hosts: str | None = None) -> None:
        self.close()
        self.hosts = hosts or self.hosts
        try:
            self.client = start_keeper(self.hosts, "this shell", self.timeout)
        except FumError as exc:
            raise ShellError(str(exc)) from None

    def close(self) -> None:
        if self.client is not None:
            self.client.stop()
            self.client.close()
            self.client = None

    def require_client(self) -> KazooClient:
        if self.client is None:
            raise ShellError("not connected (connect HOST:PORT)")
        return self.client

    def print(self, *lines: str) -> None:
        for line in lines:
            print(line, file=self.out, flush=True)

    # ---- commands

    def _watcher(self, event: WatchedEvent) -> None:
        self.print(
            "",
            "WATCHER::",
            "",
            f"WatchedEvent state:{event.state} type:{event.type} path:{event.path}",
        )

    def cmd_create(self, args: list[str]) -> None:
        flags = Flags.parse(args, "es")
        if not 1 <= len(flags.words) <= 2:
            raise ShellError("usage: " + COMMANDS["create"].usage)
        path = flags.words[0]
        data = flags.words[1].encode() if len(flags.words) == 2 else b""
        with explained(path):
            made = self.require_client().create(
                path, data, ephemeral="e" in flags.letters, sequence="s" in flags.letters
            )
        self.print(f"Created {made}")

    def cmd_get(self, args: list[str]) -> None:
        flags = Flags.parse(args, "sw")
        path = self._one_path(flags, "get")
        watch = self._watcher if "w" in flags.letters else None
        with explained(path):
            data, stat = self.require_client().get(path, watch=watch)
        self.print("null" if data is None else data.decode("utf-8", "replace"))
        if "s" in flags.letters:
            self.print(*stat_lines(stat))

    def cmd_set(self, args: list[str]) -> None:
        flags = Flags.parse(args, "sv")
        if len(flags.words) == 3 and flags.version is None:  # fkCli: set PATH DATA VERSION
            if not flags.words[2].lstrip("-").isdigit():
                raise ShellError("the version must be a number")
            flags.version = int(flags.words.pop())
        if len(flags.words) != 2:
            raise ShellError("usage: " + COMMANDS["set"].usage)
        path, data = flags.words
        version = -1 if flags.version is None else flags.version
        with explained(path):
            stat = self.require_client().set(path, data.encode(), version=version)
        if "s" in flags.letters:
            self.print(*stat_lines(stat))

    def cmd_delete(self, args: list[str]) -> None:
        flags = Flags.parse(args, "v")
        path = self._one_path(flags, "delete")
        with explained(path):
            self.require_client().delete(
                path, version=-1 if flags.version is None else flags.version
            )

    def cmd_deleteall(self, args: list[str]) -> None:
        path = self._one_path(Flags.parse(args, ""), "deleteall")
        with explained(path):
            self.require_client().delete(path, recursive=True)

    def cmd_ls(self, args: list[str]) -> None:
        flags = Flags.parse(args, "swR")
        path = self._one_path(flags, "ls", default="/")
        client = self.require_client()
        if "R" in flags.letters:
            with explained(path):
                client.get(path)
                self.print(*walk(client, path))
            return
        watch = self._watcher if "w" in flags.letters else None
        with explained(path):
            children, stat = client.get_children(path, watch=watch, include_data=True)
        self.print("[" + ", ".join(sorted(children)) + "]")
        if "s" in flags.letters:
            self.print(*stat_lines(stat))

    def cmd_stat(self, args: list[str]) -> None:
        flags = Flags.parse(args, "w")
        path = self._one_path(flags, "stat")
        watch = self._watcher if "w" in flags.letters else None
        with explained(path):
            stat = self.require_client().exists(path, watch=watch)
        if stat is None:
            raise ShellError(f"Node does not exist: {path}")
        self.print(*stat_lines(stat))

    def cmd_exists(self, args: list[str]) -> None:
        flags = Flags.parse(args, "w")
        path = self._one_path(flags, "exists")
        watch = self._watcher if "w" in flags.letters else None
        with explained(path):
            stat = self.require_client().exists(path, watch=watch)
        self.print("true" if stat is not None else "false")

    def cmd_getEphemerals(self, args: list[str]) -> None:  # zkCli's name
        path = self._one_path(Flags.parse(args, ""), "getEphemerals", default="/")
        client = self.require_client()
        mine = client.client_id[0] if client.client_id else 0
        found = []
        with explained(path):
            for node in walk(client, path):
                stat = client.exists(node)
                if stat is not None and stat.ephemeralOwner == mine:
                    found.append(node)
        self.print("[" + ", ".join(found) + "]")

    def cmd_getAcl(self, args: list[str]) -> None:  # zkCli's name
        path = self._one_path(Flags.parse(args, ""), "getAcl")
        with explained(path):
            acls, _ = self.require_client().get_acls(path)
        for acl in acls:
            self.print(f"'{acl.id.scheme},'{acl.id.id}", f": {''.join(_perm_letters(acl.perms))}")

    def cmd_addauth(self, args: list[str]) -> None:
        if len(args) != 2:
            raise ShellError("usage: " + COMMANDS["addauth"].usage)
        with explained(args[0]):
            self.require_client().add_auth(args[0], args[1])

    def cmd_sync(self, args: list[str]) -> None:
        path = self._one_path(Flags.parse(args, ""), "sync")
        with explained(path):
            self.require_client().sync(path)
        self.print("Sync is OK")

    def cmd_connect(self, args: list[str]) -> None:
        if len(args) > 1:
            raise ShellError("usage: " + COMMANDS["connect"].usage)
        self.open(args[0] if args else None)
        self.print(f"Connected to {self.hosts}")

    def cmd_close(self, args: list[str]) -> None:
        self.close()
        self.print("Closed")

    def cmd_quit(self, args: list[str]) -> None:
        self.done = True

    def cmd_help(self, args: list[str]) -> None:
        self.print(*(f"\t{command.usage}" for command in COMMANDS.values()))

    def _one_path(self, flags: Flags, name: str, default: str | None = None) -> str:
        if not flags.words and default is not None:
            return default
        if len(flags.words) != 1:
            raise ShellError("usage: " + COMMANDS[name].usage)
        return flags.words[0]

    # ---- lines

    def run_line(self, line: str) -> bool:
        """Run one line; whether it succeeded (errors are printed, not raised)."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self.print(f"bad quoting: {exc}")
            return False
        if not words:
            return True
        name, *args = words
        command = COMMANDS.get(name)
        try:
            if command is None:
                raise ShellError(f"unknown command {name!r} (help lists them)")
            command.run(self, args)
        except ShellError as exc:
            self.print(str(exc))
            return False
        except ValueError as exc:  # kazoo's own checks of a path
            self.print(f"Path is not valid: {exc}")
            return False
        return True

    def children_of(self, parent: str) -> list[str]:
        """The children of ``parent`` for completion ([] when there is none to ask)."""
        if self.client is None or not self.client.connected:
            return []
        try:
            return sorted(self.client.get_children(parent))
        except (KazooException, ValueError):
            return []


def _perm_letters(perms: int) -> Iterable[str]:
    for bit, letter in ((4, "c"), (8, "d"), (2, "w"), (1, "r"), (16, "a")):
        if perms & bit:
            yield letter


COMMANDS: dict[str, Command] = {
    "create": Command(KeeperShell.cmd_create, "create [-e] [-s] path [data]"),
    "get": Command(KeeperShell.cmd_get, "get [-s] [-w] path"),
    "set": Command(KeeperShell.cmd_set, "set [-s] [-v version] path data [version]"),
    "delete": Command(KeeperShell.cmd_delete, "delete [-v version] path"),
    "deleteall": Command(KeeperShell.cmd_deleteall, "deleteall path"),
    "ls": Command(KeeperShell.cmd_ls, "ls [-s] [-w] [-R] path"),
    "stat": Command(KeeperShell.cmd_stat, "stat [-w] path"),
    "exists": Command(KeeperShell.cmd_exists, "exists [-w] path"),
    "getEphemerals": Command(KeeperShell.cmd_getEphemerals, "getEphemerals [path]"),
    "getAcl": Command(KeeperShell.cmd_getAcl, "getAcl path"),
    "addauth": Command(KeeperShell.cmd_addauth, "addauth scheme auth", paths=False),
    "sync": Command(KeeperShell.cmd_sync, "sync path"),
    "connect": Command(KeeperShell.cmd_connect, "connect [host:port]", paths=False),
    "close": Command(KeeperShell.cmd_close, "close", paths=False),
    "quit": Command(KeeperShell.cmd_quit, "quit", paths=False),
    "exit": Command(KeeperShell.cmd_quit, "exit", paths=False),
    "help": Command(KeeperShell.cmd_help, "help", paths=False),
}


# ---- the typer commands


def resolve_hosts(ctx: typer.Context, hosts: str | None) -> str:
    """``--hosts``, else $FUM_KEEPER_HOSTS, else the api's /healthz."""
    found = configured_hosts(hosts)
    if found:
        return found
    root = ctx.find_root().obj  # fum's Options: the api the other commands use
    try:
        health = root.client().health()
    except FumError as exc:
        raise fail(f"no --hosts and no $FUM_KEEPER_HOSTS, and the api did not say: {exc}") from None
    if not health.keeper:
        raise fail("the api names no keeper: pass --hosts HOST:PORT")
    return health.keeper


@contextmanager
def one_command(ctx: typer.Context, hosts: str | None, timeout: float) -> Iterator[KeeperShell]:
    shell = KeeperShell(resolve_hosts(ctx, hosts), timeout=timeout)
    try:
        shell.open()
    except ShellError as exc:
        raise fail(str(exc)) from None
    try:
        yield shell
    except ShellError as exc:
        raise fail(str(exc)) from None
    finally:
        shell.close()


@keeper_app.command("shell")
def shell_command(
    ctx: typer.Context,
    hosts: HostsOpt = None,
    timeout: TimeoutOpt = 15.0,
    history: Annotated[
        Path | None, typer.Option(help="History file (default: ~/.local/state/fum/...)")
    ] = None,
) -> None:
    """An interactive shell: zkCli's commands, history, completion from the live tree."""
    shell = KeeperShell(resolve_hosts(ctx, hosts), timeout=timeout)
    try:
        shell.open()
    except ShellError as exc:
        raise fail(str(exc)) from None
    from .keeper_shell import history_path, run_shell  # prompt_toolkit: only for the shell

    path = history or history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_shell(shell, path)
    finally:
        shell.close()


@keeper_app.command("get")
def get_command(
    ctx: typer.Context,
    path: PathArg,
    hosts: HostsOpt = None,
    timeout: TimeoutOpt = 15.0,
    json_: JsonOpt = False,
) -> None:
    """Print a node's data (--json: its data and Stat)."""
    with one_command(ctx, hosts, timeout) as shell, explained(path):
        data, stat = shell.require_client().get(path)
    if json_:
        print_json({"path": path, **data_json(data), "stat": stat_fields(stat)})
    else:
        sys.stdout.buffer.write((data or b"") + b"\n")
        sys.stdout.flush()


@keeper_app.command("ls")
def ls_command(
    ctx: typer.Context,
    path: PathArg = "/",
    hosts: HostsOpt = None,
    timeout: TimeoutOpt = 15.0,
    json_: JsonOpt = False,
) -> None:
    """List a node's children, one a line (--json: a list)."""
    with one_command(ctx, hosts, timeout) as shell, explained(path):
        children = sorted(shell.require_client().get_children(path))
    if json_:
        print_json(children)
    else:
        for child in children:
            typer.echo(child)


@keeper_app.command("stat")
def stat_command(
    ctx: typer.Context,
    path: PathArg,
    hosts: HostsOpt = None,
    timeout: TimeoutOpt = 15.0,
    json_: JsonOpt = False,
) -> None:
    """Print a node's Stat."""
    with one_command(ctx, hosts, timeout) as shell, explained(path):
        stat = shell.require_client().exists(path)
        if stat is None:
            raise NoNodeError()
    if json_:
        print_json({"path": path, "stat": stat_fields(stat)})
    else:
        typer.echo("\n".join(stat_lines(stat)))


@keeper_app.command("create")
def create_command(
    ctx: typer.Context,
    path: PathArg,
    data: Annotated[str, typer.Argument(help="The node's data (text)")] = "",
    ephemeral: Annotated[
        bool, typer.Option("--ephemeral", "-e", help="Gone when this command ends")
    ] = False,
    sequential: Annotated[
        bool, typer.Option("--sequential", "-s", help="Add a %010d suffix")
    ] = False,
    parents: Annotated[
        bool, typer.Option("--parents", "-p", help="Create missing parents")
    ] = False,
    hosts: HostsOpt = None,
    timeout: TimeoutOpt = 15.0,
    json_: JsonOpt = False,
) -> None:
    """Create a node; print its path (a sequential one gets its suffix)."""
    with one_command(ctx, hosts, timeout) as shell, explained(path):
        made = shell.require_client().create(
            path, data.encode(), ephemeral=ephemeral, sequence=sequential, makepath=parents
        )
        stat = shell.require_client().exists(made)
    if json_:
        print_json({"path": made, "stat": stat_fields(stat) if stat else None})
    else:
        typer.echo(made)


@keeper_app.command("set")
def set_command(
    ctx: typer.Context,
    path: PathArg,
    data: Annotated[str, typer.Argument(help="The new data (text)")],
    version: Annotated[int, typer.Option("--version", "-v", help="Only if at this version")] = -1,
    hosts: HostsOpt = None,
    timeout: TimeoutOpt = 15.0,
    json_: JsonOpt = False,
) -> None:
    """Set a node's data (--version: refused if the node has changed since)."""
    with one_command(ctx, hosts, timeout) as shell, explained(path):
        stat = shell.require_client().set(path, data.encode(), version=version)
    if json_:
        print_json({"path": path, "stat": stat_fields(stat)})
    else:
        typer.echo(f"version {stat.version}")


@keeper_app.command("delete")
def delete_command(
    ctx: typer.Context,
    path: PathArg,
    version: Annotated[int, typer.Option("--version", "-v", help="Only if at this version")] = -1,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="With its children")] = False,
    hosts: HostsOpt = None,
    timeout: TimeoutOpt = 15.0,
    json_: JsonOpt = False,
) -> None:
    """Delete a node."""
    with one_command(ctx, hosts, timeout) as shell, explained(path):
        shell.require_client().delete(path, version=version, recursive=recursive)
    if json_:
        print_json({"path": path, "deleted": True})
