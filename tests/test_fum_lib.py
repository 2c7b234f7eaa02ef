"""The container library fum: example functions run as real processes; the test is the host."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from fum.session import Session, error_report, tcp_address
from fum.stem import READY as STEM_READY

from services.miniworker.docker_driver import stem_argv

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
NODE_ID = "3"
DEADLINE_S = 15.0  # generous for a cold interpreter start on a slow CI machine
# The interpreter of the function processes: set FUM_TEST_PYTHON to check another one
# (the library must work on Python 3.9 with only pyzmq installed).
FUNCTION_PYTHON = os.environ.get("FUM_TEST_PYTHON") or sys.executable


def free_port() -> int:
    """Return a loopback tcp port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Host:
    """The host side of FUM, as a miniworker speaks it: PULL for oks, REQ for call UUIDs."""

    def __init__(self, workdir: Path) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.pull = self.context.socket(zmq.PULL)
        self.host_port = self.pull.bind_to_random_port("tcp://127.0.0.1")
        self.node_port = free_port()
        self.req: zmq.Socket[bytes] | None = None
        self.input_dir = workdir / "input"
        self.output_dir = workdir / "output"
        self.input_dir.mkdir()
        self.output_dir.mkdir()

    def environ(self, node_ip: str = "127.0.0.1") -> dict[str, str]:
        """Return the environment a container of this host is started with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FUM_")}
        env.update(
            FUM_NODE_ID=NODE_ID,
            FUM_NODE_IP=node_ip,
            FUM_NODE_PORT=str(self.node_port),
            FUM_HOST_IP="127.0.0.1",
            FUM_HOST_PORT=str(self.host_port),
            input_dir=str(self.input_dir),
            output_dir=str(self.output_dir),
            PYTHONUNBUFFERED="1",
            # the library from this checkout, whichever interpreter runs the function
            PYTHONPATH=os.pathsep.join(
                [str(REPO / "libs" / "fum"), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        )
        return env

    def receive_ok(self, timeout: float = DEADLINE_S) -> list[bytes]:
        """Return the next frames on PULL, failing the test after timeout seconds."""
        if not self.pull.poll(int(timeout * 1000)):
            raise AssertionError(f"no ok from the container within {timeout}s")
        return self.pull.recv_multipart()

    def send_call(self, params: Any) -> bytes:
        """Write params.json, send a fresh UUID to the container, check its ok; return the UUID."""
        for folder in (self.input_dir, self.output_dir):
            for path in folder.iterdir():
                path.unlink()
        (self.input_dir / "params.json").write_text(json.dumps(params))
        if self.req is None:
            self.req = self.context.socket(zmq.REQ)
            self.req.connect(tcp_address("127.0.0.1", self.node_port))
        call_uuid = str(uuid.uuid4()).encode("ascii")
        self.req.send(call_uuid)
        if not self.req.poll(int(DEADLINE_S * 1000)):
            raise AssertionError("the container did not answer the UUID")
        assert self.req.recv_multipart() == [b"ok"]
        return call_uuid

    def result(self) -> Any:
        """Return the decoded result.json of the last call."""
        return json.loads((self.output_dir / "result.json").read_text())

    def close(self) -> None:
        """Close the sockets without waiting."""
        self.context.destroy(linger=0)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    """A host with its PULL bound and fresh input/output folders."""
    fum_host = Host(tmp_path)
    yield fum_host
    fum_host.close()


@pytest.fixture
def start(tmp_path: Path, host: Host) -> Iterator[Any]:
    """Start a copy of an example folder as a container process; always killed at the end."""
    processes: list[subprocess.Popen[bytes]] = []

    def start_function(
        source: str | Path,
        *argv: str,
        node_ip: str = "127.0.0.1",
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        workdir = tmp_path / "function"
        shutil.copytree(EXAMPLES / source if isinstance(source, str) else source, workdir)
        with (tmp_path / "function.log").open("wb") as log:
            process = subprocess.Popen(
                [FUNCTION_PYTHON, *argv],
                cwd=workdir,
                env={**host.environ(node_ip), **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        processes.append(process)
        return process

    yield start_function
    for process in processes:
        process.kill()
        process.wait(timeout=DEADLINE_S)


def function_log(tmp_path: Path) -> str:
    """Return what the function process printed."""
    return (tmp_path / "function.log").read_text(errors="replace")


def assert_setup_ok(host: Host, inline: bool = False) -> None:
    """The first message is the setup ok: a bare ok frame first, then node id and empty UUID
    (and, from a handler, no error and the inline offer)."""
    frames = host.receive_ok()
    assert frames[0] == b"ok"
    assert frames == [b"ok", NODE_ID.encode(), b""] + ([b"", b"inline"] if inline else [])


# -- the loop style: examples/dice/test.py -------------------------------------------------


def test_dice_speaks_fum(host: Host, start: Any) -> None:
    """Setup ok, then each UUID is answered ok, worked on and reported done with that UUID."""
    start("dice", "test.py")
    assert_setup_ok(host)

    for roll, count, faces in (("4d6", 4, 6), ("2d20", 2, 20)):
        call_uuid = host.send_call({"roll": roll})
        assert host.receive_ok() == [b"ok", NODE_ID.encode(), call_uuid]
        dice = host.result()
        assert isinstance(dice, list) and len(dice) == count
        assert all(isinstance(die, int) and 1 <= die <= faces for die in dice)


def test_dice_bad_roll_is_a_call_error_and_the_next_call_works(host: Host, start: Any) -> None:
    """fum.fail() sends an error frame with the done ok; the container stays warm."""
    start("dice", "test.py")
    assert_setup_ok(host)

    bad_uuid = host.send_call({"roll": "lots"})
    ok, node_id, done_uuid, report = host.receive_ok()
    assert (ok, node_id, done_uuid) == (b"ok", NODE_ID.encode(), bad_uuid)
    error = json.loads(report)
    assert error["type"] == "ValueError"
    assert "4d6" in error["message"]
    assert not (host.output_dir / "result.json").exists()

    good_uuid = host.send_call({"roll": "4d6"})
    assert host.receive_ok() == [b"ok", NODE_ID.encode(), good_uuid]
    assert len(host.result()) == 4


def test_rep_binds_all_interfaces_when_node_ip_is_a_hostname(
    host: Host, start: Any, tmp_path: Path
) -> None:
    """A FUM_NODE_IP that bind() cannot use (a hostname) falls back to tcp://*:port."""
    start("dice", "test.py", node_ip="fum-node.invalid")
    assert_setup_ok(host)
    call_uuid = host.send_call({"roll": "4d6"})
    assert host.receive_ok() == [b"ok", NODE_ID.encode(), call_uuid], function_log(tmp_path)


