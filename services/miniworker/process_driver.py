"""The process driver: the run command as a subprocess in a private folder.

For development on machines without Docker and for fast tests. Each sandbox is a folder
on the node holding the function's code (``code/``, standing for the runtime's ``path``),
its own virtualenv (``venv/``, first on ``PATH`` so ``pip3`` and ``python3`` are its own)
and the FUM ``input``/``output`` folders. The ``fum`` library and ``pyzmq`` are made
importable in the virtualenv by a ``.pth`` file, as the runtime image has them installed.
The run command gets its own session (killed as a group) and dies with its miniworker;
its output goes to ``run.log``, read to its end when a call is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import structlog

from services.common.archive import PackageLimits, archive_folder, extract_package
from services.common.models import Function, Limits, Runtime
from services.common.ports import sandbox_port
from services.common.proc import die_with_parent, python_module

from .sandbox import Driver, OutputBuffer, Sandbox, SandboxFailed, tail

log = structlog.get_logger()

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def _child_setup(memory_mb: int | None) -> Callable[[], None]:
    """What runs in the child before exec: die with the parent, cap the address space."""

    def setup() -> None:
        die_with_parent(signal.SIGKILL)
        if memory_mb:
            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return setup


def sandbox_lib(node_dir: Path) -> Path:
    """A folder holding only ``fum``, ``pyzmq``, ``cloudpickle`` and ``kazoo`` (links to
    this interpreter's copies), as the runtime image has them installed.

    cloudpickle is there for the SDK's built-in function, which runs Python callables;
    kazoo for ``fum.keeper()``.
    """
    import cloudpickle
    import fum
    import kazoo
    import zmq

    sources = [
        Path(fum.__file__).parent,
        Path(zmq.__file__).parent,
        Path(cloudpickle.__file__).parent,
        Path(kazoo.__file__).parent,
    ]
    libs = Path(zmq.__file__).parent.parent / "pyzmq.libs"
    if libs.exists():
        sources.append(libs)
    lib = node_dir / "sandbox-lib"
    if all((lib / source.name).exists() for source in sources):
        return lib
    staging = node_dir / f"sandbox-lib.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for source in sources:
        (staging / source.name).symlink_to(source)
    if lib.exists():  # made by an older fum, without every library: replace it
        old = node_dir / f"sandbox-lib.old.{os.getpid()}"
        with contextlib.suppress(OSError):
            lib.rename(old)
            shutil.rmtree(old, ignore_errors=True)
    try:
        staging.rename(lib)
    except OSError:  # another miniworker made it first
        shutil.rmtree(staging, ignore_errors=True)
    return lib


class ProcessSandbox(Sandbox):
    """A private folder with a virtualenv, and the run command as its subprocess."""

    def __init__(
        self,
        runtime: Runtime,
        root: Path,
        node_dir: Path,
        passthrough_env: dict[str, str],
        package_limits: PackageLimits,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(runtime, root / "run.log")
        self.root = root
        self.node_dir = node_dir
        self.code_dir = root / "code"
        self.venv = root / "venv"
        self.limits = limits or Limits()
        self.package_limits = package_limits
        self._passthrough = passthrough_env
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            **self._passthrough,
            "PATH": f"{self.venv / 'bin'}:{BASE_PATH}",
            "HOME": str(self.root),
            "VIRTUAL_ENV": str(self.venv),
            "PYTHONUNBUFFERED": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_CACHE_DIR": str(self.node_dir / "cache" / "pip"),
            "LANG": "C.UTF-8",
            "input_dir": str(self.input_dir),
            "output_dir": str(self.output_dir),
        }
        env.update(extra or {})
        return env

    async def start(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        for folder in (self.code_dir, self.input_dir, self.output_dir):
            folder.mkdir(parents=True)
        lib = sandbox_lib(self.node_dir)
        await self._exec(
            [*python_module("virtualenv"), "--quiet", "--no-periodic-update", str(self.venv)],
            what="virtualenv",
        )
        site = next(self.venv.glob("lib/python*/site-packages"))
        (site / "fum-sandbox-lib.pth").write_text(f"{lib}\n")

    async def install(self, function: Function, files: Path) -> None:
        # A copy (as fum's user, the function could change a link's file for every
        # sandbox of it); modification times kept, so compiled files stay valid.
        shutil.rmtree(self.code_dir, ignore_errors=True)
        await asyncio.to_thread(shutil.copytree, files, self.code_dir)

    async def build(self, function: Function, package: Path, artifact: Path) -> str:
        shutil.rmtree(self.code_dir, ignore_errors=True)
        self.code_dir.mkdir()
        await asyncio.to_thread(extract_package, package, self.code_dir, self.package_limits)
        command = ["/bin/sh", "-c", self.runtime.dependencies]
        output = await self._exec(command, "dependencies", {"PIP_TARGET": str(self.code_dir)})
        await asyncio.to_thread(archive_folder, self.code_dir, artifact)
        return output

    async def _exec(self, argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
        """Run a set-up command in the code folder; its output, or ``SandboxFailed``."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.code_dir,
            env=self._env(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup(None),
        )
        out, _ = await proc.communicate()
        text = out.decode("utf-8", "replace")
        if proc.returncode != 0:
            raise SandboxFailed(f"{what} failed (exit {proc.returncode}):\n{tail(text)}")
        return text

    async def launch(self, env: dict[str, str]) -> tuple[str, int]:
        port = sandbox_port()
        self.exited.clear()
        self.output = OutputBuffer()
        fum_env = {**env, "FUM_NODE_IP": "127.0.0.1", "FUM_NODE_PORT": str(port)}
        self.new_log()
        with self.log_path.open("ab") as out:  # the child keeps its own descriptor
            self._proc = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                f"exec {self.runtime.run}",
                cwd=self.code_dir,
                env=self._env(fum_env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_child_setup(self.limits.memory),
            )
        self._pump = asyncio.get_running_loop().create_task(self._watch(self._proc))
        return "127.0.0.1", port

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        self.exited.set()

    def exit_reason(self) -> str:
        code = self._proc.returncode if self._proc else None
        if code is not None and code < 0:
            return f"the function's process was killed by signal {-code}"
        return f"the function's process exited with status {code}"

    async def stop_run(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        if self._pump is not None:
            await self._pump
            self._pump = None

    async def destroy(self) -> None:
        await self.stop_run()
        self.close_log()
        await asyncio.to_thread(shutil.rmtree, self.root, True)


class ProcessDriver(Driver):
    """Sandboxes as private folders and subprocesses of this miniworker."""

    def __init__(
        self,
        sandbox_dir: Path,
        node_dir: Path,
        passthrough_env: dict[str, str],
        package_limits: PackageLimits,
    ) -> None:
        self.sandbox_dir = sandbox_dir
        self.package_limits = package_limits
        self.node_dir = node_dir
        self.passthrough_env = passthrough_env

    def sandbox(self, runtime: Runtime, limits: Limits | None, build: bool = False) -> Sandbox:
        return ProcessSandbox(
            runtime,
            self.sandbox_dir,
            self.node_dir,
            self.passthrough_env,
            self.package_limits,
            limits,
        )
