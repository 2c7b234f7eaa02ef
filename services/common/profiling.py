"""Optional profiling of a service process, for finding where a call's CPU goes.

With ``FUM_CPROFILE_DIR=DIR`` in its environment, a service runs under cProfile (CPU time of
its main thread; ZeroMQ's I/O thread is not in it) and writes
``DIR/<name>-<pid>.prof`` when it exits (read it with ``python -m pstats``). Local
clusters pass their environment on, so ``FUM_CPROFILE_DIR=/tmp/prof .venv/bin/python
bench/invoke.py`` profiles every process of the benchmark's cluster.
"""

from __future__ import annotations

import cProfile
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def run(name: str, main: Callable[[], T]) -> T:
    """``main()``, profiled when FUM_CPROFILE_DIR names a folder."""
    folder = os.environ.get("FUM_CPROFILE_DIR")
    if not folder:
        return main()
    # CPU time of this thread, not wall time: on busy cores a wall-clock profile charges
    # every moment the process waited for a core to whatever function it was in.
    profiler = cProfile.Profile(time.thread_time)
    try:
        return profiler.runcall(main)
    finally:
        Path(folder).mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(Path(folder) / f"{name}-{os.getpid()}.prof")
