"""The Python SDK against a real local cluster: Client, AsyncClient and FunctionExecutor."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fum_client
from fum_cli.local import LocalCluster, free_port
from fum_client import (
    ALL_COMPLETED,
    ALWAYS,
    ANY_COMPLETED,
    ApiUnreachable,
    AsyncClient,
    BadRequest,
    CallError,
    Client,
    ConfigError,
    Conflict,
    FunctionExecutor,
    NotFound,
    SerializationError,
    WaitTimeout,
)
from fum_client.config import resolve
from fum_client.packaging import pack_files

HANDLER_RUN = "python3 -m fum main:handle"
ECHO = "def handle(params):\n    return params\n"
FAIL = "def handle(params):\n    raise ValueError('boom: ' + str(params.get('why')))\n"
CHATTY = (
    "import sys\n\ndef handle(params):\n"
    "    print('out:', params['n'], flush=True)\n"
    "    print('err:', params['n'], file=sys.stderr, flush=True)\n"
    "    return params['n']\n"
)


def package(source: str) -> bytes:
    return pack_files({"main.py": source.encode()})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("sdk"), port=0).start(timeout=60)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.url) as c:
        c.put_runtime("handlers", "pythonruntime", HANDLER_RUN)
        for name, source in (("echo", ECHO), ("fail", FAIL), ("chatty", CHATTY)):
            c.deploy_function(name, package(source), runtime="handlers", timeout=30)
        yield c


@pytest.fixture(scope="module")
def fexec(cluster: LocalCluster, client: Client) -> Iterator[FunctionExecutor]:
    with FunctionExecutor(cluster.url) as executor:
        yield executor


# ---- callables


def square(x: int) -> int:
    return x * x


def test_a_lambda_runs_with_nothing_deployed_by_hand(fexec: FunctionExecutor) -> None:
    future = fexec.call_async(lambda x: x + 1, 41)
    assert future.result(timeout=60) == 42
    assert future.status() == "DONE"
    assert future.done() and future.attempts == 1
    assert isinstance(future.call_num, int)
    assert future.call is not None and future.call.func_name == fexec.builtin_function
    # the built-in function and its runtime were deployed by the executor itself
    assert fexec.client.get_function(fexec.builtin_function).runtime == "fum-python"


def test_data_as_args_kwargs_and_a_single_value(fexec: FunctionExecutor) -> None:
    def add(a: int, b: int = 10) -> int:
        return a + b

    assert fexec.call_async(add, (1, 2)).result(timeout=60) == 3
    assert fexec.call_async(add, {"a": 5}).result(timeout=60) == 15
    assert fexec.call_async(add, 7, extra_args=(1,)).result(timeout=60) == 8
    # a dict whose keys are not all parameter names is the single argument
    assert fexec.call_async(lambda d: sorted(d), {"x": 1, "y": 2}).result(timeout=60) == ["x", "y"]
    assert fexec.call_async(lambda: "no args").result(timeout=60) == "no args"


def test_map_keeps_order_and_python_types(fexec: FunctionExecutor) -> None:
    futures = fexec.map(square, range(200))
    assert fexec.get_result(futures, timeout=90) == [x * x for x in range(200)]
    # results are unpickled, not JSON: tuples and sets come back as they were
    assert fexec.call_async(lambda: (1, {2, 3})).result(timeout=60) == (1, {2, 3})


def test_a_map_is_a_few_requests(cluster: LocalCluster, client: Client) -> None:
    """1,000 items go out as a handful of POST /v1/calls, not 1,000 requests."""
    with FunctionExecutor(cluster.url) as executor:
        sent: list[int] = []
        original = executor._http.create_calls_encoded

        def counting(calls: list[tuple[str, bytes]], **options: Any) -> list[int]:
            sent.append(len(calls))
            return original(calls, **options)

        executor._http.create_calls_encoded = counting  # type: ignore[method-assign]
        futures = executor.map("echo", [{"i": i} for i in range(1000)])
        results = executor.get_result(futures, timeout=110)
        assert results == [{"i": i} for i in range(1000)]
        assert sum(sent) == 1000
        assert len(sent) <= 5, sent


def test_map_reduce_with_callables(fexec: FunctionExecutor) -> None:
    futures = fexec.map_reduce(square, range(10), sum)
    assert len(futures) == 11
    assert fexec.get_result(futures, timeout=90) == sum(x * x for x in range(10))
    assert futures[-1].status() == "DONE"


def test_map_reduce_with_deployed_functions(fexec: FunctionExecutor) -> None:
    futures = fexec.map_reduce("echo", [1, 2, 3], "echo")
    assert fexec.get_result(futures, timeout=90) == [1, 2, 3]  # echo of the map's results


def test_a_failed_map_item_fails_the_reduce(fexec: FunctionExecutor) -> None:
    futures = fexec.map_reduce(lambda x: 1 / x, [1, 0], sum)
    with pytest.raises(ZeroDivisionError):
        fexec.get_result(futures, timeout=90)
    assert futures[-1].call_num is None  # the reduce was never submitted


# ---- waiting


def test_wait_any_then_all(fexec: FunctionExecutor) -> None:
    def nap(seconds: float) -> float:
        import time

        time.sleep(seconds)
        return seconds

    # slow enough that the fast call ends first even when it needs a sandbox started
    fast, slow = fexec.map(nap, [0.0, 8.0])
    done, not_done = fexec.wait([fast, slow], return_when=ANY_COMPLETED, timeout=60)
    assert done == [fast] and not_done == [slow]
    done, not_done = fexec.wait([fast, slow], return_when=ALWAYS)
    assert fast in done and slow in not_done
    assert slow.status() in ("PENDING", "RUNNING")
    done, not_done = fexec.wait([fast, slow], return_when=ALL_COMPLETED, timeout=60)
    assert done == [fast, slow] and not_done == []
    assert fexec.get_result([fast, slow]) == [0.0, 8.0]


def test_wait_times_out(fexec: FunctionExecutor) -> None:
    def nap() -> None:
        import time

        time.sleep(3)

    future = fexec.call_async(nap)
    started = time.monotonic()
    done, not_done = fexec.wait([future], timeout=0.5)
    assert done == [] and not_done == [future]
    assert time.monotonic() - started < 3
    with pytest.raises(WaitTimeout):
        fexec.get_result([future], timeout=0.2)
    assert future.result(timeout=60) is None


async def test_futures_can_be_awaited(fexec: FunctionExecutor) -> None:
    assert await fexec.call_async(square, 12) == 144


# ---- errors


def test_a_failing_item_raises_from_get_result(fexec: FunctionExecutor) -> None:
    futures = fexec.map(lambda x: 10 / x, [1, 0, 5])
    with pytest.raises(ZeroDivisionError) as caught:
        fexec.get_result(futures, timeout=90)
    error = caught.value
    assert isinstance(error, CallError)
    assert error.call_num == futures[1].call_num
    assert error.error_type == "ZeroDivisionError"
    assert "division by zero" in str(error)
    assert "ZeroDivisionError" in error.remote_traceback
    assert fexec.get_result(futures, throw_except=False) == [10.0, None, 2.0]
    assert futures[1].status() == "ERROR" and futures[1].error
    assert isinstance(futures[1].exception(), CallError)


def test_a_deployed_function_error(fexec: FunctionExecutor) -> None:
    future = fexec.call_async("fail", {"why": "testing"})
    with pytest.raises(CallError) as caught:
        future.result(timeout=60)
    assert caught.value.error_type == "ValueError"
    assert caught.value.error_message == "boom: testing"
    assert isinstance(caught.value, ValueError)


def test_an_unknown_function_fails_only_its_calls(fexec: FunctionExecutor) -> None:
    # submitted in one burst: the api refuses the whole batch, the executor sorts it out
    good = fexec.call_async("echo", {"ok": True})
    bad = fexec.call_async("no-such-function", {})
    with pytest.raises(NotFound, match="no-such-function"):
        bad.result(timeout=60)
    assert good.result(timeout=60) == {"ok": True}


def test_params_that_cannot_be_sent(fexec: FunctionExecutor) -> None:
    with pytest.raises(SerializationError, match="not JSON"):
        fexec.call_async("echo", {"x": object()})
    with pytest.raises(SerializationError, match="cannot pickle"):
        fexec.call_async(lambda lock: None, (threading.Lock(),))
    with pytest.raises(TypeError):
        fexec.call_async(42, 1)  # type: ignore[arg-type]


def test_retries_submit_a_failed_call_again(fexec: FunctionExecutor, tmp_path: Path) -> None:
    def flaky(marker: str) -> str:
        import os

        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first attempt fails")
        return "second attempt"

    future = fexec.call_async(flaky, str(tmp_path / "marker"), retries=1)
    assert future.result(timeout=90) == "second attempt"
    assert future.attempts == 2 and future.call_nums[0] != future.call_nums[1]
    without = fexec.call_async(flaky, str(tmp_path / "other"))
    with pytest.raises(CallError, match="first attempt fails"):
        without.result(timeout=60)


def test_api_unreachable_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ApiUnreachable, match=f"cannot reach the fum api at {url}"):
        Client(url).list_nodes()
    with FunctionExecutor(url, unreachable_grace=0.5) as executor:
        started = time.monotonic()
        future = executor.call_async("echo", {})
        with pytest.raises(ApiUnreachable, match="connection refused"):
            future.result(timeout=30)
        assert time.monotonic() - started < 10
        with pytest.raises(ApiUnreachable):  # a callable needs the built-in function first
            executor.call_async(square, 1)


def test_closing_fails_what_is_unfinished(cluster: LocalCluster, client: Client) -> None:
    executor = FunctionExecutor(cluster.url)

    def nap() -> None:
        import time

        time.sleep(5)

    future = executor.call_async(nap)
    executor.close()
    with pytest.raises(fum_client.ExecutorClosed):
        future.result(timeout=10)
    with pytest.raises(fum_client.ExecutorClosed):
        executor.call_async("echo", {})


# ---- the client, route by route


def test_client_covers_the_api(client: Client) -> None:
    assert client.health().status == "ok"
    assert "/v1/calls/wait" in client.openapi()["paths"]
    nodes = client.list_nodes()
    assert len(nodes) == 1 and nodes[0].driver == "process"

    runtime = client.put_runtime("rt-sdk", "pythonruntime", HANDLER_RUN, dependencies="true")
    assert runtime.dependencies == "true"
    assert "rt-sdk" in [r.name for r in client.list_runtimes()]
    assert client.get_runtime("rt-sdk").run == HANDLER_RUN

    function = client.deploy_function("echo-sdk", package(ECHO), runtime="rt-sdk", timeout=5)
    assert function.limits["timeout"] == 5
    assert client.get_package(function.sha256) == package(ECHO)
    assert client.update_function("echo-sdk", timeout=7).limits["timeout"] == 7
    with pytest.raises(Conflict):
        client.delete_runtime("rt-sdk")

    call = client.invoke("echo-sdk", {"a": 1})
    assert call.status == "DONE" and call.result == {"a": 1} and call.final
    queued = client.invoke("echo-sdk", [1, 2], blocking=False)
    assert client.wait_call(queued.call_num, timeout=60).result == [1, 2]
    assert client.run("echo-sdk", "text").result == "text"
    nums = client.create_calls([("echo-sdk", i) for i in range(5)])
    waited = client.wait_calls(nums, timeout=60)
    assert [c.result for c in waited.done] == list(range(5)) and waited.pending == []
    first = client.wait_calls(nums, timeout=0, return_when="FIRST_COMPLETED")
    assert len(first.done) == 5

    page = client.list_calls(function="echo-sdk", limit=3)
    assert [c.call_num for c in page.items] == sorted(nums, reverse=True)[:3]
    assert page.next is not None
    everything = list(client.iter_calls(function="echo-sdk", page_size=2))
    assert len(everything) == 8
    assert client.get_call(nums[0]).params == 0

    client.delete_function("echo-sdk")
    client.delete_runtime("rt-sdk")
    with pytest.raises(NotFound, match="echo-sdk"):
        client.get_function("echo-sdk")


def test_client_errors_carry_the_api_message(client: Client) -> None:
    with pytest.raises(NotFound) as caught:
        client.invoke("missing", {})
    assert caught.value.status == 404 and caught.value.code == "not_found"
    assert "missing" in caught.value.message
    with pytest.raises(BadRequest, match="status must be one of"):
        client.list_calls(status="NOPE")
    with pytest.raises(BadRequest):
        client.deploy_function("broken", b"not an archive", runtime="handlers")


def test_call_logs(client: Client) -> None:
    call = client.run("chatty", {"n": 7})
    assert call.result == 7
    logs = client.get_call_logs(call.call_num)
    assert "out: 7" in logs and "err: 7" in logs


def test_deploy_a_folder(client: Client, tmp_path: Path) -> None:
    folder = tmp_path / "fn"
    (folder / "__pycache__").mkdir(parents=True)
    (folder / "main.py").write_text("import helper\n\ndef handle(p):\n    return helper.twice(p)\n")
    (folder / "helper.py").write_text("def twice(x):\n    return x * 2\n")
    (folder / "__pycache__" / "junk.pyc").write_bytes(b"junk")
    function = client.deploy_function("from-folder", folder, runtime="handlers")
    assert function.filename == "fn.tar.gz"
    assert client.run("from-folder", 21).result == 42
    again = client.deploy_function("from-folder", folder)  # same bytes, same package
    assert again.sha256 == function.sha256


async def test_async_client(cluster: LocalCluster, client: Client) -> None:
    async with AsyncClient(cluster.url) as api:
        assert (await api.health()).status == "ok"
        assert "echo" in [f.name for f in await api.list_functions()]
        call = await api.invoke("echo", {"x": 1})
        assert call.result == {"x": 1}
        nums = await api.create_calls([("echo", i) for i in range(3)])
        done = await api.wait_calls(nums, timeout=60)
        assert [c.result for c in done.done] == [0, 1, 2]
        assert (await api.wait_call(nums[0])).status == "DONE"
        assert (await api.run("echo", 5)).result == 5
        page = await api.list_calls(function="echo", limit=2)
        assert len(page.items) == 2
        seen = [c.call_num async for c in api.iter_calls(function="echo", page_size=2)]
        assert set(nums) <= set(seen)
        assert (await api.get_call(nums[1])).params == 1
        assert isinstance(await api.get_call_logs(nums[1]), str)
        assert (await api.list_nodes())[0].node_id == 0
        with pytest.raises(NotFound):
            await api.get_runtime("nope")
    async with AsyncClient(f"http://127.0.0.1:{free_port()}") as dead:
        with pytest.raises(ApiUnreachable, match="connection refused"):
            await dead.list_nodes()


# ---- where the api is


def test_address_resolution_order(tmp_path: Path) -> None:
    profile_file = tmp_path / "config.toml"
    profile_file.write_text(
        '[default]\napi_url = "http://profile:1"\napi_key = "pk"\n'
        '[other]\napi_url = "http://other:2"\n'
    )
    env = {"FUM_CONFIG": str(profile_file)}
    nothing = {"FUM_CONFIG": str(tmp_path / "absent.toml")}
    assert resolve(environ=nothing).api_url == "http://127.0.0.1:3000"
    assert resolve(environ=nothing).api_key is None
    settings = resolve(environ=env)
    assert (settings.api_url, settings.api_key) == ("http://profile:1", "pk")
    assert settings.sources["api_url"] == "profile [default]"
    assert resolve(environ={**env, "FUM_PROFILE": "other"}).api_url == "http://other:2"
    assert resolve(profile="other", environ=env).api_url == "http://other:2"
    with_env = resolve(environ={**env, "FUM_API_URL": "http://env:3", "FUM_API_KEY": "ek"})
    assert (with_env.api_url, with_env.api_key) == ("http://env:3", "ek")
    explicit = resolve("http://arg:4/", "ak", environ={**env, "FUM_API_URL": "http://env:3"})
    assert (explicit.api_url, explicit.api_key) == ("http://arg:4", "ak")
    assert explicit.sources == {"api_url": "argument", "api_key": "argument"}
    with pytest.raises(ConfigError, match="no profile 'missing'"):
        resolve(profile="missing", environ=env)
    with pytest.raises(ConfigError, match="must look like"):
        resolve("localhost:3000", environ=nothing)
    profile_file.write_text("[default\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(environ=env)


def test_the_api_key_is_sent_as_a_bearer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The api does not check keys yet; the client must still send the one configured."""
    import http.server

    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = b'{"items": []}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        with Client(url, api_key="s3cret") as c:
            assert c.list_nodes() == []
        monkeypatch.setenv("FUM_API_KEY", "from-env")
        with Client(url) as c:
            c.list_runtimes()
        assert seen == ["Bearer s3cret", "Bearer from-env"]
    finally:
        server.shutdown()
        server.server_close()