def test_malformed_request_is_refused_not_taken_as_a_call(host: Host, start: Any) -> None:
    """A multi-frame request gets an error reply, and the next real UUID is served."""
    start("dice", "test.py")
    assert_setup_ok(host)
    req = host.context.socket(zmq.REQ)
    req.connect(tcp_address("127.0.0.1", host.node_port))
    req.send_multipart([b"not", b"a uuid"])
    assert req.poll(int(DEADLINE_S * 1000))
    assert req.recv_multipart() == [b"error"]
    req.close(linger=0)

    call_uuid = host.send_call({"roll": "4d6"})
    assert host.receive_ok() == [b"ok", NODE_ID.encode(), call_uuid]


# -- handler mode: python -m fum module:function ------------------------------------------


def test_handler_mode_results_errors_and_current_uuid(host: Host, start: Any) -> None:
    """Handler return values become results, exceptions error frames; the loop goes on."""
    start("hello-handler", "-m", "fum", "main:handle")
    assert_setup_ok(host, inline=True)

    first = host.send_call({"name": "Ada"})
    assert host.receive_ok() == [b"ok", NODE_ID.encode(), first]
    assert host.result() == {"greeting": "hello Ada", "call": first.decode()}

    failing = host.send_call({"name": 42})
    frames = host.receive_ok()
    assert frames[:3] == [b"ok", NODE_ID.encode(), failing]
    assert len(frames) == 4
    error = json.loads(frames[3])
    assert error["type"] == "ValueError"
    assert "42" in error["message"]
    assert "Traceback" in error["traceback"] and "main.py" in error["traceback"]

    after = host.send_call({})
    assert host.receive_ok() == [b"ok", NODE_ID.encode(), after]  # the error was cleared
    assert host.result() == {"greeting": "hello world", "call": after.decode()}


