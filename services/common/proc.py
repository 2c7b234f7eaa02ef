"""Child processes: they never outlive their parent (Linux ``PR_SET_PDEATHSIG``), and
Python ones start cwd-proof."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Run in the child before exec: the kernel sends ``sig`` when the parent dies."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, sig)


def python_module(name: str) -> list[str]:
    """The argv that runs module ``name`` with this interpreter, cwd-proof: ``-P`` keeps
    the working folder off ``sys.path``, so a folder there named ``fum`` or ``services``
    (a data folder, a function's package) cannot stand in for the installed package."""
    return [sys.executable, "-P", "-m", name]
