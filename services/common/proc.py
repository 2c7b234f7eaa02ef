"""Child processes that never outlive their parent (Linux ``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Run in the child before exec: the kernel sends ``sig`` when the parent dies."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, sig)