def test_handler_mode_takes_calls_inline(host: Host, start: Any) -> None:
    """A call sent as UUID and params frames is answered by its report, result included,
    no files; a failing one by an error frame and no result; a UUID alone still goes
    through the files and the PUSH socket."""
    start("hello-handler", "-m", "fum", "main:handle")
    assert_setup_ok(host, inline=True)
    assert host.req is None
    host.req = host.context.socket(zmq.REQ)
    host.req.connect(tcp_address("127.0.0.1", host.node_port))
    for params, fails in ((b'{"name": "Ada"}', False), (b'{"name": 42}', True)):
        call_uuid = str(uuid.uuid4()).encode()
        host.req.send_multipart([call_uuid, params])
        assert host.req.poll(int(DEADLINE_S * 1000))
        frames = host.req.recv_multipart()
        assert frames[:3] == [b"ok", NODE_ID.encode(), call_uuid]
        if fails:
            assert len(frames) == 4 and json.loads(frames[3])["type"] == "ValueError"
        else:
            assert frames[3] == b"" and json.loads(frames[4])["greeting"] == "hello Ada"
        assert not list(host.output_dir.iterdir())
        assert not host.pull.poll(0)
    call_uuid = host.send_call({"name": "Bo"})  # the file way
    assert host.receive_ok() == [b"ok", NODE_ID.encode(), call_uuid]
    assert host.result()["greeting"] == "hello Bo"


def test_handler_mode_takes_a_batch_and_reports_each_call(
    host: Host, start: Any, tmp_path: Path
) -> None:
    """Several calls in one request: a bare ok answers it, then each call's report comes
    by PUSH, in order, with where the output log stood when the call ended, so each call's
    output can be told apart (the failing one's traceback lies between its neighbours')."""
    start("hello-handler", "-m", "fum", "main:handle")
    assert_setup_ok(host, inline=True)
    host.req = host.context.socket(zmq.REQ)
    host.req.connect(tcp_address("127.0.0.1", host.node_port))
    calls = [
        (str(uuid.uuid4()).encode(), params)
        for params in (b'{"name": "Ada"}', b'{"name": 42}', b"{}")
    ]
    host.req.send_multipart([frame for call in calls for frame in call])
    assert host.req.poll(int(DEADLINE_S * 1000))
    assert host.req.recv_multipart() == [b"ok"]
    reports = [host.receive_ok() for _ in calls]
    assert [r[:3] for r in reports] == [[b"ok", NODE_ID.encode(), u] for u, _ in calls]
    assert all(len(r) == 6 for r in reports)
    assert json.loads(reports[0][4])["greeting"] == "hello Ada" and reports[0][3] == b""
    assert json.loads(reports[1][3])["type"] == "ValueError" and reports[1][4] == b""
    assert json.loads(reports[2][4])["greeting"] == "hello world"
    ends = [int(r[5]) for r in reports]
    log = (tmp_path / "function.log").read_bytes()
    assert b"ValueError" not in log[: ends[0]]
    assert b"ValueError" in log[ends[0] : ends[1]]
    assert ends[1] == ends[2]  # the last call printed nothing
    # the REP socket is free again: the next request, a single inline call, works
    single = str(uuid.uuid4()).encode()
    host.req.send_multipart([single, b'{"name": "Cy"}'])
    assert host.req.poll(int(DEADLINE_S * 1000))
    assert json.loads(host.req.recv_multipart()[4])["greeting"] == "hello Cy"


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (("-m", "fum"), {}),  # default main:handle
        (("-m", "fum"), {"FUM_HANDLER": "main:handle"}),
        (("-m", "fum", "main"), {"FUM_HANDLER": "nowhere:nothing"}),  # argument wins
    ],
)
def test_handler_spec_defaults(
    host: Host, start: Any, argv: tuple[str, ...], env: dict[str, str]
) -> None:
    """The handler is the argument, else $FUM_HANDLER, else main:handle."""
    start("hello-handler", *argv, env=env)
    assert_setup_ok(host, inline=True)
    call_uuid = host.send_call({"name": "Bo"})
    assert host.receive_ok() == [b"ok", NODE_ID.encode(), call_uuid]
    assert host.result()["greeting"] == "hello Bo"


# -- the stem: python -m fum.stem, started before its function is known ---------------------


