"""The interactive part of ``fum keeper shell``: prompt_toolkit, history, completion.

Apart from ``fum_cli.keeper`` so that the other commands do not import prompt_toolkit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output
from prompt_toolkit.patch_stdout import patch_stdout

from .keeper import COMMANDS, KeeperShell


class KeeperCompleter(Completer):
    """Commands for the first word; paths from the live tree for the others."""

    def __init__(self, shell: KeeperShell) -> None:
        self.shell = shell

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        text = document.text_before_cursor
        words = text.split()
        if not words or (len(words) == 1 and not text.endswith(" ")):
            prefix = words[0] if words else ""
            for name in COMMANDS:
                if name.startswith(prefix):
                    yield Completion(name, -len(prefix))
            return
        command = COMMANDS.get(words[0])
        if command is None or not command.paths:
            return
        current = "" if text.endswith(" ") else words[-1]
        if current.startswith("-"):
            return
        if not current.startswith("/"):
            if current == "":
                yield Completion("/", 0)
            return
        parent, _, partial = current.rpartition("/")
        for child in self.shell.children_of(parent or "/"):
            if child.startswith(partial):
                yield Completion(f"{parent}/{child}", -len(current))


def history_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fum" / "keeper-history"


def run_shell(
    shell: KeeperShell,
    history: History | Path | None = None,
    input: Input | None = None,  # prompt_toolkit's name
    output: Output | None = None,
) -> None:
    """Read and run lines until quit or end of input."""
    if isinstance(history, Path):
        history = FileHistory(str(history))
    session: PromptSession[str] = PromptSession(
        history=history or InMemoryHistory(),
        completer=KeeperCompleter(shell),
        complete_while_typing=False,
        input=input,
        output=output,
    )
    with patch_stdout(raw=True):
        while not shell.done:
            state = "CONNECTED" if shell.client is not None else "CLOSED"
            try:
                line = session.prompt(f"[keeper: {shell.hosts}({state})] ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            shell.run_line(line)
