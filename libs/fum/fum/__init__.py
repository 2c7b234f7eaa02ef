"""fum: the container side of the FUM protocol (runs inside fum function containers).

A function script does its setup, then loops around ``fum_yield()``::

    import fum

    model = load_model()              # setup, once per container
    while True:
        fum.fum_yield()               # report the previous call done, wait for the next
        fum.result(model(fum.params()))

or defines ``def handle(params)`` and is run by ``python -m fum main:handle``.
``fum.keeper()`` gives a kazoo client of the cluster's keeper (ZooKeeper's protocol).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fum.keeper import NoKeeper, keeper
from fum.session import Session, error_report

__all__ = [
    "Fum",
    "NoKeeper",
    "Session",
    "error_report",
    "fail",
    "fum_yield",
    "input_path",
    "keeper",
    "output_path",
    "params",
    "result",
]

#: This process's session, read from the environment once at import: ``Fum.node_id``,
#: ``Fum.node_ip``, ``Fum.node_port``, ``Fum.host_ip`` (``Fum.host_id``), ``Fum.host_port``,
#: ``Fum.input_dir``, ``Fum.output_dir`` and ``Fum.current_uuid``.
Fum: Session = Session.from_environ()


def fum_yield() -> str:
    """Report setup (first time) or the previous call done, then wait for and return a UUID."""
    return Fum.fum_yield()


def params() -> Any:
    """Return the current call's parameters (input_dir/params.json, {} if missing)."""
    return Fum.params()


def result(value: Any) -> None:
    """Write the current call's result as JSON to output_dir/result.json."""
    Fum.result(value)


def fail(error: BaseException | str) -> None:
    """Mark the current call failed with an exception or a message."""
    Fum.fail(error)


def input_path(name: str) -> Path:
    """Return the path of a file sent with the current call."""
    return Fum.input_path(name)


def output_path(name: str) -> Path:
    """Return the path for an extra output file of the current call."""
    return Fum.output_path(name)