@pytest.mark.parametrize(
    ("example", "argv"), [("dice", ["test.py"]), ("hello-handler", ["-m", "fum", "main:handle"])]
)
def test_stem_becomes_the_run_command(
    tmp_path: Path, host: Host, example: str, argv: list[str]
) -> None:
    """Started with no FUM environment and no code, told the run command later: it serves
    calls exactly as ``python3 <argv>`` started afterwards would."""
    workdir = tmp_path / "function"
    workdir.mkdir()
    env = host.environ()
    fum_env = {k: env.pop(k) for k in list(env) if k.startswith("FUM_")}
    with subprocess.Popen(
        [FUNCTION_PYTHON, "-m", "fum.stem"],
        cwd=workdir,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as stem:
        try:
            _serve_through(stem, host, workdir, example, argv, fum_env)
        finally:
            stem.kill()


def _serve_through(
    stem: subprocess.Popen[bytes],
    host: Host,
    workdir: Path,
    example: str,
    argv: list[str],
    fum_env: dict[str, str],
) -> None:
    """The ready mark, then the code arrives, then the order: setup ok and one call."""
    assert stem.stdout is not None and stem.stdin is not None
    assert stem.stdout.read(len(STEM_READY)) == STEM_READY
    shutil.copytree(EXAMPLES / example, workdir, dirs_exist_ok=True)  # the code comes late
    stem.stdin.write(json.dumps({"argv": argv, "env": fum_env}).encode() + b"\n")
    stem.stdin.flush()
    assert_setup_ok(host, inline=example == "hello-handler")
    call_uuid = host.send_call({"roll": "3d6", "name": "Cy"})
    assert host.receive_ok() == [b"ok", NODE_ID.encode(), call_uuid]
    if example == "dice":
        assert len(host.result()) == 3
    else:
        assert host.result()["greeting"] == "hello Cy"


def test_stem_writes_to_the_log_it_is_given(tmp_path: Path) -> None:
    """With ``log`` in the order, the function's stdout and stderr go to that file."""
    (tmp_path / "say.py").write_text(
        "import sys\nprint('out', sys.argv[1:])\nprint('err', file=sys.stderr)\n"
    )
    log = tmp_path / "run.log"
    order = {"argv": ["say.py", "x"], "env": {}, "log": str(log)}
    done = subprocess.run(
        [FUNCTION_PYTHON, "-m", "fum.stem"],
        input=json.dumps(order).encode() + b"\n",
        cwd=tmp_path,
        capture_output=True,
        timeout=DEADLINE_S,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, STEM_READY, b"")
    assert log.read_text() == "out ['x']\nerr\n"


def test_stem_told_nothing_ends_quietly() -> None:
    done = subprocess.run(
        [FUNCTION_PYTHON, "-m", "fum.stem"], input=b"", capture_output=True, timeout=DEADLINE_S
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, STEM_READY, b"")


@pytest.mark.parametrize(
    ("run", "argv"),
    [
        ("python3 test.py", ["test.py"]),
        ("python3 -m fum main:handle", ["-m", "fum", "main:handle"]),
        ("python app.py --port 3", ["app.py", "--port", "3"]),
        ("python3 -u test.py", None),  # interpreter options: run as written
        ("python3 -m", None),
        ("node index.js", None),
        ("cd src && python3 test.py", None),  # a shell line
        ("X=1 python3 test.py", None),
        ("/usr/bin/python3 test.py", None),  # another interpreter than the stem's
    ],
)
def test_which_run_commands_a_stem_can_become(run: str, argv: list[str] | None) -> None:
    assert stem_argv(run) == argv


def test_handler_that_cannot_load_exits_without_setup_ok(host: Host, start: Any) -> None:
    """A missing handler function ends the process before it reports setup."""
    process = start("hello-handler", "-m", "fum", "main:missing")
    assert process.wait(timeout=DEADLINE_S) != 0
    assert not host.pull.poll(0)


@pytest.fixture
def crash_function(tmp_path: Path) -> Path:
    """A loop-style function whose work raises on every call."""
    folder = tmp_path / "crash-src"
    folder.mkdir()
    (folder / "crash.py").write_text(
        "import fum\n"
        "while True:\n"
        "    fum.fum_yield()\n"
        "    fum.result('started')\n"
        "    raise KeyError(fum.params()['boom'])\n"
    )
    return folder


def test_uncaught_exception_mid_call_is_reported_as_the_call_error(
    host: Host, start: Any, crash_function: Path
) -> None:
    """A function that dies inside a call still reports that call, with the exception."""
    process = start(crash_function, "crash.py")
    assert_setup_ok(host)
    call_uuid = host.send_call({"boom": "no such key"})
    ok, node_id, done_uuid, report = host.receive_ok()
    assert (ok, node_id, done_uuid) == (b"ok", NODE_ID.encode(), call_uuid)
    assert json.loads(report)["type"] == "KeyError"
    assert process.wait(timeout=DEADLINE_S) == 1


@pytest.mark.parametrize(
    ("ending", "status"),
    [("raise SystemExit('boom')", 1), ("sys.exit(3)", 3), ("sys.exit(0)", 0), ("pass", 0)],
)
def test_a_process_that_exits_mid_call_reports_nothing(
    host: Host, start: Any, tmp_path: Path, ending: str, status: int
) -> None:
    """Ending the process inside a call (SystemExit, sys.exit, the script's end) does not
    finish the call: no ``ok`` is sent for it, so the host sees the exit and makes the
    call an error with the exit status, where the library used to report it done."""
    folder = tmp_path / "exit-src"
    folder.mkdir()
    (folder / "exits.py").write_text(
        f"import sys\nimport fum\nfum.fum_yield()\nfum.result('started')\n{ending}\n"
    )
    process = start(folder, "exits.py")
    assert_setup_ok(host)
    host.send_call({})
    assert process.wait(timeout=DEADLINE_S) == status
    assert not host.pull.poll(500), host.pull.recv_multipart()


# -- in-process units ------------------------------------------------------------------------


def test_session_reads_the_environment() -> None:
    """Every FUM variable lands on the session; host_id is host_ip; dirs have defaults."""
    session = Session.from_environ(
        {
            "FUM_NODE_ID": "5",
            "FUM_NODE_IP": "10.0.0.5",
            "FUM_NODE_PORT": "7001",
            "FUM_HOST_IP": "10.0.0.1",
            "FUM_HOST_PORT": "7000",
        }
    )
    assert (session.node_id, session.node_ip, session.node_port) == ("5", "10.0.0.5", 7001)
    assert (session.host_ip, session.host_id, session.host_port) == ("10.0.0.1", "10.0.0.1", 7000)
    assert (session.input_dir, session.output_dir) == ("/input/input", "/output/output")
    assert session.current_uuid is None

    custom = Session.from_environ({"input_dir": "/in", "output_dir": "/out"})
    assert (custom.input_dir, custom.output_dir) == ("/in", "/out")
    assert custom.node_port is None


def test_session_rejects_a_port_that_is_not_a_number() -> None:
    """A malformed port is a clear error at start, not a bind failure later."""
    with pytest.raises(ValueError, match="FUM_HOST_PORT"):
        Session.from_environ({"FUM_HOST_PORT": "http"})


def test_fum_yield_without_a_host_is_a_clear_error() -> None:
    """Outside a fum container fum_yield() explains what is missing instead of hanging."""
    with pytest.raises(RuntimeError, match="FUM_NODE_PORT"):
        Session.from_environ({}).fum_yield()


def test_module_instance_is_the_fum_namespace() -> None:
    """``fum.Fum`` is the module's Session, as the original fum.py instantiated it."""
    import fum

    assert isinstance(fum.Fum, Session)
    for name in ("node_id", "node_ip", "node_port", "host_ip", "host_id", "host_port"):
        assert hasattr(fum.Fum, name)
    assert callable(fum.fum_yield) and callable(fum.params) and callable(fum.result)


def test_params_and_result_files(tmp_path: Path) -> None:
    """params() is {} without a file; result() writes JSON and leaves no file on bad values."""
    session = Session(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"))
    assert session.params() == {}
    session.input_path("params.json").parent.mkdir()
    session.input_path("params.json").write_text('{"roll": "4d6"}')
    assert session.params() == {"roll": "4d6"}

    with pytest.raises(TypeError):
        session.result({"not json": object()})
    assert not (tmp_path / "out" / "result.json").exists()
    session.result([4, 6, 4, 3])
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == [4, 6, 4, 3]
    assert session.output_path("extra.bin") == tmp_path / "out" / "extra.bin"


def test_fail_outside_a_call_is_refused() -> None:
    """There is no call to fail before the first UUID arrives."""
    with pytest.raises(RuntimeError, match="outside a call"):
        Session().fail("too early")


def test_error_report_shape() -> None:
    """Reports carry type, message and traceback, from an exception or a message."""
    try:
        raise ValueError("bad roll")
    except ValueError as exc:
        report = error_report(exc)
    assert report["type"] == "ValueError" and report["message"] == "bad roll"
    assert "raise ValueError" in report["traceback"]
    assert error_report("no luck") == {"type": "CallFailed", "message": "no luck", "traceback": ""}


def test_tcp_address_brackets_ipv6() -> None:
    """IPv6 literals are bracketed; names and IPv4 are not."""
    assert tcp_address("10.0.0.1", 7000) == "tcp://10.0.0.1:7000"
    assert tcp_address("::1", 7000) == "tcp://[::1]:7000"
    assert tcp_address("node-1", 7000) == "tcp://node-1:7000"


def test_library_depends_on_pyzmq_only() -> None:
    """The container library may need nothing but pyzmq, on Python 3.9 or later."""
    project = tomllib.loads((REPO / "libs" / "fum" / "pyproject.toml").read_text())["project"]
    assert [dep.split(">")[0].split("=")[0].strip() for dep in project["dependencies"]] == ["pyzmq"]
    assert project["requires-python"] == ">=3.9"
