"""Statuses the document promises that no other test asks for: a full queue (429) on each
route that makes calls, and a 503 from each route that waits on a service that is gone."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from fum_cli.local import LocalCluster

from .support import HANDLER_RUNTIME, Api, targz, unique
from .workflows import Apps, app_archive

SLEEPER = "import time\ndef handle(params):\n    time.sleep(params.get('s', 0))\n    return 1\n"
SLOW_START = {
    "Start": (
        {"Start": True},
        "import time\n"
        "def lambda_handler(event, context):\n    time.sleep(event)\n    return event\n",
    )
}


@pytest.fixture(scope="module")
def driver() -> str:
    """conftest's ``cluster`` and ``api``, with the process driver only."""
    return "process"


async def busy(api: Api, name: str) -> None:
    """The function's one slot taken by a long call (its queue holds none)."""
    status, body = await api.invoke(name, {"s": 30}, blocking=False)
    assert status == 202, body
    deadline = time.monotonic() + 30
    while (await api.request("GET", f"/v1/calls/{body['callNum']}"))[1]["status"] != "RUNNING":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def test_the_client_errors_no_other_test_asks_for(api: Api) -> None:
    """Names that name nothing (404), query values that are not numbers (400), a runtime
    made by POST (201) and made again (409), the original registration's 400 and 404."""
    rt = unique("rt")
    cases: list[tuple[str, str, dict[str, object], int]] = [
        ("DELETE", "/v1/functions/nothing", {}, 404),
        ("PATCH", "/v1/functions/nothing", {"json": {"timeout": 3}}, 404),
        ("GET", "/v1/functions/nothing?wait=soon", {}, 400),
        ("DELETE", "/v1/runtimes/nothing", {}, 404),
        ("GET", "/v1/apps/nothing", {}, 404),
        ("GET", "/v1/apps/nothing/sessions", {}, 404),
        ("DELETE", "/v1/apps/nothing/sessions/nothing", {}, 404),
        ("GET", "/v1/sessions/nothing", {}, 404),
        ("GET", "/v1/events?limit=many", {}, 400),
        ("GET", "/v1/executions?limit=many", {}, 400),
        ("GET", "/v1/triggers?limit=many", {}, 400),
        ("POST", "/v1/runtimes", {"json": {"name": rt, **HANDLER_RUNTIME}}, 201),
        ("POST", "/v1/runtimes", {"json": {"name": rt, **HANDLER_RUNTIME}}, 409),
    ]
    for method, path, options, expected in cases:
        status, body = await api.request(method, path, **options)
        assert status == expected, (method, path, status, body)
        if status >= 400:
            assert set(body["error"]) == {"code", "message"}, body
    no_module = aiohttp.FormData({"timeout": "3"}, default_to_multipart=True)
    status, body = await api.request("POST", f"/registerFunction/{rt}/f", data=no_module)
    assert status == 400, body
    package = aiohttp.FormData()
    package.add_field("module", targz({"main.py": "x = 1\n"}), filename="f.tar.gz")
    status, body = await api.request("POST", "/registerFunction/nothing/f", data=package)
    assert status == 404, body


async def test_every_route_that_makes_calls_answers_429_when_the_queue_is_full(api: Api) -> None:
    await api.runtime("pyh")
    name = unique("full")
    status, body = await api.deploy(
        name, "pyh", targz({"main.py": SLEEPER}), concurrency=1, queue=0
    )
    assert status == 201, body
    await busy(api, name)
    for method, path, kwargs in [
        ("POST", "/invokeFunction", {"json": {"funcName": name, "params": {}}}),
        ("POST", f"/v1/functions/{name}/invoke", {"json": {}}),
        ("POST", "/v1/calls", {"json": {"calls": [{"function": name}]}}),
    ]:
        async with api.session.request(method, path, **kwargs) as response:
            assert response.status == 429, (path, await response.text())
            assert int(response.headers["Retry-After"]) >= 1
            assert (await response.json())["error"]["code"] == "overloaded"

    app = unique("slow")
    await Apps(api).deployed(app, app_archive(SLOW_START))
    status, body = await api.request(
        "PATCH", f"/v1/functions/{app}.Start", json={"concurrency": 1, "queue": 0}
    )
    assert status == 200, body
    status, first = await api.request("POST", f"/v1/apps/{app}/sessions?blocking=false", json=30)
    assert status == 202, first
    deadline = time.monotonic() + 30
    while True:
        status, body = await api.request("POST", f"/v1/apps/{app}/sessions?blocking=false", json=0)
        if status == 429:
            break
        assert status == 202 and time.monotonic() < deadline, body  # the first not placed yet
        await asyncio.sleep(0.2)
    assert body["error"]["code"] == "overloaded"


async def test_health_says_503_while_the_db_is_gone(api: Api, cluster: LocalCluster) -> None:
    cluster.stop_process("db")
    try:
        status, body = await api.request("GET", "/healthz")
        assert status == 503 and body["error"]["code"] == "unavailable", body
    finally:
        cluster.start_db("keep")
    deadline = time.monotonic() + 30
    while (await api.request("GET", "/healthz"))[0] != 200:
        assert time.monotonic() < deadline, "the api never saw the db again"
        await asyncio.sleep(0.2)


async def test_blocking_requests_get_503_when_the_api_stops(
    api: Api, cluster: LocalCluster
) -> None:
    """A blocking invoke, a blocking session start and a wait for a call, waiting when
    the api is told to stop: a clear 503 each at once, not a cut connection."""
    await api.runtime("pyh")
    name = unique("long")
    status, body = await api.deploy(name, "pyh", targz({"main.py": SLEEPER}))
    assert status == 201, body
    app = unique("longapp")
    await Apps(api).deployed(app, app_archive(SLOW_START))
    status, call = await api.invoke(name, {"s": 20}, blocking=False)
    assert status == 202, call
    invoke = asyncio.ensure_future(api.invoke(name, {"s": 20}, timeout=60))
    session = asyncio.ensure_future(api.request("POST", f"/v1/apps/{app}/sessions", json=20))
    wait = asyncio.ensure_future(
        api.request("POST", "/v1/calls/wait", json={"callNums": [call["callNum"]], "timeout": 60})
    )
    await asyncio.sleep(2)  # all three waiting
    await asyncio.to_thread(cluster.stop_process, "api")
    try:
        for answer in (await invoke, await session, await wait):
            status, body = answer
            assert status == 503 and body["error"]["code"] == "unavailable", body
    finally:
        cluster.start_api()
        cluster.wait_ready(60)