def test_a_full_function_queue_is_waited_out(cluster: LocalCluster, client: Client) -> None:
    """429s (the function's queue is full) are retried in smaller batches until all fit."""
    nap = "import time\n\ndef handle(p):\n    time.sleep(0.1)\n    return p\n"
    client.deploy_function(
        "narrow", package(nap), runtime="handlers", concurrency=1, queue=2, min_warm=1
    )
    assert client.get_function("narrow").limits["concurrency"] == 1
    with FunctionExecutor(cluster.url) as executor:
        futures = executor.map("narrow", list(range(12)))
        assert executor.get_result(futures, timeout=110) == list(range(12))
    with pytest.raises(fum_client.TooManyRequests) as caught:
        client.create_calls([("narrow", i) for i in range(10)])
    assert caught.value.retry_after >= 0


def test_the_executor_rides_out_an_api_restart(tmp_path: Path) -> None:
    """Waits fail while the api is down; the executor retries them, and every result comes."""
    cluster = LocalCluster(tmp_path / "cluster", port=0, capacity=4).start(timeout=60)
    try:
        with Client(cluster.url) as c:
            c.put_runtime("handlers", "pythonruntime", HANDLER_RUN)
            nap = "import time\n\ndef handle(p):\n    time.sleep(0.01)\n    return p\n"
            c.deploy_function("nap", package(nap), runtime="handlers")
        with FunctionExecutor(cluster.url) as executor:
            futures = executor.map("nap", range(300))
            deadline = time.monotonic() + 30
            while any(f.call_num is None for f in futures):  # submitted: now being waited on
                assert time.monotonic() < deadline, "the map was never submitted"
                time.sleep(0.01)
            cluster.stop_process("api")
            cluster.start_api()
            cluster.wait_ready(60)
            assert executor.get_result(futures, timeout=110) == list(range(300))
    finally:
        cluster.stop()


def test_get_result_of_everything_not_read_yet(cluster: LocalCluster, client: Client) -> None:
    """Lithops' rule: no futures given means this executor's calls whose results are unread."""
    with FunctionExecutor(cluster.url) as executor:
        executor.call_async("echo", "one")
        assert executor.get_result(timeout=60) == "one"  # one value after a call_async
        executor.map("echo", ["a", "b"])
        assert executor.get_result(timeout=60) == ["a", "b"]  # a list after a map
        assert executor.get_result(timeout=60) == []  # everything was read
        executor.map("echo", ["c"])
        assert executor.get_result(timeout=60) == ["c"]  # a map of one is still a list
        done, not_done = executor.wait(return_when=ALWAYS)
        assert len(done) == 4 and not_done == []
