"""The ``fum`` CLI against a real local cluster: through typer's runner and as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from fum_cli.local import LocalCluster, free_port
from fum_cli.main import app
from fum_client import Client

from .support import remove_function_containers

FUM = Path(sys.executable).parent / "fum"
HANDLER_RUN = "python3 -m fum main:handle"
ECHO = "def handle(params):\n    return params\n"
FAIL = "def handle(params):\n    raise ValueError('boom: ' + str(params.get('why')))\n"
CHATTY = (
    "import sys\n\ndef handle(params):\n"
    "    print('out:', params['n'], flush=True)\n"
    "    print('err:', params['n'], file=sys.stderr, flush=True)\n"
    "    return params['n']\n"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("cli"), port=0).start(timeout=60)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def env(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of every command: the cluster's address, an empty profile file."""
    config = tmp_path_factory.mktemp("config") / "config.toml"
    return {"FUM_API_URL": cluster.url, "FUM_CONFIG": str(config), "FUM_API_KEY": ""}


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folders of handler functions: echo/, fail/, chatty/."""
    root = tmp_path_factory.mktemp("functions")
    for name, source in (("echo", ECHO), ("fail", FAIL), ("chatty", CHATTY)):
        (root / name).mkdir()
        (root / name / "main.py").write_text(source)
    return root


def fum(env: dict[str, str], *args: str, input: str | None = None) -> Result:
    """Run ``fum ARGS`` in-process (typer's runner)."""
    return CliRunner().invoke(app, list(args), env=env, input=input)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result


def as_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


@pytest.fixture(scope="module")
def deployed(env: dict[str, str], functions: Path) -> dict[str, str]:
    ok(fum(env, "runtime", "add", "handlers", "--image", "pythonruntime", "--run", HANDLER_RUN))
    for name in ("echo", "fail", "chatty"):
        ok(fum(env, "fn", "deploy", str(functions / name), "--runtime", "handlers"))
    return env


def run_fum(
    env: dict[str, str], *args: str, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``.venv/bin/fum ARGS`` as a real process."""
    return subprocess.run(
        [str(FUM), *args],
        env={**os.environ, **env},
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ---- runtimes and functions


def test_runtime_add_ls_show_rm(env: dict[str, str]) -> None:
    added = as_json(
        fum(
            env,
            "runtime",
            "add",
            "rt-cli",
            "--image",
            "pythonruntime",
            "--run",
            HANDLER_RUN,
            "--deps",
            "true",
            "--json",
        )
    )
    assert added["name"] == "rt-cli" and added["dependencies"] == "true"
    assert "rt-cli" in [r["name"] for r in as_json(fum(env, "runtime", "ls", "--json"))]
    assert as_json(fum(env, "runtime", "show", "rt-cli", "--json"))["run"] == HANDLER_RUN
    table = ok(fum(env, "runtime", "ls")).stdout
    assert "rt-cli" in table and "pythonruntime" in table
    ok(fum(env, "runtime", "rm", "rt-cli"))
    gone = fum(env, "runtime", "show", "rt-cli")
    assert gone.exit_code == 1
    assert "no runtime 'rt-cli'" in gone.stderr


def test_fn_deploy_ls_show_rm(deployed: dict[str, str], functions: Path, tmp_path: Path) -> None:
    env = deployed
    listed = {f["name"]: f for f in as_json(fum(env, "fn", "ls", "--json"))}
    assert {"echo", "fail", "chatty"} <= set(listed)
    assert listed["echo"]["runtime"] == "handlers"
    # a zip file uploads as is, under --name, with limits
    archive = tmp_path / "pkg.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("main.py", ECHO)
    shown = as_json(
        fum(
            env,
            "fn",
            "deploy",
            str(archive),
            "--runtime",
            "handlers",
            "--name",
            "zipped",
            "--timeout",
            "9",
            "--json",
        )
    )
    assert shown["filename"] == "pkg.zip" and shown["limits"]["timeout"] == 9
    assert as_json(fum(env, "fn", "show", "zipped", "--json"))["sha256"] == shown["sha256"]
    assert "zipped" in ok(fum(env, "fn", "show", "zipped")).stdout
    assert "deployed" in ok(fum(env, "fn", "deploy", str(functions / "echo"))).stdout  # replace
    ok(fum(env, "fn", "rm", "zipped"))
    assert fum(env, "fn", "show", "zipped").exit_code == 1
    missing = fum(env, "fn", "deploy", str(tmp_path / "nothing"), "--runtime", "handlers")
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    no_runtime = fum(env, "fn", "deploy", str(functions / "echo"), "--name", "orphan")
    assert no_runtime.exit_code == 1 and "runtime" in no_runtime.stderr


# ---- invoking


def test_invoke_params_from_pairs_json_file_and_stdin(
    deployed: dict[str, str], tmp_path: Path
) -> None:
    env = deployed
    assert as_json(fum(env, "invoke", "echo", "-p", "name=Ada", "-p", "n=3")) == {
        "name": "Ada",
        "n": 3,
    }
    assert as_json(fum(env, "invoke", "echo", '{"a": [1, 2]}', "-p", "b=true")) == {
        "a": [1, 2],
        "b": True,
    }
    params = tmp_path / "params.json"
    params.write_text('{"from": "file"}')
    assert as_json(fum(env, "invoke", "echo", "--file", str(params))) == {"from": "file"}
    assert as_json(fum(env, "invoke", "echo", input='{"from": "stdin"}')) == {"from": "stdin"}
    assert as_json(fum(env, "invoke", "echo", "-", input="[1, 2]")) == [1, 2]
    assert as_json(fum(env, "invoke", "echo")) == {}


def test_invoke_async_then_call_and_logs(deployed: dict[str, str]) -> None:
    env = deployed
    num = int(ok(fum(env, "invoke", "chatty", "-p", "n=5", "--async")).stdout)
    with Client(env["FUM_API_URL"]) as c:
        c.wait_call(num, timeout=60)
    call = as_json(fum(env, "call", str(num), "--json"))
    assert call["callNum"] == num and call["status"] == "DONE" and call["result"] == 5
    shown = ok(fum(env, "call", str(num))).stdout
    assert "DONE" in shown and "chatty" in shown
    logs = ok(fum(env, "logs", str(num))).stdout
    assert "out: 5" in logs and "err: 5" in logs
    assert as_json(fum(env, "logs", str(num), "--json"))["callNum"] == num
    whole = as_json(fum(env, "invoke", "echo", "-p", "x=1", "--json"))
    assert whole["status"] == "DONE" and whole["result"] == {"x": 1}


def test_invoke_errors_exit_non_zero(deployed: dict[str, str]) -> None:
    env = deployed
    failed = fum(env, "invoke", "fail", "-p", "why=testing")
    assert failed.exit_code == 1
    assert "ended ERROR" in failed.stderr and "ValueError: boom: testing" in failed.stderr
    unknown = fum(env, "invoke", "no-such-fn")
    assert unknown.exit_code == 1 and "no function 'no-such-fn'" in unknown.stderr
    bad_json = fum(env, "invoke", "echo", "{nope")
    assert bad_json.exit_code == 1 and "not valid JSON" in bad_json.stderr
    bad_pair = fum(env, "invoke", "echo", "-p", "novalue")
    assert bad_pair.exit_code == 1 and "key=value" in bad_pair.stderr
    not_object = fum(env, "invoke", "echo", "[1]", "-p", "a=1")
    assert not_object.exit_code == 1 and "not" in not_object.stderr
    assert fum(env, "call", "999999").exit_code == 1


def test_unreachable_api_is_a_clear_error(env: dict[str, str]) -> None:
    dead = {**env, "FUM_API_URL": f"http://127.0.0.1:{free_port()}"}
    for args in (("nodes",), ("fn", "ls"), ("calls",), ("invoke", "echo")):
        result = fum(dead, *args)
        assert result.exit_code == 1, args
        assert "cannot reach the fum api" in result.stderr and "connection refused" in result.stderr
    bad_url = fum({**env, "FUM_API_URL": "localhost:3000"}, "nodes")
    assert bad_url.exit_code == 1 and "must look like" in bad_url.stderr


# ---- listings


def test_calls_filters_and_json(deployed: dict[str, str]) -> None:
    env = deployed
    ok(fum(env, "invoke", "echo", "-p", "i=1"))
    assert fum(env, "invoke", "fail").exit_code == 1
    echo_calls = as_json(fum(env, "calls", "--function", "echo", "--json"))["items"]
    assert echo_calls and {c["funcName"] for c in echo_calls} == {"echo"}
    errors = as_json(fum(env, "calls", "--status", "error", "--json"))["items"]
    assert errors and {c["status"] for c in errors} == {"ERROR"}
    limited = as_json(fum(env, "calls", "-n", "1", "--json"))
    assert len(limited["items"]) == 1 and limited["next"]
    before = limited["items"][0]["callNum"]
    older = as_json(fum(env, "calls", "--before", str(before), "--json"))["items"]
    assert older and all(c["callNum"] < before for c in older)
    text = ok(fum(env, "calls", "--function", "echo")).stdout
    assert "echo" in text and "DONE" in text
    assert fum(env, "calls", "--status", "WRONG").exit_code == 2


def test_nodes(env: dict[str, str]) -> None:
    nodes = as_json(fum(env, "nodes", "--json"))
    assert len(nodes) == 1 and nodes[0]["nodeId"] == 0 and nodes[0]["driver"] == "process"
    assert "process" in ok(fum(env, "nodes")).stdout


def test_config_profile_and_precedence(env: dict[str, str], cluster: LocalCluster) -> None:
    no_env = {**env, "FUM_API_URL": ""}
    ok(fum(no_env, "config", "set", "api_url", cluster.url))
    ok(fum(no_env, "config", "set", "api_key", "abcdefghijkl"))
    shown = as_json(fum(no_env, "config", "show", "--json"))
    assert shown["apiUrl"] == cluster.url and shown["sources"]["api_url"] == "profile [default]"
    assert shown["apiKey"] == "abcd…"  # never printed whole
    assert as_json(fum(no_env, "nodes", "--json"))  # the profile's address is used
    over = as_json(fum(env, "--api-url", "http://elsewhere:1", "config", "show", "--json"))
    assert over["apiUrl"] == "http://elsewhere:1" and over["sources"]["api_url"] == "argument"
    assert as_json(fum(env, "config", "show", "--json"))["sources"]["api_url"] == "environment"
    ok(fum(no_env, "config", "unset", "api_key"))
    assert as_json(fum(no_env, "config", "show", "--json"))["apiKey"] is None
    missing = fum(env, "--profile", "nope", "nodes")
    assert missing.exit_code == 1 and "no profile 'nope'" in missing.stderr


# ---- as real processes


def test_real_process_invoke_and_errors(deployed: dict[str, str]) -> None:
    env = deployed
    done = run_fum(env, "invoke", "echo", "-p", "via=process")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"via": "process"}
    piped = run_fum(env, "invoke", "echo", input='{"piped": 1}')
    assert json.loads(piped.stdout) == {"piped": 1}
    num = run_fum(env, "invoke", "echo", "--async").stdout.strip()
    assert num.isdigit()
    failed = run_fum(env, "invoke", "fail")
    assert failed.returncode == 1 and "boom" in failed.stderr and failed.stdout == ""
    listed = run_fum(env, "fn", "ls", "--json")
    assert "echo" in [f["name"] for f in json.loads(listed.stdout)]
    dead = run_fum({**env, "FUM_API_URL": f"http://127.0.0.1:{free_port()}"}, "nodes")
    assert dead.returncode == 1 and "cannot reach the fum api" in dead.stderr
    assert "Traceback" not in dead.stderr


def test_real_process_calls_watch(deployed: dict[str, str]) -> None:
    """``fum calls --watch --json`` prints each new call once it has ended."""
    env = deployed
    with Client(env["FUM_API_URL"]) as c:
        c.run("echo", {"before": "watching"})  # the watch starts by printing the newest
    watcher = subprocess.Popen(
        [
            str(FUM),
            "calls",
            "--watch",
            "--json",
            "--function",
            "echo",
            "-n",
            "1",
            "--interval",
            "0.2",
        ],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[dict[str, Any]] = []
    assert watcher.stdout is not None and watcher.stderr is not None
    stdout = watcher.stdout

    def read() -> None:
        for line in stdout:
            lines.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        with Client(env["FUM_API_URL"]) as c:
            deadline = time.monotonic() + 30
            while not lines:  # the watch printed the newest existing call: it is following
                assert time.monotonic() < deadline, "fum calls --watch printed nothing"
                time.sleep(0.05)
            new = [c.invoke("echo", {"watched": i}, blocking=False).call_num for i in range(3)]
            c.invoke("chatty", {"n": 1})  # another function: filtered out
        deadline = time.monotonic() + 60
        while not set(new) <= {line["callNum"] for line in lines}:
            assert watcher.poll() is None, watcher.stderr.read()
            assert time.monotonic() < deadline, f"saw {lines}, wanted {new}"
            time.sleep(0.05)
        watched = [line for line in lines if line["callNum"] in new]
        assert [line["status"] for line in watched] == ["DONE"] * 3
        assert {line["funcName"] for line in lines} == {"echo"}
    finally:
        watcher.terminate()
        watcher.wait(10)
        reader.join(10)
        watcher.stdout.close()
        watcher.stderr.close()


def test_real_process_up_status_down(tmp_path: Path) -> None:
    """``fum up --detach`` runs a cluster in the background; status sees it; down ends it."""
    data = tmp_path / "data"
    env = {"FUM_CONFIG": str(tmp_path / "config.toml")}
    up = run_fum(env, "up", "--detach", "--port", "0", "--data", str(data))
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((data / "fum-up.json").read_text())
    try:
        assert state["url"] in up.stdout
        status = run_fum(env, "status", "--data", str(data), "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["up"] and report["local"]["pid"] == state["pid"]
        assert len(report["nodes"]) == 1
        nodes = run_fum(env, "--api-url", state["url"], "nodes", "--json")
        assert json.loads(nodes.stdout)[0]["nodeId"] == 0
        again = run_fum(env, "up", "--detach", "--port", "0", "--data", str(data))
        assert again.returncode == 1 and "already up" in again.stderr
        down = run_fum(env, "down", "--data", str(data))
        assert down.returncode == 0 and "fum is down" in down.stdout, down.stderr
        assert not (data / "fum-up.json").exists()
        for pid in [state["pid"], *state["services"].values()]:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"pid {pid} still runs"
        after = run_fum(env, "status", "--data", str(data), "--api-url", state["url"])
        assert after.returncode == 1 and "no local cluster" in after.stdout
        assert "not running" in run_fum(env, "down", "--data", str(data)).stdout
    finally:  # whatever a failure left running: only processes of this cluster
        for pid in [state["pid"], *state["services"].values()]:
            if _mentions(pid, str(data)):
                os.kill(pid, 9)


def _mentions(pid: int, text: str) -> bool:
    try:
        proc = Path(f"/proc/{pid}")
        return text.encode() in (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
    except OSError:
        return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.mark.docker
def test_up_status_down_with_docker(images: None, tmp_path: Path) -> None:
    """``fum up --docker`` brings up the compose cluster; callables run in the runtime image."""
    from fum_client import FunctionExecutor

    project = f"fumcli{os.getpid()}"
    port = free_port()
    env = {
        "FUM_CONFIG": str(tmp_path / "config.toml"),
        "FUM_REGISTRY_PORT": str(free_port()),
        "FUM_KEEPER_PORT": str(free_port()),  # not the host's 2181, which another may hold
        "FUM_NODES_DIR": str(tmp_path / "nodes"),
        "FUM_NETWORK": project,
    }
    url = f"http://127.0.0.1:{port}"
    try:
        up = run_fum(
            env,
            "up",
            "--docker",
            "--no-build",
            "--project",
            project,
            "--port",
            str(port),
            timeout=600,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        assert url in up.stdout
        status = run_fum(env, "status", "--docker", "--project", project, "--api-url", url)
        assert status.returncode == 0 and "worker0" in status.stdout, status.stdout
        with FunctionExecutor(url) as fexec:
            futures = fexec.map(lambda x: x * 2, range(6))
            assert fexec.get_result(futures, timeout=300) == [0, 2, 4, 6, 8, 10]
        down = run_fum(env, "down", "--docker", "--project", project, "--volumes", timeout=300)
        assert down.returncode == 0, down.stderr
        after = run_fum(env, "status", "--docker", "--project", project, "--api-url", url)
        assert after.returncode == 1
    finally:
        run_fum(env, "down", "--docker", "--project", project, "--volumes", timeout=300)
        remove_function_containers(project)
        subprocess.run(["docker", "network", "rm", project], capture_output=True, check=False)
