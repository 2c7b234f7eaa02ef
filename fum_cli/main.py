"""``fum``: the command line of the cluster.

Cluster commands (``up``, ``down``, ``status``) run a local cluster or the compose one;
every other command talks to an api, found as the SDK finds it: ``--api-url``, else
``FUM_API_URL``, else the profile file, else ``http://127.0.0.1:3000``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TransferSpeedColumn,
)
from rich.tree import Tree
from typer.core import TyperGroup

from fum_client import Client, FumError
from fum_client.config import Settings, config_path, resolve, write_setting
from fum_client.models import STATUSES, Call, Session, SessionInstance
from fum_client.packaging import load_package
from services.common.proc import python_module

from . import cluster as state
from .keeper import keeper_app
from .keys import key_app
from .local import ClusterError, LocalCluster, default_data_dir
from .output import (
    CALL_COLUMNS,
    call_row,
    err,
    errors,
    fail,
    ms,
    out,
    print_json,
    short_json,
    status_text,
    table,
)
from .supervisor import CrashLoop, Supervisor
from .triggers import execution_app, trigger_app

GLOBAL_OPTIONS = ("--api-url", "--api-key", "--profile")


class FumGroup(TyperGroup):
    """Takes the api options anywhere on the line: ``fum nodes --api-url URL`` too."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        front: list[str] = []
        rest: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                rest.extend(args[i:])
                break
            if arg in GLOBAL_OPTIONS and i + 1 < len(args):
                front.extend(args[i : i + 2])
                i += 2
                continue
            if arg.startswith(tuple(f"{o}=" for o in GLOBAL_OPTIONS)):
                front.append(arg)
            else:
                rest.append(arg)
            i += 1
        return super().parse_args(ctx, front + rest)


