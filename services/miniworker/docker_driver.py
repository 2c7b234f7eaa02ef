"""The docker driver: one persistent container per miniworker, through aiodocker.

The container is started from the runtime's image with an idle main process, so it can
exist before it knows its function (the ``runtime`` preload). Its runtime's ``path`` is a
folder of the node bound read-only (``code``, beside its input and output folders), empty
until installing makes the function's files (its build's artifact, or its package)
appear there as hard links to the node's store, where they were unpacked once (a farm
of such links made ahead by the worker is moved in): no file is copied into a
container, and the container cannot change them. A build (one
container, at deploy time, with no such bind) gets the package through the Docker API
(a tar), runs the ``dependencies`` command in the path and reads it back. Launching
execs the ``run`` command with the FUM environment, its stdout and stderr to a log file
in a folder bound from the node (read to its end after each call: exact per-call output,
where Docker's own stream can deliver the last lines after the call's ``ok``). A crash
or a timeout kills the container; the next launch starts it again, with its files (code
and installed dependencies) as they were.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shlex
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import structlog
from aiodocker.networks import DockerNetwork

from services.common.archive import package_as_tar, rebase_tar
from services.common.errors import FumError
from services.common.models import Function, Limits, Runtime

from .sandbox import Driver, OutputBuffer, Sandbox, SandboxFailed, link_tree, tail, take_spare
from .settings import MiniworkerSettings

log = structlog.get_logger()

FUM_PORT = 5555
# The main process of every function container: idle until killed; the work is exec'd
# beside it. A container whose run command the stem can become runs the stem first.
IDLE_LOOP = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"
IDLE = ["sh", "-c", IDLE_LOOP]
LABEL = "fum"
LABEL_NODE = "fum.node"
LABEL_MINIWORKER = "fum.miniworker"
LABEL_NETWORK = "fum.network"  # the cluster: two clusters on one engine use two networks
LOG_DIR = "/fum-log"  # bound from the node: the run command's output, read by the host
RUN_LOG = f"{LOG_DIR}/run.log"
# See libs/fum/fum/stem.py: what the stem writes once Python and pyzmq are loaded.
STEM_READY = b"\x00fum-stem-ready\n"
STEM_EXIT = b"\x00fum-stem-exit "  # then the stem's exit status and a newline (stem_cmd)
STEM_WAIT = 10.0  # how long a launch waits for a stem to be ready before going without it
_SHELL = set(";&|<>$`(){}[]*?~!#\\'\"\n")


def stem_argv(run: str) -> list[str] | None:
    """The arguments after ``python3`` when ``run`` is a plain ``python3 script ...`` or
    ``python3 -m module ...`` (the stem can become it); None for anything else."""
    if _SHELL & set(run):
        return None
    words = shlex.split(run)
    if len(words) < 2 or words[0] not in ("python", "python3"):
        return None
    args = words[1:]
    if args[0] == "-m":
        return args if len(args) > 1 else None
    return None if args[0].startswith("-") else args


def stem_cmd(python: str) -> list[str]:
    """The main process of a container that starts with a stem: the stem (its stdin the
    container's, attached by the driver), its exit status said on stdout when it ends (the
    function's, once it became the function), then idle as IDLE, for what is exec'd next."""
    status = "printf '\\000fum-stem-exit %d\\n' $?"
    return ["sh", "-c", f"{shlex.quote(python)} -m fum.stem; {status}; {IDLE_LOOP}"]


def host_config(limits: Limits, binds: list[str], network: str) -> dict[str, Any]:
    """No privileges, every capability dropped, and the function's limits."""
    config: dict[str, Any] = {
        "Binds": binds,
        "NetworkMode": network,
        "Init": True,
        "Privileged": False,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
    }
    if limits.memory:
        config["Memory"] = limits.memory * 1024 * 1024
        config["MemorySwap"] = limits.memory * 1024 * 1024
    if limits.cpus:
        config["NanoCpus"] = int(limits.cpus * 1e9)
    if limits.pids:
        config["PidsLimit"] = limits.pids
    return config


async def ensure_image(docker: aiodocker.Docker, image: str, registry: str) -> None:
    """Have ``image`` locally: pull it from the fum registry by name when it is missing."""
    try:
        await docker.images.inspect(image)
        return
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            raise
    if not registry:
        raise SandboxFailed(f"image {image!r} is not on this node and no registry is set")
    name, _, tag = image.partition(":")
    remote = f"{registry}/{name}"
    try:
        await docker.images.pull(remote, tag=tag or "latest")
        await docker.images.tag(f"{remote}:{tag or 'latest'}", name, tag=tag or "latest")
    except aiodocker.DockerError as exc:
        raise SandboxFailed(f"image {image!r}: pull from {registry} failed: {exc}") from None


def bind_ip(host_ip: str) -> str:
    """Where the miniworker listens for its container: the address the container is told
    (on the host: the network's gateway, so nothing beyond the host's bridges reaches it);
    all interfaces for a name (compose: the worker's container, whose interfaces are its
    networks)."""
    try:
        return str(ipaddress.ip_address(host_ip))
    except ValueError:
        return "0.0.0.0"


class DockerSandbox(Sandbox):
    def __init__(
        self,
        runtime: Runtime,
        settings: MiniworkerSettings,
        limits: Limits | None,
        docker: aiodocker.Docker,
        host_ip: str,
        build: bool = False,
    ) -> None:
        super().__init__(runtime, Path(settings.sandbox_dir) / "log" / "run.log")
        self.settings = settings
        self.limits = limits or Limits()
        self.host_ip = host_ip
        self.host_bind_ip = bind_ip(host_ip)
        self.root = Path(settings.sandbox_dir)
        # bound read-only at the runtime's path (a build's path is the container's own)
        self.code_dir = None if build else self.root / "code"
        self._docker = docker
        self._container: Any = None
        self._ip = ""
        self._exec: Any = None
        self._pump: asyncio.Task[None] | None = None
        self._exit_code: int | None = None
        self._networked = False  # joined its network (it is created on none, see start)
        # the interpreter started ahead for a ``python3 ...`` run command (fum.stem), as
        # the container's main process: its attached stream, and whether it said ready
        self._stem_argv = None if build else stem_argv(runtime.run)
        self._stem: tuple[Any, asyncio.Future[bool]] | None = None

    @property
    def input_dir(self) -> Path:
        return self.root / "input" / "input"

    @property
    def output_dir(self) -> Path:
        return self.root / "output" / "output"

    async def start(self) -> None:
        await ensure_image(self._docker, self.runtime.image, self.settings.docker_registry)
        shutil.rmtree(self.root, ignore_errors=True)
        for folder in (self.input_dir, self.output_dir, self.log_path.parent):
            folder.mkdir(parents=True)
            folder.chmod(0o777)  # the image's user may be anyone
        binds = [
            f"{self.root / 'input'}:/input",
            f"{self.root / 'output'}:/output",
            f"{self.log_path.parent}:{LOG_DIR}",
        ]
        if self.code_dir is not None:
            self.code_dir.mkdir()
            self.code_dir.chmod(0o755)
            binds.append(f"{self.code_dir}:{self.runtime.path}:ro")
        config: dict[str, Any] = {
            "Image": self.runtime.image,
            # with a stem, Python starts with the container; its order comes on stdin
            "Cmd": IDLE if self._stem_argv is None else stem_cmd(shlex.split(self.runtime.run)[0]),
            "OpenStdin": self._stem_argv is not None,
            "WorkingDir": self.runtime.path,
            "Env": ["input_dir=/input/input", "output_dir=/output/output", "PYTHONUNBUFFERED=1"],
            "Labels": {
                LABEL: "1",
                LABEL_NODE: str(self.settings.node_id),
                LABEL_MINIWORKER: self.settings.mw_id,
                LABEL_NETWORK: self.settings.docker_network,
            },
            # on no network: it joins its own once started, while its main process starts
            # (a start on a network of the user's making waits for the engine's DNS set-up
            # in the container, ~100 ms, docs/PERFORMANCE.md)
            "HostConfig": host_config(self.limits, binds, "none"),
        }
        name = f"fum-{self.settings.node_id}-{self.settings.mw_id}-{uuid.uuid4().hex[:6]}"
        try:
            self._container = await self._docker.containers.create(config, name=name)
            await self._start_container()
        except aiodocker.DockerError as exc:
            raise SandboxFailed(f"container of {self.runtime.image!r}: {exc.message}") from None

    async def _go_stem(self, env: dict[str, str]) -> bool:
        """Hand the run command to the stem; False when there is no stem ready to take it."""
        started, self._stem = self._stem, None
        if started is None or self._stem_argv is None:
            return False
        stream, ready = started
        try:
            ok = await asyncio.wait_for(asyncio.shield(ready), STEM_WAIT)
        except TimeoutError:
            ok = False
        if not ok:  # no fum in the image, say: the stem's words are not the call's
            log.info("docker.stem_unready", output=tail(self.output.take(), 5))
            await self._drop_stem(stream)
            return False
        self.output = OutputBuffer()
        self._exec = stream
        order = {"argv": self._stem_argv, "env": env, "log": RUN_LOG}
        try:
            await stream.write_in(json.dumps(order).encode() + b"\n")
        except (aiodocker.DockerError, OSError, RuntimeError) as exc:
            raise SandboxFailed(f"the container cannot run the function: {exc}") from None
        return True

    async def _drop_stem(self, stream: Any) -> None:
        await stream.close()
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None

    async def _start_container(self) -> None:
        """Start the container; with a stem, attached first, so its output is read from
        its first byte (and its stdin is ours)."""
        stream = None
        if self._stem_argv is not None:
            stream = self._container.attach(stdin=True, stdout=True, stderr=True)
            await stream.__aenter__()
        try:
            await self._container.start()
            if not self._networked:
                await self._join_network()
            info = await self._container.show()
        except BaseException:
            if stream is not None:
                await stream.close()
            raise
        networks = info["NetworkSettings"]["Networks"]
        self._ip = networks[self.settings.docker_network]["IPAddress"]
        if stream is not None:
            ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._stem = stream, ready
            self._pump = asyncio.get_running_loop().create_task(
                self._read_output(stream, None, ready)
            )

    async def _join_network(self) -> None:
        """Leave ``none`` for the functions' network (kept through a restart)."""
        container = {"Container": self._container.id}
        await DockerNetwork(self._docker, "none").disconnect({**container, "Force": True})
        await DockerNetwork(self._docker, self.settings.docker_network).connect(container)
        self._networked = True

    async def _run(self, command: str, env: dict[str, str] | None = None) -> Any:
        return await self._container.exec(
            ["sh", "-c", command],
            environment={
                "input_dir": "/input/input",
                "output_dir": "/output/output",
                **(env or {}),
            },
            workdir=self.runtime.path,
        )

    async def install(self, function: Function, files: Path) -> None:
        if self.code_dir is None:
            raise SandboxFailed("a build's container takes no installed function")
        try:
            if not take_spare(files, self.code_dir, self.root / "spare"):
                await asyncio.to_thread(link_tree, files, self.code_dir)
        except OSError as exc:
            raise SandboxFailed(f"placing the code in {self.runtime.path}: {exc}") from None

    async def _put(self, package: Path) -> None:
        # The package's files as a tar under the runtime's path, read within the package
        # limits (as the process driver unpacks), spooled to disk, streamed to the engine.
        with tempfile.TemporaryFile() as tar:
            await asyncio.to_thread(package_as_tar, package, self.runtime.path, tar, self.settings)
            tar.seek(0)
            try:
                await self._container.put_archive("/", tar)
            except aiodocker.DockerError as exc:
                raise SandboxFailed(
                    f"placing the code in {self.runtime.path}: {exc.message}"
                ) from None

    async def build(self, function: Function, package: Path, artifact: Path) -> str:
        await self._put(package)
        output = OutputBuffer()
        try:
            execution = await self._run(
                self.runtime.dependencies, {"PIP_TARGET": self.runtime.path}
            )
            async with execution.start(detach=False) as stream:
                while (message := await stream.read_out()) is not None:
                    output.feed(message.data)
            code = (await execution.inspect())["ExitCode"]
        except aiodocker.DockerError as exc:
            raise SandboxFailed(f"dependencies: {exc.message}") from None
        text = output.take()
        if code != 0:
            raise SandboxFailed(f"dependencies failed (exit {code}):\n{tail(text)}")
        try:
            folder = await self._container.get_archive(self.runtime.path)
        except aiodocker.DockerError as exc:
            raise SandboxFailed(f"reading {self.runtime.path} back: {exc.message}") from None
        with folder:
            await asyncio.to_thread(rebase_tar, folder, artifact)
        return text

    async def launch(self, env: dict[str, str]) -> tuple[str, int]:
        self.exited.clear()
        self.output = OutputBuffer()
        self._exit_code = None
        try:
            fum_env = {**env, "FUM_NODE_IP": self._ip, "FUM_NODE_PORT": str(FUM_PORT)}
            self.new_log()
            if self._stem is None:
                info = await self._container.show()
                if not info["State"]["Running"]:  # killed after a crash or a timeout
                    await self._start_container()  # with a stem again, when it has one
            if await self._go_stem(fum_env):
                return self._ip, FUM_PORT
            self._exec = await self._run(f"exec {self.runtime.run} >>{RUN_LOG} 2>&1", fum_env)
            stream = self._exec.start(detach=False)
            await stream.__aenter__()  # starts the command now; the pump closes the stream
        except aiodocker.DockerError as exc:
            raise SandboxFailed(f"the container cannot run the function: {exc.message}") from None
        self._pump = asyncio.get_running_loop().create_task(self._read_output(stream, self._exec))
        return self._ip, FUM_PORT

    async def _read_output(
        self, stream: Any, execution: Any, ready: asyncio.Future[bool] | None = None
    ) -> None:
        """Feed the run command's output to the sandbox's buffer; set ``exited`` when it
        ends. The stream is an exec's (``execution``) or, for a stem, the container's own:
        its output counts from its ready mark on, it ends at the stem's exit mark, and it
        is the run command's only once it was put to use."""
        seen = b""  # a stem's output before its ready mark, or after it: its exit mark
        code: int | None = None
        try:
            while (message := await stream.read_out()) is not None:
                if ready is None:
                    self.output.feed(message.data)
                    continue
                seen += message.data
                if not ready.done() and STEM_READY in seen:
                    seen = seen.partition(STEM_READY)[2]
                    ready.set_result(True)
                if STEM_EXIT in seen and seen.endswith(b"\n"):
                    code = int(seen.partition(STEM_EXIT)[2].split()[0])
                    seen = seen.partition(STEM_EXIT)[0]
                    break
                if ready.done():
                    seen = seen[-64:]  # the stem's output is in its log: only the mark counts
        except (aiodocker.DockerError, OSError, ValueError) as exc:
            log.warning("docker.output_lost", error=str(exc))
        finally:
            if ready is not None and not ready.done():
                self.output.feed(seen)
                ready.set_result(False)
            await stream.close()
            if (execution or stream) is self._exec:  # not for a stem that was never used
                if code is None:
                    code = await self._exit_code_of(execution)
                self._exit_code = code
                self.exited.set()

    async def _exit_code_of(self, execution: Any) -> int | None:
        """The exit status of an exec, or (a stem's, killed with its container) of the
        container."""
        try:
            if execution is not None:
                return int((await execution.inspect())["ExitCode"])
            return int((await self._container.show())["State"]["ExitCode"])
        except aiodocker.DockerError:
            return None

    def exit_reason(self) -> str:
        code = self._exit_code
        if code is not None and code >= 128:
            return f"the function's process was killed by signal {code - 128}"
        return f"the function's process exited with status {code}"

    async def stop_run(self) -> None:
        if self._container is not None:
            try:
                await self._container.kill()
            except aiodocker.DockerError as exc:
                if exc.status not in (404, 409):  # gone, or not running
                    raise FumError(f"killing the container: {exc.message}") from None
        if self._pump is not None:
            await self._pump
            self._pump = None

    async def destroy(self) -> None:
        self._stem = None
        if self._container is not None:
            try:
                await self._container.delete(force=True)
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    log.warning("docker.remove_failed", error=exc.message)
            self._container = None
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        self.close_log()
        await asyncio.to_thread(shutil.rmtree, self.root, True)


async def remove_orphans(docker: aiodocker.Docker, network: str, node_id: int) -> int:
    """Remove the function containers a previous run of this node left behind."""
    filters = json.dumps({"label": [f"{LABEL_NODE}={node_id}", f"{LABEL_NETWORK}={network}"]})
    containers = await docker.containers.list(all=True, filters=filters)
    for container in containers:
        await container.delete(force=True)
    return len(containers)


async def ensure_network(docker: aiodocker.Docker, name: str) -> str:
    """The bridge network function containers join; return its gateway address. One made
    here is for a worker on the host: its containers reach the host (the miniworkers, at
    the gateway), not each other (no inter-container traffic); compose and Swarm declare
    their own (docs/SECURITY.md)."""
    try:
        network = await docker.networks.get(name)
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            raise
        try:
            network = await docker.networks.create(
                {
                    "Name": name,
                    "Driver": "bridge",
                    "Labels": {LABEL: "1"},
                    "Options": {"com.docker.network.bridge.enable_icc": "false"},
                }
            )
        except aiodocker.DockerError as exc2:
            if exc2.status != 409:  # another worker made it meanwhile
                raise
            network = await docker.networks.get(name)
    info = await network.show()
    configs = info.get("IPAM", {}).get("Config") or [{}]
    return str(configs[0].get("Gateway", ""))


class DockerDriver(Driver):
    """Containers on this node's Docker engine, on the ``docker_network`` bridge."""

    def __init__(
        self, settings: MiniworkerSettings, docker: aiodocker.Docker, host_ip: str
    ) -> None:
        self.settings = settings
        self.docker = docker
        self.host_ip = host_ip

    @classmethod
    async def open(cls, settings: MiniworkerSettings) -> DockerDriver:
        docker = aiodocker.Docker()
        try:
            gateway = await ensure_network(docker, settings.docker_network)
        except BaseException:
            await docker.close()
            raise
        # On the host, containers reach us through the bridge's gateway; inside a container
        # (compose), the worker says its own address on the network.
        return cls(settings, docker, settings.docker_host_ip or gateway)

    def sandbox(self, runtime: Runtime, limits: Limits | None, build: bool = False) -> Sandbox:
        return DockerSandbox(runtime, self.settings, limits, self.docker, self.host_ip, build)

    async def close(self) -> None:
        await self.docker.close()
