"""``fum key``: the api's keys file (``FUM_API_KEYS``), edited where the api runs.

The api reads the file again when it changes, so a key added here works at once and a
key removed stops working at once (docs/SECURITY.md, "API keys").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from services.api.auth import add_key, parse_keys

from .local import default_data_dir
from .output import fail, out, print_json

key_app = typer.Typer(help="API keys: the file of named keys the api takes (stored hashed).")

FileOpt = Annotated[
    Path,
    typer.Option(
        "--file",
        envvar="FUM_API_KEYS",
        help="The keys file (default: the one of `fum up --auth`, <data>/api-keys)",
    ),
]
DEFAULT_FILE = default_data_dir() / "api-keys"


def _names(path: Path) -> list[str]:
    try:
        return sorted(set(parse_keys(path.read_text(), str(path)).values()))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from None


@key_app.command("add")
def key_add(
    name: Annotated[str, typer.Argument(help="The key's name (recorded with the calls it makes)")],
    file: FileOpt = DEFAULT_FILE,
) -> None:
    """Make a key: print it (its only appearance in clear) and put its hash in the file.

    A key of that name already there is replaced."""
    try:
        key = add_key(file, name)
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(key)


@key_app.command("ls")
def key_ls(
    file: FileOpt = DEFAULT_FILE, json_: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """The names of the keys in the file."""
    names = _names(file)
    if json_:
        print_json(names)
        return
    for name in names:
        out().print(name)


@key_app.command("rm")
def key_rm(name: Annotated[str, typer.Argument()], file: FileOpt = DEFAULT_FILE) -> None:
    """Take a key out of the file: it stops working at once."""
    if name not in _names(file):
        raise fail(f"no key named {name!r} in {file}")
    kept = [
        line + "\n"
        for line in file.read_text().splitlines()
        if re.split(r"\s+", line.split("#", 1)[0].strip())[0] != name
    ]
    tmp = file.with_name(f".{file.name}.rm")
    tmp.write_text("".join(kept))
    tmp.chmod(0o600)
    tmp.replace(file)
    out().print(f"removed key {name}")