app = typer.Typer(
    cls=FumGroup,
    help="fum: a self-hosted Function-as-a-Service cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
runtime_app = typer.Typer(help="Runtimes: an image plus how to install and run a function.")
fn_app = typer.Typer(help="Functions: packages of code bound to a runtime.")
config_app = typer.Typer(help="The profile file: where the api is, which key to send.")
app_app = typer.Typer(help="Workflow apps in the unum style, and their sessions.")
app.add_typer(runtime_app, name="runtime", no_args_is_help=True)
app.add_typer(fn_app, name="fn", no_args_is_help=True)
app.add_typer(config_app, name="config", no_args_is_help=True)
app.add_typer(app_app, name="app", no_args_is_help=True)
app.add_typer(key_app, name="key", no_args_is_help=True)
app.add_typer(keeper_app, name="keeper")
app.add_typer(trigger_app, name="trigger", no_args_is_help=True)
app.add_typer(execution_app, name="execution", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts)")]
DataOpt = Annotated[
    Path, typer.Option("--data", help="The local cluster's folder (database, packages, logs)")
]
DockerOpt = Annotated[
    bool, typer.Option("--docker", help="The compose cluster (deploy/compose.yaml) instead")
]
ProjectOpt = Annotated[str, typer.Option("--project", help="Compose project name")]
ComposeFileOpt = Annotated[
    Path | None, typer.Option("--compose-file", help="Compose file (default: deploy/compose.yaml)")
]


@dataclass
class Options:
    """The api options given before the command, resolved on first use."""

    api_url: str | None = None
    api_key: str | None = None
    profile: str | None = None
    _client: Client | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        with errors():
            return resolve(self.api_url, self.api_key, self.profile)

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(settings=self.settings())
        return self._client


def opts(ctx: typer.Context) -> Options:
    root = ctx.find_root()
    if not isinstance(root.obj, Options):
        root.obj = Options()
    return root.obj


def client(ctx: typer.Context) -> Client:
    """The api client of this command, closed when the command ends."""
    options = opts(ctx)
    if options._client is None:
        ctx.find_root().call_on_close(options.client().close)
    return options.client()


@app.callback()
def main(
    ctx: typer.Context,
    api_url: Annotated[
        str | None,
        typer.Option(
            "--api-url",
            help="The api, e.g. http://127.0.0.1:3000 (else $FUM_API_URL, "
            "the profile file, http://127.0.0.1:3000)",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", help="API key sent as a Bearer token (else $FUM_API_KEY, the profile file)"
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option("--profile", help="Profile of the profile file (else $FUM_PROFILE, default)"),
    ] = None,
) -> None:
    """fum: a self-hosted Function-as-a-Service cluster."""
    ctx.obj = Options(api_url, api_key, profile)


# ------------------------------------------------------------------ up / down / status


def _wait_api(url: str, timeout: float, nodes: int = 1) -> int:
    """Wait until the api at ``url`` answers with ``nodes`` workers; how many it has."""
    with Client(url, timeout=5) as probe:
        deadline = time.monotonic() + timeout
        while True:
            try:
                count = len(probe.list_nodes())
                if count >= nodes:
                    return count
            except FumError:
                pass
            if time.monotonic() > deadline:
                raise fail(f"the api at {url} was not up with {nodes} node(s) within {timeout:g}s")
            time.sleep(0.5)  # polling a cluster that is starting, up to the deadline


def _compose(
    project: str, compose_file: Path | None, *args: str, env: dict[str, str] | None = None
) -> None:
    path = compose_file or state.default_compose_file()
    if not path.exists():
        raise fail(f"no compose file at {path}: run from a fum checkout or pass --compose-file")
    try:
        command = state.compose_command()
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None
    argv = [*command, "-f", str(path), "-p", project, *args]
    result = subprocess.run(argv, env={**os.environ, **(env or {})}, check=False)
    if result.returncode != 0:
        raise fail(f"`{' '.join(argv)}` failed with status {result.returncode}")


def _up_docker(
    port: int, project: str, compose_file: Path | None, build: bool, timeout: float
) -> None:
    if build:
        script = state.checkout_root() / "deploy" / "build-images.sh"
        if not script.exists():
            raise fail(f"no {script}: run from a fum checkout, or pass --no-build")
        err().print("[bold]building images[/] (deploy/build-images.sh)...")
        if subprocess.run([str(script)], check=False).returncode != 0:
            raise fail("building the images failed (see the output above)")
    _compose(project, compose_file, "up", "-d", env={"FUM_PORT": str(port)})
    url = f"http://127.0.0.1:{port}"
    count = _wait_api(url, timeout)
    out().print(f"fum is up: {url}  ({count} node(s), compose project {project})")


def _up_detached(argv: list[str], data: Path, timeout: float) -> None:
    """Run ``fum up`` (without --detach) in the background; wait for its state file."""
    (data / "logs").mkdir(parents=True, exist_ok=True)
    log = data / "logs" / "fum-up.log"
    with log.open("ab") as sink:
        child = subprocess.Popen(
            [*python_module("fum_cli"), "up", *argv],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while True:
        current = state.read_state(data)
        if current is not None and current.pid == child.pid:
            out().print(
                f"fum is up: {current.url}  (pid {child.pid}, data in {data}; `fum down` stops it)"
            )
            return
        if child.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise fail(f"fum up exited with status {child.returncode}:\n" + "\n".join(tail))
        if time.monotonic() > deadline:
            child.terminate()
            raise fail(f"the cluster was not up within {timeout:g}s; see {log}")
        time.sleep(0.1)  # polling the child's state file, up to the deadline


@app.command()
def up(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="HTTP port of the api (0: any free port)")] = 3000,
    workers: Annotated[int, typer.Option(help="Worker processes (nodes)")] = 1,
    data: Annotated[
        Path, typer.Option(help="Folder for the database, packages and logs")
    ] = default_data_dir(),
    preload: Annotated[
        str, typer.Option(help="Preload policy: runtime, function or none")
    ] = "runtime",
    policy: Annotated[
        str, typer.Option(help="Invocation policy: warm-affinity, least-loaded, round-robin")
    ] = "warm-affinity",
    wipe: Annotated[bool, typer.Option(help="Start from an empty database")] = False,
    auth: Annotated[
        bool,
        typer.Option(
            help="Ask for API keys: make one and write it to the profile file (0600), "
            "where `fum` and fum_client find it"
        ),
    ] = False,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in the background; `fum down` stops it")
    ] = False,
    docker: DockerOpt = False,
    project: ProjectOpt = "fum",
    compose_file: ComposeFileOpt = None,
    build: Annotated[
        bool, typer.Option(help="With --docker: build the images first (deploy/build-images.sh)")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the cluster")] = 180.0,
) -> None:
    """Run a local cluster (db, api, workers) until Ctrl-C or `fum down`.

    The process driver, on loopback; --detach runs it in the background. A service that
    dies is restarted with backoff; one that keeps dying stops it (exit 1). With --docker,
    the compose cluster instead (deploy/compose.yaml, in the background)."""
    if preload not in ("runtime", "function", "none"):
        raise typer.BadParameter(
            "preload must be runtime, function or none", param_hint="--preload"
        )
    if policy not in ("warm-affinity", "least-loaded", "round-robin"):
        raise typer.BadParameter("unknown invocation policy", param_hint="--policy")
    if docker:
        if port == 0:
            raise typer.BadParameter("--docker needs a fixed port", param_hint="--port")
        _up_docker(port, project, compose_file, build, timeout)
        return
    data = data.expanduser().resolve()
    running = state.running_state(data)
    if running is not None:
        raise fail(f"fum is already up for {data}: {running.url} (pid {running.pid})")
    if detach:
        argv = [
            f"--port={port}",
            f"--workers={workers}",
            f"--data={data}",
            f"--preload={preload}",
            f"--policy={policy}",
        ]
        argv += ["--wipe"] if wipe else []
        argv += ["--auth"] if auth else []
        argv += [f"--profile={opts(ctx).profile}"] if opts(ctx).profile else []
        _up_detached(argv, data, timeout)
        return
    cluster = LocalCluster(
        data,
        port=port,
        workers=workers,
        preload=preload,
        policy=policy,
        db_policy="wipe" if wipe else "keep",
        log_level="info",
        auth=auth,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster.start(timeout)
    except ClusterError as exc:
        typer.echo(f"fum up: {exc}", err=True)
        raise typer.Exit(1) from None
    if cluster.api_key is not None:
        profile = opts(ctx).profile or os.environ.get("FUM_PROFILE") or "default"
        with errors():
            write_setting(config_path(), profile, "api_url", cluster.url)
            write_setting(config_path(), profile, "api_key", cluster.api_key)
        typer.echo(f"API keys are on: the key is in {config_path()} [{profile}]")
    started = time.time()

    def record() -> None:  # the state file has the services' current pids
        pids = {name: proc.pid for name, proc in cluster.procs.items()}
        state.write_state(data, state.UpState(os.getpid(), cluster.url, str(data), started, pids))

    record()
    typer.echo(f"fum is up: {cluster.url}  (data in {cluster.data_dir}; Ctrl-C stops it)")
    typer.echo(f"keeper: {cluster.keeper_hosts}")
    supervisor = Supervisor(cluster, lambda line: typer.echo(f"fum up: {line}", err=True), record)
    try:
        supervisor.run(stop)
    except CrashLoop as exc:
        typer.echo(f"fum up: {exc}; stopping", err=True)
        raise typer.Exit(1) from None
    finally:
        typer.echo("stopping...")
        cluster.stop()
        state.remove_state(data, os.getpid())


@app.command()
def down(
    data: DataOpt = default_data_dir(),
    docker: DockerOpt = False,
    project: ProjectOpt = "fum",
    compose_file: ComposeFileOpt = None,
    volumes: Annotated[
        bool, typer.Option("--volumes", help="With --docker: remove the data volumes too")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait before killing")] = 30.0,
) -> None:
    """Stop the local cluster started by `fum up` (or, with --docker, the compose cluster)."""
    if docker:
        _compose(project, compose_file, "down", *(["--volumes"] if volumes else []))
        out().print(f"compose project {project} is down")
        return
    data = data.expanduser().resolve()
    running = state.running_state(data)
    if running is None:
        out().print(f"fum is not running (no `fum up` for {data})")
        return
    if not state.stop_local(running, timeout):
        state.kill_local(running)
        state.state_path(data).unlink(missing_ok=True)
        raise fail(f"fum up (pid {running.pid}) did not stop within {timeout:g}s: killed it")
    out().print(f"fum is down (was {running.url}, pid {running.pid})")


@app.command()
def status(
    ctx: typer.Context,
    data: DataOpt = default_data_dir(),
    docker: DockerOpt = False,
    project: ProjectOpt = "fum",
    compose_file: ComposeFileOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Is the cluster up? The local `fum up` (or the compose services), and its api's health.

    Exit status 0 when the api answers, 1 when it does not."""
    report: dict[str, Any] = {}
    if docker:
        if not json_:
            _compose(project, compose_file, "ps")
        url = opts(ctx).api_url or "http://127.0.0.1:3000"
        report["compose"] = project
    else:
        data = data.expanduser().resolve()
        running = state.running_state(data)
        if running is not None:
            report["local"] = {
                "pid": running.pid,
                "url": running.url,
                "data": running.data_dir,
                "services": running.services,
            }
            url = running.url if opts(ctx).api_url is None else opts(ctx).settings().api_url
        else:
            report["local"] = None
            url = opts(ctx).settings().api_url
    report["apiUrl"] = url
    try:
        with Client(url, settings=None, timeout=5) as probe:
            health = probe.health()
            nodes = probe.list_nodes()
        report.update(up=True, health=health.status, nodes=[n.to_dict() for n in nodes])
        report["keeper"] = health.keeper
    except FumError as exc:
        report.update(up=False, error=str(exc))
    if json_:
        print_json(report)
    else:
        local = report.get("local")
        if local:
            out().print(f"local cluster: pid {local['pid']}, data in {escape(local['data'])}")
        elif not docker:
            out().print(f"no local cluster running for {data}")
        if report["up"]:
            out().print(f"[green]up[/]: {url}  ({len(report['nodes'])} node(s))")
            if report["keeper"]:
                out().print(f"keeper: {report['keeper']}")
        else:
            out().print(f"[red]down[/]: {escape(report['error'])}")
    if not report["up"]:
        raise typer.Exit(1)


# ------------------------------------------------------------------ nodes


@app.command()
def nodes(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Live workers: their load and warm sandboxes."""
    with errors():
        items = client(ctx).list_nodes()
    if json_:
        print_json([n.to_dict() for n in items])
        return
    if not items:
        out().print("no workers registered")
        return
    table(
        ("node", "driver", "preload", "capacity", "busy", "queued", "in flight", "warm", "generic"),
        [
            (
                n.node_id,
                n.driver,
                n.preload,
                n.capacity,
                n.busy,
                n.queued,
                n.in_flight,
                _counts(n.idle),
                _counts(n.generic),
            )
            for n in items
        ],
    )


def _counts(mapping: dict[str, Any]) -> str:
    return escape(", ".join(f"{k}: {v}" for k, v in sorted(mapping.items()))) or "-"


# ------------------------------------------------------------------ runtimes


@runtime_app.command("add")
def runtime_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Runtime name")],
    image: Annotated[str, typer.Option(help="Container image, e.g. pythonruntime")],
    run: Annotated[
        str, typer.Option(help="Command that starts a function, e.g. 'python3 -m fum main:handle'")
    ],
    path: Annotated[str, typer.Option(help="Folder of the function in the container")] = "/ws",
    deps: Annotated[
        str,
        typer.Option(
            "--deps",
            help="Command that installs a function's "
            "requirements, e.g. 'pip3 install -r requirements.txt'",
        ),
    ] = "",
    json_: JsonOpt = False,
) -> None:
    """Create or replace a runtime."""
    with errors():
        runtime = client(ctx).put_runtime(name, image, run, path=path, dependencies=deps)
    if json_:
        print_json(runtime.to_dict())
    else:
        image = escape(runtime.image)
        out().print(f"runtime [bold]{escape(runtime.name)}[/] saved (image {image})")


@runtime_app.command("ls")
def runtime_ls(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List runtimes."""
    with errors():
        items = client(ctx).list_runtimes()
    if json_:
        print_json([r.to_dict() for r in items])
        return
    table(
        ("name", "image", "path", "run", "dependencies"),
        [
            (escape(r.name), escape(r.image), escape(r.path), escape(r.run), escape(r.dependencies))
            for r in items
        ],
    )


@runtime_app.command("show")
def runtime_show(
    ctx: typer.Context, name: Annotated[str, typer.Argument()], json_: JsonOpt = False
) -> None:
    """Show one runtime."""
    with errors():
        r = client(ctx).get_runtime(name)
    if json_:
        print_json(r.to_dict())
        return
    _fields(r.to_dict())


@runtime_app.command("rm")
def runtime_rm(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Delete a runtime that no function uses."""
    with errors():
        client(ctx).delete_runtime(name)
    out().print(f"runtime {escape(name)} deleted")


def _fields(data: dict[str, Any]) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        out().print(f"[bold]{key:<{width}}[/]  {escape(str(shown))}")


# ------------------------------------------------------------------ functions


@fn_app.command("deploy")
def fn_deploy(
    ctx: typer.Context,
    source: Annotated[
        Path, typer.Argument(help="The function's folder (packed as tar.gz), or a .tar.gz/.zip")
    ],
    runtime: Annotated[
        str | None, typer.Option(help="Runtime to run it on (needed to create a function)")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Function name (default: the folder's name)")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds a call may run")] = None,
    memory: Annotated[int | None, typer.Option(help="Memory limit, MiB")] = None,
    cpus: Annotated[float | None, typer.Option(help="CPU limit")] = None,
    pids: Annotated[int | None, typer.Option(help="Process limit")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Most calls running at once in the cluster")
    ] = None,
    queue: Annotated[int | None, typer.Option(help="Most calls waiting beyond that")] = None,
    min_warm: Annotated[
        int | None, typer.Option(help="Sandboxes each node keeps set up for it")
    ] = None,
    max_containers: Annotated[
        int | None, typer.Option(help="Most sandboxes of it on one node")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Pack a folder and upload it as a function (create or replace)."""
    function_name = name or _name_of(source)
    with errors():
        package, filename = load_package(source)
        api = client(ctx)
        with Progress(
            TextColumn("uploading [bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err(),
            transient=True,
            disable=json_ or not sys.stderr.isatty(),
        ) as progress:
            task = progress.add_task(function_name, total=len(package))
            function = api.deploy_function(
                function_name,
                package,
                runtime=runtime,
                filename=filename,
                timeout=timeout,
                memory=memory,
                cpus=cpus,
                pids=pids,
                concurrency=concurrency,
                queue=queue,
                min_warm=min_warm,
                max_containers=max_containers,
                progress=lambda sent, total: progress.update(task, completed=sent, total=total),
            )
        function = _wait_for_build(api, function, quiet=json_)
    if json_:
        print_json(function.to_dict())
    else:
        out().print(
            f"function [bold]{escape(function.name)}[/] deployed on runtime "
            f"{escape(function.runtime)}: {function.size} bytes, sha256 {function.sha256[:12]}"
            + (f", build {function.build.status}" if function.build else "")
        )
    if function.build is not None and function.build.status == "failed":
        err().print(f"[bold red]the build failed[/]; its log:\n{escape(function.build.log)}")
        raise typer.Exit(1)


def _wait_for_build(api: Any, function: Any, quiet: bool) -> Any:
    """The function once its build (the runtime's dependencies command, run once on a
    node) is over, with a spinner meanwhile."""
    with Progress(
        SpinnerColumn(),
        TextColumn("building [bold]{task.description}[/] ({task.fields[waited]:.0f}s)"),
        console=err(),
        transient=True,
        disable=quiet or not sys.stderr.isatty(),
    ) as progress:
        task = progress.add_task(function.name, total=None, waited=0)
        started = time.monotonic()
        while function.build is not None and function.build.status == "building":
            function = api.get_function(function.name, wait=5)
            progress.update(task, waited=time.monotonic() - started)
    return function


def _name_of(source: Path) -> str:
    base = source.expanduser().resolve().name
    for suffix in (".tar.gz", ".tgz", ".zip", ".tar"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


@fn_app.command("ls")
def fn_ls(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List functions."""
    with errors():
        items = client(ctx).list_functions()
    if json_:
        print_json([f.to_dict() for f in items])
        return
    table(
        ("name", "runtime", "size", "sha256", "timeout", "updated"),
        [
            (
                escape(f.name),
                escape(f.runtime),
                f.size,
                f.sha256[:12],
                f.limits.get("timeout"),
                (f.updated_at or "")[:19].replace("T", " "),
            )
            for f in items
        ],
    )


@fn_app.command("show")
def fn_show(
    ctx: typer.Context, name: Annotated[str, typer.Argument()], json_: JsonOpt = False
) -> None:
    """Show one function: its runtime, package and limits."""
    with errors():
        f = client(ctx).get_function(name)
    if json_:
        print_json(f.to_dict())
        return
    _fields(f.to_dict())


@fn_app.command("rm")
def fn_rm(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Delete a function."""
    with errors():
        client(ctx).delete_function(name)
    out().print(f"function {escape(name)} deleted")


# ------------------------------------------------------------------ invoke and calls


def _stdin_is_data() -> bool:
    """Whether stdin is a pipe or a file (not a terminal, nor inherited /dev/null)."""
    import stat

    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return not sys.stdin.isatty()  # a replaced stdin (tests): read it unless a tty
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _decode(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"{what} is not valid JSON: {exc}") from None


def params_of(data: str | None, file: Path | None, pairs: list[str]) -> Any:
    """The params: a JSON string, a file (``-``: stdin), or piped stdin; then ``-p k=v``."""
    if data is not None and file is not None:
        raise fail("give the params as a JSON argument or with --file, not both")
    params: Any = None
    if data == "-" or (file is not None and str(file) == "-"):
        params = _decode(sys.stdin.read() or "{}", "stdin")
    elif data is not None:
        params = _decode(data, "the params argument")
    elif file is not None:
        try:
            params = _decode(file.read_text(), str(file))
        except OSError as exc:
            raise fail(f"cannot read {file}: {exc.strerror}") from None
    elif _stdin_is_data():
        text = sys.stdin.read()
        if text.strip():
            params = _decode(text, "stdin")
    if pairs:
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise fail("-p key=value adds to a JSON object, but the params are not one")
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            if not sep or not key:
                raise fail(f"-p wants key=value, got {pair!r}")
            try:
                params[key] = json.loads(raw)  # numbers, true/false, null, JSON values
            except json.JSONDecodeError:
                params[key] = raw  # anything else is a string
    return params


@app.command()
def invoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Function name")],
    data: Annotated[str | None, typer.Argument(help="Params as JSON ('-': read stdin)")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="key=value (repeatable; the value as JSON if it is)"),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Params from a JSON file ('-': stdin)")
    ] = None,
    async_: Annotated[
        bool, typer.Option("--async", help="Do not wait: print the call number")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the result")] = 300.0,
    json_: Annotated[bool, typer.Option("--json", help="Print the whole call as JSON")] = False,
) -> None:
    """Invoke a function and print its result (or, with --async, the call number).

    Params: a JSON argument, --file, or piped stdin, plus -p key=value pairs. A call that
    ends ERROR or TIMEOUT prints its error on stderr and exits with status 1."""
    params = params_of(data, file, param or [])
    api = client(ctx)
    with errors():
        if async_:
            call = api.invoke(name, params, blocking=False)
        else:
            call = api.run(name, params, timeout=timeout)
    if json_:
        print_json(call.to_dict())
    elif async_:
        typer.echo(call.call_num)
    elif call.status == "DONE":
        print_json(call.result)
    if not async_ and call.status != "DONE":
        first = (call.error or "").strip()
        raise fail(f"call {call.call_num} ({call.func_name}) ended {call.status}: {first}")


@app.command()
def calls(
    ctx: typer.Context,
    function: Annotated[
        str | None, typer.Option("--function", "-F", help="Only this function")
    ] = None,
    status: Annotated[str | None, typer.Option("--status", "-s", help="Only this status")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many (newest first)")] = 20,
    before: Annotated[int | None, typer.Option(help="Only calls numbered below")] = None,
    after: Annotated[int | None, typer.Option(help="Only calls numbered above")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only calls made at or after (ISO 8601 or epoch seconds)")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only calls made before (ISO 8601 or epoch seconds)")
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Then follow: print each new call as it ends")
    ] = False,
    interval: Annotated[float, typer.Option(help="--watch: seconds between looks")] = 1.0,
    json_: Annotated[
        bool, typer.Option("--json", help="JSON (with --watch: one call a line)")
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Also draw the calls listed: FILE_timeline.png and FILE_histogram.png",
        ),
    ] = None,
) -> None:
    """List calls, newest first; --watch then follows new calls until Ctrl-C."""
    if status is not None and status.upper() not in STATUSES:
        raise typer.BadParameter(f"one of {', '.join(STATUSES)}", param_hint="--status")
    status = status.upper() if status else None
    if not 1 <= limit <= 1000:
        raise typer.BadParameter("between 1 and 1000", param_hint="--limit")
    api = client(ctx)
    with errors():
        page = api.list_calls(
            function=function,
            status=status,
            limit=limit,
            before=before,
            after=after,
            since=since,
            until=until,
        )
    if plot is not None:
        from fum_client.plots import plot as draw

        with errors():
            for path in draw(page.items, plot, title=f"{len(page.items)} calls"):
                typer.echo(f"wrote {path}", err=True)
    if not watch:
        if json_:
            print_json({"items": [c.to_dict() for c in page.items], "next": page.next})
        else:
            table(CALL_COLUMNS, [call_row(c) for c in page.items])
        return
    shown = list(reversed(page.items))  # a feed reads oldest first
    for c in shown:
        _print_call_line(c, json_)
    cursor = max([c.call_num for c in page.items] + [after or 0])
    try:
        with errors():
            _follow(api, cursor, function, status, interval, json_)
    except KeyboardInterrupt:
        pass


def _follow(
    api: Client,
    cursor: int,
    function: str | None,
    status: str | None,
    interval: float,
    json_: bool,
) -> None:
    """Print each call numbered above ``cursor`` once it has ended, until interrupted."""
    pending: list[int] = []
    while True:
        fresh = []
        for call in api.iter_calls(function=function, after=cursor):
            fresh.append(call)
        for call in sorted(fresh, key=lambda c: c.call_num):
            cursor = max(cursor, call.call_num)
            if call.final:
                if status is None or call.status == status:
                    _print_call_line(call, json_)
            else:
                pending.append(call.call_num)
        if pending:
            result = api.wait_calls(pending[:1000], timeout=interval, return_when="FIRST_COMPLETED")
            for call in result.done:
                if status is None or call.status == status:
                    _print_call_line(call, json_)
            finished = {c.call_num for c in result.done}
            pending = [n for n in pending if n not in finished]
        else:
            time.sleep(interval)  # polling for new calls: the api has no push to clients


def _print_call_line(call: Call, json_: bool) -> None:
    if json_:
        typer.echo(json.dumps(call.to_dict(), ensure_ascii=False))
        sys.stdout.flush()
        return
    row = call_row(call)
    line = f"{row[0]:>6}  {row[1]}  {row[2]}  {ms(call.duration_ms)}  {row[7]}"
    out().print(line)
    sys.stdout.flush()


@app.command("call")
def call_show(
    ctx: typer.Context,
    call_num: Annotated[int, typer.Argument(help="Call number")],
    json_: JsonOpt = False,
) -> None:
    """Show one call: status, timings, result or error."""
    with errors():
        call = client(ctx).get_call(call_num)
    if json_:
        print_json(call.to_dict())
        return
    data = call.to_dict()
    data["status"] = call.status
    result, error = data.pop("result"), data.pop("error")
    width = max(len(k) for k in data)
    for key, value in data.items():
        if value is None:
            continue
        shown = (
            status_text(value)
            if key == "status"
            else escape(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        )
        out().print(f"[bold]{key:<{width}}[/]  {shown}")
    if call.status == "DONE":
        out().print("[bold]result[/]")
        out().print(escape(json.dumps(result, indent=2, ensure_ascii=False)))
    elif error:
        out().print("[bold red]error[/]")
        out().print(escape(error))


@app.command()
def logs(
    ctx: typer.Context,
    call_num: Annotated[int, typer.Argument(help="Call number")],
    json_: JsonOpt = False,
) -> None:
    """What the function printed during a call."""
    with errors():
        text = client(ctx).get_call_logs(call_num)
    if json_:
        print_json({"callNum": call_num, "logs": text})
    else:
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")


# ------------------------------------------------------------------ config


# ------------------------------------------------------------------ workflow apps


@app_app.command("deploy")
def app_deploy(
    ctx: typer.Context,
    source: Annotated[
        Path,
        typer.Argument(help="The app's folder (unum-template.yaml at its root), or a .tar.gz/.zip"),
    ],
    name: Annotated[str | None, typer.Option(help="App name (default: the folder's name)")] = None,
    json_: JsonOpt = False,
) -> None:
    """Deploy (or replace) an unum app: each function becomes <app>.<Function>."""
    app_name = name or _name_of(source)
    with errors():
        deployed = client(ctx).deploy_app(app_name, source)
    if json_:
        print_json(deployed.to_dict())
        return
    out().print(
        f"app [bold]{escape(deployed.name)}[/] deployed: start {escape(deployed.start)}, "
        f"functions {escape(', '.join(deployed.functions))}"
    )


@app_app.command("run")
def app_run(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="App name")],
    data: Annotated[
        str | None,
        typer.Argument(help="The event as JSON: {Data: {Source, Value}, Fan-out}, or a bare value"),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="The event from a JSON file ('-': stdin)")
    ] = None,
    async_: Annotated[
        bool, typer.Option("--async", help="Do not wait: print the session id")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the end")] = 300.0,
    json_: Annotated[bool, typer.Option("--json", help="Print the whole session as JSON")] = False,
) -> None:
    """Start a session and print its result (or, with --async, its id).

    A session that ends ERROR or CANCELLED prints its error on stderr and exits with 1."""
    event = params_of(data, file, [])
    api = client(ctx)
    with errors():
        session = api.start_session(name, event, blocking=not async_, timeout=timeout)
        deadline = time.monotonic() + timeout
        while not async_ and not session.final and time.monotonic() < deadline:
            time.sleep(0.2)
            session = api.get_session(name, session.id)
    if json_:
        print_json(session.to_dict())
    elif async_:
        typer.echo(session.id)
    elif session.status == "DONE":
        print_json(session.result)
    if not async_ and session.status != "DONE":
        why = session.error or f"still {session.status} after {timeout:g} s"
        raise fail(f"session {session.id} of {name} ended {session.status}: {why}")


@app_app.command("sessions")
def app_sessions(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="App name")],
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 20,
    json_: JsonOpt = False,
) -> None:
    """List an app's sessions, newest first."""
    with errors():
        sessions = client(ctx).list_sessions(name, limit)
    if json_:
        print_json([s.to_dict() for s in sessions])
        return
    table(
        ("id", "status", "created", "duration", "result / error"),
        [
            (
                s.id,
                status_text(s.status),
                (s.created_at or "")[:19].replace("T", " "),
                ms(s.duration_ms),
                escape(short_json(s.result) if s.status == "DONE" else s.error or ""),
            )
            for s in sessions
        ],
    )


def session_tree(session: Session, shown: int = 10) -> Tree:
    """The session and its instances, by function in the order they were first made."""
    result = short_json(session.result) if session.status == "DONE" else session.error or ""
    tree = Tree(
        f"session [bold]{session.id}[/] {escape(session.app)} {status_text(session.status)} "
        f"{ms(session.duration_ms)} {escape(result)}"
    )
    groups: dict[str, list[SessionInstance]] = {}
    for instance in session.instances or []:
        groups.setdefault(instance.name.split("-unumIndex-")[0], []).append(instance)
    for function, instances in groups.items():
        counts = Counter(i.status for i in instances)
        summary = ", ".join(f"{n} {status_text(s)}" for s, n in sorted(counts.items()))
        branch = tree.add(f"[bold]{escape(function)}[/]: {len(instances)} instances ({summary})")
        for instance in instances[:shown]:
            value = instance.error if instance.status != "DONE" else short_json(instance.result)
            end = " (ends)" if instance.ends else ""
            branch.add(
                f"{escape(instance.name)} #{instance.call_num} {status_text(instance.status)} "
                f"{escape(value or '')}{end}"
            )
        if len(instances) > shown:
            branch.add(f"… {len(instances) - shown} more")
    return tree


@app_app.command("session")
def app_session(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument(metavar="ID", help="Session id")],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Follow it until it ends")] = False,
    json_: JsonOpt = False,
) -> None:
    """Show a session: its status, result, and a tree of its instances."""
    api = client(ctx)
    with errors():
        session = api.get_session(None, session_id)
        if json_:
            print_json(session.to_dict())
            return
        if not watch:
            out().print(session_tree(session))
            return
        with Live(session_tree(session), console=out(), refresh_per_second=4) as live:
            while not session.final:
                time.sleep(0.25)
                session = api.get_session(None, session_id)
                live.update(session_tree(session))


@config_app.command("show")
def config_show(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """The api address and key in force, and where each comes from."""
    settings = opts(ctx).settings()
    key = settings.api_key
    shown_key = None if key is None else (key[:4] + "…" if len(key) > 8 else "…")
    report = {
        "apiUrl": settings.api_url,
        "apiKey": shown_key,
        "profile": settings.profile,
        "configFile": str(settings.config_file),
        "sources": dict(settings.sources),
    }
    if json_:
        print_json(report)
        return
    out().print(f"api url   {escape(settings.api_url)}  ({settings.sources['api_url']})")
    out().print(f"api key   {escape(shown_key or '-')}  ({settings.sources['api_key']})")
    out().print(f"profile   {escape(settings.profile)}  (file {escape(str(settings.config_file))})")


@config_app.command("set")
def config_set(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="api_url or api_key")],
    value: Annotated[str, typer.Argument()],
) -> None:
    """Set a setting of the profile (--profile, default `default`) in the profile file."""
    profile = opts(ctx).profile or "default"
    with errors():
        path = config_path()
        write_setting(path, profile, key, value)
    out().print(f"{key} set in [{escape(profile)}] of {escape(str(path))}")


@config_app.command("unset")
def config_unset(
    ctx: typer.Context, key: Annotated[str, typer.Argument(help="api_url or api_key")]
) -> None:
    """Remove a setting from the profile in the profile file."""
    profile = opts(ctx).profile or "default"
    with errors():
        path = config_path()
        write_setting(path, profile, key, None)
    out().print(f"{key} removed from [{escape(profile)}] of {escape(str(path))}")
