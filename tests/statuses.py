"""Every status the OpenAPI document promises is one a test has seen (tests/conftest.py).

Each api a test starts appends the (method, route template, status) of its answers to one
file (``FUM_STATUS_RECORD``, set for the session: the processes inherit it). At the end of
the session the document's (method, path, status) are compared with it:

- a status the api gave that the document does not name, on a route it documents, fails
  the session whatever ran (the document is wrong);
- a documented status no test saw fails the session only when the whole suite ran: no
  file or node named (``pytest``, ``pytest tests``), no ``-k``/``-m`` selection, nothing
  deselected (``--lf``, ``--sw``), not stopped early (``-x``, Ctrl-C). Any other run says
  how many it saw, and checks nothing (what one file's tests see is not meant to cover
  the document).

Order does not matter: the record is a set, read once at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

Status = tuple[str, str, int]


def documented() -> set[Status]:
    from services.api.openapi import openapi_document
    from services.api.routes import ROUTES

    doc = openapi_document(ROUTES)
    return {
        (method.upper(), path, int(code))
        for path, operations in doc["paths"].items()
        for method, operation in operations.items()
        for code in operation["responses"]
    }


def recorded(path: Path) -> set[Status]:
    seen = set()
    if path.exists():
        for line in path.read_text().splitlines():
            method, template, status = line.split(" ")
            seen.add((method, template, int(status)))
    return seen


def compare(promised: set[Status], seen: set[Status]) -> tuple[set[Status], set[Status]]:
    """(documented but never seen, seen on a documented operation but not documented)."""
    operations = {(method, path) for method, path, _ in promised}
    undocumented = {s for s in seen if s[:2] in operations and s not in promised}
    return promised - seen, undocumented


def all_files(config: pytest.Config) -> bool:
    """No file or node named: ``pytest``, or ``pytest tests`` (the testpaths)."""
    if config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        return True
    roots = {(config.rootpath / path).resolve() for path in config.getini("testpaths")}
    here = config.invocation_params.dir
    return bool(config.args) and all((here / arg).resolve() in roots for arg in config.args)


def whole_suite(session: pytest.Session, deselected: int) -> bool:
    config = session.config
    return (
        all_files(config)
        and not config.option.collectonly
        and not config.option.keyword
        and not config.option.markexpr
        and not config.getoption("lf", False)
        and not config.getoption("stepwise", False)
        and deselected == 0
        and not session.shouldstop
        and not session.shouldfail
        and session.testscollected > 0
    )


def show(statuses: set[Status]) -> list[str]:
    return [f"  {method} {path} {status}" for method, path, status in sorted(statuses)]


def main(argv: list[str]) -> int:
    """``python -m tests.statuses RECORD...``: the documented statuses none of the records
    (of partial runs) saw, and those seen that the document lacks; 1 if there are any."""
    seen: set[Status] = set()
    for name in argv:
        seen |= recorded(Path(name))
    unseen, undocumented = compare(documented(), seen)
    for title, found in (("not seen", unseen), ("not documented", undocumented)):
        if found:
            print(f"{title}:", *show(found), sep="\n")
    return 1 if unseen or undocumented else 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
