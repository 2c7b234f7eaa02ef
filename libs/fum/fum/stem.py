"""``python -m fum.stem``: a Python interpreter started ahead of its function.

Starting Python and importing pyzmq is most of what a container's first call waits for
(about 200 ms on an overlay file system). A sandbox whose run command is a plain
``python3 script.py ...`` or ``python3 -m module ...`` can start this stem while the
container is still generic: it imports what every FUM function imports, says it is
ready, and waits for one order on stdin, a JSON line::

    {"argv": ["test.py"], "env": {"FUM_NODE_PORT": "5555", ...}, "log": "/fum-log/run.log"}

It then becomes what ``python3 <argv> >>log 2>&1`` would have been, in the same
process: its output to ``log`` (when given), the environment set, ``fum.Fum`` read
again from it, ``sys.argv``/``sys.path`` as the interpreter sets them, and the script
or module run as ``__main__``. An empty stdin
(the sandbox chose not to use it) ends it quietly.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys

import zmq  # noqa: F401 - the slow import, done ahead of the call

import fum
import fum.handler  # handler mode (python -m fum) needs it too

#: What the stem writes on stdout once it is ready; nothing else is written before it.
READY = b"\x00fum-stem-ready\n"


def become(order: dict[str, object]) -> None:
    """Run the order's ``python3`` arguments in this interpreter."""
    argv = [str(arg) for arg in order["argv"]]  # type: ignore[attr-defined]
    log = order.get("log")
    if log:  # stdout and stderr to the file the host reads, as a shell's >>log 2>&1
        fd = os.open(str(log), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    env = order.get("env") or {}
    os.environ.update({str(k): str(v) for k, v in env.items()})  # type: ignore[attr-defined]
    fum.Fum = fum.Session.from_environ()  # the session of the real environment
    importlib.invalidate_caches()  # the function's files arrived after this process started
    if argv[0] == "-m":
        sys.argv = argv[1:]
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


def main() -> None:
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line.strip():
        return
    become(json.loads(line))


if __name__ == "__main__":
    main()
