"""The trust boundary at the HTTP door: pages of other origins, foreign Host names, bodies
of the wrong type, API keys, idempotent invokes, and input meant to break things."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fum_cli.local import LocalCluster
from services.api.auth import add_key
from services.api.routes import ROUTES, Route
from services.api.security import PUBLIC

from .conftest import start_cluster
from .support import Api, handler_package, targz, unique

ALLOWED = "http://app.example"
EVIL = "http://evil.example"
# A handler that leaves a mark where the test can see it: proof that it ran.
MARKING = """
    def handle(params):
        with open(params["dir"] + "/" + params.get("mark", "x"), "a") as f:
            f.write("ran\\n")
        return "marked"
    """


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(scope="module")
def open_cluster(tmp_path_factory: pytest.TempPathFactory, marks: Path) -> Iterator[LocalCluster]:
    """An open api (no keys) that lets pages of ALLOWED in, with small body limits."""
    c = start_cluster(
        tmp_path_factory,
        env={
            "FUM_ALLOWED_ORIGINS": ALLOWED,
            "FUM_MAX_PACKAGE_MB": "2",
            "FUM_MAX_JSON_MB": "1",
        },
    )
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def api(open_cluster: LocalCluster) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(open_cluster.url) as session:
        yield Api(session)


async def call_count(api: Api) -> int:
    status, page = await api.request("GET", "/v1/calls", params={"limit": "1000"})
    assert status == 200
    return len(page["items"])


def error_of(status: int, body: Any, expected: int) -> str:
    assert status == expected, body
    assert set(body) == {"error"} and body["error"]["message"], body
    return str(body["error"]["code"])


# ---- origins, hosts and content types


async def test_pages_of_other_origins_can_register_and_run_nothing(api: Api, marks: Path) -> None:
    """Finding 1: the three requests any web page can send without a preflight."""
    before = await call_count(api)
    evil = {"Origin": EVIL}
    runtime = {
        "image": "pythonruntime",
        "path": "/ws",
        "dependencies": f"touch {marks}/PWNED",
        "run": "python3 -m fum main:handle",
    }
    status, body = await api.request(
        "POST",
        "/registerRuntime",
        data=json.dumps(runtime),
        headers={**evil, "Content-Type": "text/plain"},
    )
    assert error_of(status, body, 403) == "forbidden"
    form = aiohttp.FormData()
    form.add_field("module", targz({"main.py": MARKING}), filename="evil.tar.gz")
    status, body = await api.request(
        "POST", "/registerFunction/pythonruntime/evil", data=form, headers=evil
    )
    assert error_of(status, body, 403) == "forbidden"
    # a function of the user's own that a page would like to run
    await api.runtime("pyh")
    status, _ = await api.deploy("marker", "pyh", targz({"main.py": MARKING}))
    assert status in (200, 201)
    status, body = await api.request(
        "POST",
        "/invokeFunction",
        data=json.dumps({"funcName": "marker", "params": {"mark": "evil", "dir": str(marks)}}),
        headers={**evil, "Content-Type": "text/plain"},
    )
    assert error_of(status, body, 403) == "forbidden"
    status, body = await api.request(
        "POST",
        "/v1/functions/marker/invoke?blocking=false",
        data=b'{"mark": "evil"}',
        headers={**evil, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 403
    _, runtimes = await api.request("GET", "/runtimes")
    _, functions = await api.request("GET", "/functions")
    assert "evil" not in functions and "pythonruntime" not in runtimes
    assert await call_count(api) == before
    await asyncio.sleep(0.5)
    assert sorted(os.listdir(marks)) == []
    # the user's own calls still run
    status, call = await api.invoke("marker", {"mark": "own", "dir": str(marks)})
    assert status == 200 and call["result"] == "marked"
    assert (marks / "own").exists() and not (marks / "evil").exists()


async def test_json_routes_take_json_and_uploads_multipart(api: Api) -> None:
    await api.runtime("pyh")
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        status, body = await api.request(
            "POST",
            "/registerRuntime",
            data=b'{"image": "x", "run": "y"}',
            headers={"Content-Type": content_type},
        )
        assert error_of(status, body, 415) == "unsupported_media_type"
    status, body = await api.request(
        "PUT",
        "/v1/runtimes/vnd",
        data=b'{"image": "pythonruntime", "run": "python3 -m fum"}',
        headers={"Content-Type": "application/vnd.fum+json"},
    )
    assert status == 201, body
    status, body = await api.request(
        "PUT",
        "/v1/functions/notmultipart",
        data=b'{"module": "x"}',
        headers={"Content-Type": "application/json"},
    )
    assert error_of(status, body, 415) == "unsupported_media_type"
    echo = await api.handler_function("echo", "pyh")
    status, call = await api.request("POST", f"/v1/functions/{echo}/invoke")  # no body: {}
    assert status == 200 and call["result"] == {}


async def test_same_origin_and_allowed_origins_with_cors(
    api: Api, open_cluster: LocalCluster
) -> None:
    await api.runtime("pyh")
    echo = await api.handler_function("echo", "pyh")
    own = {"Origin": open_cluster.url, "Content-Type": "application/json"}
    status, call = await api.request(
        "POST", f"/v1/functions/{echo}/invoke", data=b'{"a": 1}', headers=own
    )
    assert status == 200 and call["result"] == {"a": 1}
    preflight = {
        "Origin": ALLOWED,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization, idempotency-key",
    }
    async with api.session.options(f"/v1/functions/{echo}/invoke", headers=preflight) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        allowed = r.headers["Access-Control-Allow-Headers"].lower()
        assert {"content-type", "authorization", "idempotency-key"} <= {
            h.strip() for h in allowed.split(",")
        }
    async with api.session.options(
        f"/v1/functions/{echo}/invoke", headers={**preflight, "Origin": EVIL}
    ) as r:
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
    async with api.session.post(
        f"/v1/functions/{echo}/invoke",
        data=b'{"b": 2}',
        headers={"Origin": ALLOWED, "Content-Type": "application/json"},
    ) as r:
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert (await r.json())["result"] == {"b": 2}
    async with api.session.get(f"/v1/calls/{10**12}", headers={"Origin": ALLOWED}) as r:
        assert r.status == 404 and r.headers["Access-Control-Allow-Origin"] == ALLOWED


async def test_host_names_are_checked_against_dns_rebinding(
    api: Api, open_cluster: LocalCluster
) -> None:
    port = open_cluster.http_port
    for host in (f"evil.example:{port}", "rebind.attacker.test", f"localhost.evil:{port}"):
        status, body = await api.request("GET", "/v1/functions", headers={"Host": host})
        assert error_of(status, body, 403) == "forbidden", host
        status, _ = await api.request("GET", "/healthz", headers={"Host": host})
        assert status == 403
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "10.1.2.3"):
        status, _ = await api.request("GET", "/v1/functions", headers={"Host": host})
        assert status == 200, host


# ---- bad input (finding 9): a clear 4xx, nothing stored, nothing run, the api restarts


DISPOSITION = b"Content-Disposition: form-data; name="


def multipart(boundary: str, parts: bytes) -> tuple[bytes, dict[str, str]]:
    return parts, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def hostile_tar(kind: bytes, link: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        body = b"def handle(p):\n    return 1\n"
        info = tarfile.TarInfo("main.py")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        bad = tarfile.TarInfo("bad")
        bad.type, bad.linkname = kind, link
        tar.addfile(bad)
    return buf.getvalue()


async def test_bad_input_gets_4xx_and_stores_nothing(api: Api, open_cluster: LocalCluster) -> None:
    await api.runtime("pyh")
    echo = await api.handler_function("echo", "pyh")
    _, function_before = await api.request("GET", f"/v1/functions/{echo}")
    _, runtimes_before = await api.request("GET", "/v1/runtimes")
    calls_before = await call_count(api)
    json_h = {"Content-Type": "application/json"}
    big = 2**70
    deep = b"[" * 1000 + b"]" * 1000
    checks: list[tuple[str, str, dict[str, Any], int]] = [
        # numbers out of range, not finite, not whole
        ("PATCH", f"/v1/functions/{echo}", {"json": {"memory": big}}, 400),
        ("PATCH", f"/v1/functions/{echo}", {"json": {"concurrency": 0}}, 400),
        ("PATCH", f"/v1/functions/{echo}", {"data": b'{"timeout": NaN}', "headers": json_h}, 400),
        ("PATCH", f"/v1/functions/{echo}", {"data": b'{"timeout": 1e999}', "headers": json_h}, 400),
        ("POST", "/v1/calls/wait", {"json": {"callNums": [big]}}, 400),
        ("POST", "/v1/calls/wait", {"json": {"callNums": [1], "timeout": -1}}, 400),
        ("GET", f"/call/{big}", {}, 404),
        ("GET", f"/v1/calls/{big}", {}, 404),
        ("GET", f"/v1/calls/{big}/logs", {}, 404),
        ("GET", "/v1/calls?before=1e30", {}, 400),
        ("GET", "/v1/calls?before=inf", {}, 400),
        ("GET", f"/v1/calls?after={big}", {}, 400),
        ("GET", "/v1/calls?limit=nan", {}, 400),
        ("GET", "/v1/calls?limit=0", {}, 400),
        ("GET", "/v1/calls?limit=1001", {}, 400),
        ("POST", f"/v1/functions/{echo}/invoke?timeout=nan", {"json": {}}, 400),
        ("POST", f"/v1/functions/{echo}/invoke?timeout=inf", {"json": {}}, 400),
        ("POST", f"/v1/functions/{echo}/invoke?timeout=-1", {"json": {}}, 400),
        # JSON nested too deep, as params and as a body
        ("POST", f"/v1/functions/{echo}/invoke", {"data": deep, "headers": json_h}, 400),
        ("POST", "/registerRuntime", {"data": deep, "headers": json_h}, 400),
        ("POST", "/v1/calls", {"data": b'{"calls": ' + deep + b"}", "headers": json_h}, 400),
        # names with a newline, unknown fields
        ("PUT", "/v1/runtimes/x%0A", {"json": {"image": "pythonruntime", "run": "r"}}, 400),
        ("POST", "/registerRuntime", {"json": {"image": "x\n", "run": "r"}}, 400),
        ("POST", "/v1/runtimes", {"json": {"name": "x\n", "image": "i", "run": "r"}}, 400),
        ("PUT", "/v1/runtimes/rt1", {"json": {"image": "i", "run": "r", "color": 1}}, 400),
        ("PUT", "/v1/runtimes/rt2", {"json": {"image": "i", "run": "r", "path": "rel"}}, 400),
        # a body larger than FUM_MAX_JSON_MB
        (
            "POST",
            f"/v1/functions/{echo}/invoke",
            {"data": io.BytesIO(b'{"x": "' + b"y" * (2 << 20) + b'"}'), "headers": json_h},
            413,
        ),
    ]
    for method, path, kwargs, expected in checks:
        status, body = await api.request(method, path, **kwargs)
        assert status == expected and set(body) == {"error"}, (method, path, status, body)
    # uploads: limits that are not finite numbers, unknown fields, names with a newline
    for fields in (
        {"timeout": "nan"},
        {"timeout": "inf"},
        {"timeout": "-1"},
        {"cpus": "1e400"},
        {"memory": str(big)},
        {"colour": "red"},
    ):
        status, body = await api.deploy(unique("bad"), "pyh", handler_package("echo"), **fields)
        assert status == 400, (fields, body)
    form = aiohttp.FormData()
    form.add_field("module", handler_package("echo"), filename="p.tar.gz")
    form.add_field("runtime", "pyh")
    status, _ = await api.request("PUT", "/v1/functions/fnnl%0A", data=form)
    assert status == 400
    # hostile archives: links out, devices, fifos
    for kind, link in [
        (tarfile.SYMTYPE, "/etc/passwd"),
        (tarfile.LNKTYPE, "/etc/passwd"),
        (tarfile.CHRTYPE, ""),
        (tarfile.FIFOTYPE, ""),
    ]:
        status, body = await api.deploy(unique("link"), "pyh", hostile_tar(kind, link))
        assert error_of(status, body, 400) == "bad_request"
    # a package over FUM_MAX_PACKAGE_MB
    status, body = await api.deploy(unique("huge"), "pyh", os.urandom(3 << 20))
    assert error_of(status, body, 413) == "too_large"
    # broken multipart bodies
    good = b'--x\r\nContent-Disposition: form-data; name="runtime"\r\n\r\npyh\r\n--x--\r\n'
    for data, headers in [
        (good, {"Content-Type": "multipart/form-data"}),  # no boundary
        multipart("x", b"\x00\x01 garbage garbage"),
        multipart("x", b"--x\r\n" + DISPOSITION + b'"a\x01b"\r\nX\x02: y\r\n\r\n1\r\n--x--\r\n'),
        multipart("x", b"--x\r\n" + DISPOSITION + b'"runtime"\r\n\r\n\xff\xfe\r\n--x--\r\n'),
        multipart("x", b'--x\r\nContent-Disposition: form-data; name="module"\r\n\r\n123'),
    ]:
        status, body = await api.request(
            "PUT", f"/v1/functions/{unique('mp')}", data=data, headers=headers
        )
        assert error_of(status, body, 400) == "bad_request", data
    # nothing stored, nothing run
    assert await call_count(api) == calls_before
    _, function_after = await api.request("GET", f"/v1/functions/{echo}")
    assert function_after == function_before
    _, runtimes_after = await api.request("GET", "/v1/runtimes")
    assert runtimes_after == runtimes_before
    # and the api starts again on what it stored
    open_cluster.stop_process("api")
    open_cluster.start_api()
    open_cluster.wait_ready(30)
    status, function_restarted = await api.request("GET", f"/v1/functions/{echo}")
    assert status == 200 and function_restarted == function_before
    status, call = await api.invoke(echo, {"after": "restart"})
    assert status == 200 and call["result"] == {"after": "restart"}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_an_archive_bomb_is_refused_in_bounded_memory(
    api: Api, open_cluster: LocalCluster, tmp_path: Path
) -> None:
    from .test_archive import bomb

    await api.runtime("pyh")
    package = bomb(tmp_path / "bomb.tar.gz", 1 << 30).read_bytes()
    assert len(package) < 2 << 20
    name = unique("bomb")
    status, body = await api.deploy(name, "pyh", package)
    assert error_of(status, body, 400) == "bad_request" and "MiB" in body["error"]["message"]
    assert peak_rss_mb(open_cluster.procs["api"].pid) < 200
    status, _ = await api.request("GET", f"/v1/functions/{name}")
    assert status == 404
    packages = open_cluster.data_dir / "api" / "packages"
    assert not [p for p in packages.iterdir() if p.name.startswith(".upload-")]


# ---- idempotent invokes


async def test_a_repeated_idempotency_key_is_the_same_call(
    api: Api, open_cluster: LocalCluster
) -> None:
    await api.runtime("pyh")
    echo = await api.handler_function("echo", "pyh")
    sleepy = await api.handler_function("sleepy", "pyh")

    async def calls_of(function: str) -> list[int]:
        _, page = await api.request("GET", "/v1/calls", params={"function": function})
        return [c["callNum"] for c in page["items"]]

    def key(k: str) -> dict[str, str]:
        return {"Idempotency-Key": f"{k}-{unique('k')}"}

    # blocking, twice: the second answers the first call, finished
    h = key("blocking")
    runs = []
    for _ in range(2):
        status, call = await api.request(
            "POST", f"/v1/functions/{echo}/invoke", json={"n": 1}, headers=h
        )
        assert status == 200 and call["result"] == {"n": 1}
        runs.append(call["callNum"])
    assert runs[0] == runs[1]
    # non-blocking, and the legacy route
    for path, body in [
        (f"/v1/functions/{echo}/invoke?blocking=false", {"n": 2}),
        ("/invokeFunction", {"funcName": echo, "params": {"n": 3}}),
    ]:
        h = key("async")
        nums = []
        for _ in range(3):
            status, answer = await api.request("POST", path, json=body, headers=h)
            assert status in (200, 202), answer
            nums.append(answer["callNum"])
        assert len(set(nums)) == 1
    # a repeat while the first still runs: the same call, not yet done
    h = key("running")
    status, first = await api.request(
        "POST", f"/v1/functions/{sleepy}/invoke?blocking=false", json={"s": 1}, headers=h
    )
    status, again = await api.request(
        "POST", f"/v1/functions/{sleepy}/invoke", json={"s": 1}, headers=h
    )
    assert status == 200 and again["callNum"] == first["callNum"] and again["result"] == "slept"
    # many at once: one call
    h = key("concurrent")
    answers = await asyncio.gather(
        *[
            api.request("POST", f"/v1/functions/{echo}/invoke", json={"c": 1}, headers=h)
            for _ in range(10)
        ]
    )
    assert {a["callNum"] for _, a in answers} == {answers[0][1]["callNum"]}
    # the same key for other params, or another function: 422, nothing run
    before = await calls_of(echo)
    for path, body in [
        (f"/v1/functions/{echo}/invoke", {"c": 2}),
        (f"/v1/functions/{sleepy}/invoke", {"c": 1}),
        ("/invokeFunction", {"funcName": echo, "params": {"c": 3}}),
    ]:
        status, err = await api.request("POST", path, json=body, headers=h)
        assert error_of(status, err, 422) == "idempotency_mismatch"
    assert await calls_of(echo) == before
    # a batch
    h = key("batch")
    batch = {"calls": [{"function": echo, "params": {"i": i}} for i in range(5)]}
    status, one = await api.request("POST", "/v1/calls", json=batch, headers=h)
    status, two = await api.request("POST", "/v1/calls", json=batch, headers=h)
    assert status == 202 and one["callNums"] == two["callNums"] and len(one["callNums"]) == 5
    batch["calls"][4]["params"] = {"i": 99}
    status, err = await api.request("POST", "/v1/calls", json=batch, headers=h)
    assert error_of(status, err, 422) == "idempotency_mismatch"
    # keys that cannot be keys
    for bad in ("", "x" * 201, "naïve", "with space"):
        status, err = await api.request(
            "POST", f"/v1/functions/{echo}/invoke", json={}, headers={"Idempotency-Key": bad}
        )
        assert error_of(status, err, 400) == "bad_request", bad
    # keys minted in the api's epoch (what the SDK sends: no db read for a new one)
    async with api.session.get("/healthz") as r:
        epoch = r.headers["Fum-Epoch"]
    minted = {"Idempotency-Key": f"{epoch}.{unique('minted')}"}
    first_call, second_call = await asyncio.gather(
        api.request("POST", f"/v1/functions/{echo}/invoke", json={"m": 1}, headers=minted),
        api.request("POST", f"/v1/functions/{echo}/invoke", json={"m": 1}, headers=minted),
    )
    status, minted_again = await api.request(
        "POST", f"/v1/functions/{echo}/invoke?blocking=false", json={"m": 1}, headers=minted
    )
    assert minted_again["callNum"] == first_call[1]["callNum"] == second_call[1]["callNum"]
    minted_batch = {"Idempotency-Key": f"{epoch}.{unique('batch')}"}
    _, one = await api.request("POST", "/v1/calls", json=batch, headers=minted_batch)
    _, two = await api.request("POST", "/v1/calls", json=batch, headers=minted_batch)
    assert one["callNums"] == two["callNums"]
    # across a restart of the api (a new epoch): a key still stands for its call
    h = key("restart")
    status, call = await api.request(
        "POST", f"/v1/functions/{echo}/invoke", json={"r": 1}, headers=h
    )
    open_cluster.stop_process("api", signal.SIGKILL)
    open_cluster.start_api()
    open_cluster.wait_ready(30)
    async with aiohttp.ClientSession(open_cluster.url) as session:
        after = Api(session)
        for headers, params, num in [
            (h, {"r": 1}, call["callNum"]),
            (minted, {"m": 1}, first_call[1]["callNum"]),
        ]:
            status, again = await after.request(
                "POST", f"/v1/functions/{echo}/invoke", json=params, headers=headers
            )
            assert status == 200 and again["callNum"] == num
        async with session.get("/healthz") as r:
            assert r.headers["Fum-Epoch"] != epoch


# ---- API keys


@pytest.fixture(scope="module")
def keyed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory, auth=True)
    try:
        yield c
    finally:
        c.stop()


async def test_api_keys_guard_every_route_but_health_and_the_document(
    keyed_cluster: LocalCluster,
) -> None:
    assert keyed_cluster.api_key is not None
    admin = {"Authorization": f"Bearer {keyed_cluster.api_key}"}
    async with aiohttp.ClientSession(keyed_cluster.url) as session:
        api = Api(session)
        for path in ("/healthz", "/v1/openapi.json"):
            status, _ = await api.request("GET", path)
            assert status == 200, path
        guarded = [r for r in ROUTES if r.handler.__name__ not in PUBLIC]
        assert len(guarded) > 40
        for method, path, kwargs in [
            *((r.method, concrete(r.path), {}) for r in guarded),
            ("POST", "/registerRuntime", {"json": {"image": "pythonruntime", "run": "r"}}),
            ("POST", "/invokeFunction", {"json": {"funcName": "x"}}),
        ]:
            async with session.request(method, path, **kwargs) as r:
                assert r.status == 401, (method, path)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await r.json())["error"]["code"] == "unauthorized"
            bad = {"Authorization": "Bearer fum_not-a-key"}
            async with session.request(method, path, headers=bad, **kwargs) as r:
                assert r.status == 401 and "invalid_token" in r.headers["WWW-Authenticate"]
        status, runtimes = await api.request("GET", "/runtimes", headers=admin)
        assert status == 200 and "pythonruntime" not in runtimes  # nothing was registered
        status, _ = await api.request(
            "PUT",
            "/v1/runtimes/pyh",
            json={"image": "pythonruntime", "run": "python3 -m fum"},
            headers=admin,
        )
        assert status == 201
        form = aiohttp.FormData()
        form.add_field("module", handler_package("echo"), filename="p.tar.gz")
        form.add_field("runtime", "pyh")
        status, _ = await api.request("PUT", "/v1/functions/echo", data=form, headers=admin)
        assert status == 201
        # the worker fetches the package with its own key, and the call records its caller
        status, call = await api.request(
            "POST", "/v1/functions/echo/invoke", json={"k": 1}, headers=admin
        )
        assert status == 200 and call["result"] == {"k": 1} and call["caller"] == "admin"
        status, legacy = await api.request("GET", f"/call/{call['callNum']}", headers=admin)
        assert status == 200 and legacy["status"] == "DONE"
        # a key added to the file works without a restart; one taken out stops working
        bob = add_key(keyed_cluster.keys_file, "bob")
        deadline = time.monotonic() + 10
        while True:
            status, call = await api.request(
                "POST",
                "/v1/functions/echo/invoke",
                json={},
                headers={"Authorization": f"Bearer {bob}"},
            )
            if status == 200:
                break
            assert status == 401 and time.monotonic() < deadline
            await asyncio.sleep(0.2)
        assert call["caller"] == "bob"
        add_key(keyed_cluster.keys_file, "bob")  # replaced: the old key is gone
        deadline = time.monotonic() + 10
        while (
            await api.request("GET", "/v1/functions", headers={"Authorization": f"Bearer {bob}"})
        )[0] != 401:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)


def test_sdk_and_cli_send_the_key(keyed_cluster: LocalCluster, tmp_path: Path) -> None:
    from fum_client import Client
    from fum_client.errors import Unauthorized

    with Client(keyed_cluster.url, api_key=keyed_cluster.api_key) as client:
        assert client.health().status == "ok"
        assert isinstance(client.list_runtimes(), list)
    with Client(keyed_cluster.url, api_key="fum_wrong") as client, pytest.raises(Unauthorized):
        client.list_runtimes()
    env = {**os.environ, "FUM_CONFIG": str(tmp_path / "none.toml")}
    env.pop("FUM_API_KEY", None)
    fum = [sys.executable, "-m", "fum_cli", "--api-url", keyed_cluster.url]
    out = subprocess.run([*fum, "runtime", "ls"], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "API key" in out.stderr + out.stdout
    keyed = [*fum, "--api-key", str(keyed_cluster.api_key), "runtime", "ls"]
    out = subprocess.run(keyed, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_fum_up_auth_writes_a_key_the_cli_uses(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    env = {**os.environ, "FUM_CONFIG": str(config)}
    env.pop("FUM_API_KEY", None)
    env.pop("FUM_API_URL", None)
    data = tmp_path / "data"
    log = tmp_path / "up.log"
    with log.open("wb") as sink:
        up = subprocess.Popen(
            [sys.executable, "-m", "fum_cli", "up", "--auth", "--port", "0", "--data", str(data)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not (data / "fum-up.json").exists():
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert config.stat().st_mode & 0o777 == 0o600
        assert "api_key" in config.read_text()
        out = subprocess.run(
            [sys.executable, "-m", "fum_cli", "runtime", "ls", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == []
        # without the key, the same cluster refuses
        url = json.loads((data / "fum-up.json").read_text())["url"]
        plain = {**env, "FUM_CONFIG": str(tmp_path / "empty.toml")}
        out = subprocess.run(
            [sys.executable, "-m", "fum_cli", "--api-url", url, "runtime", "ls"],
            env=plain,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode != 0
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(30)


# ---- every route, each status the door gives whatever the route (the document says so)

# A value for each path parameter: a name, a number, a file of the dashboard, a sha256.
PATH_VALUES = {
    "callNum": "1",
    "sha256": "0" * 64,
    "file": "ui.js",
    "runtime": "pythonruntime",
    "funcName": "x",
    "id": "x",
}
JSON_ROUTES = ("json", "params")


def concrete(path: str, names: dict[str, str] | None = None) -> str:
    """The route's path with a value for each of its parameters."""
    values = {**PATH_VALUES, **(names or {})}
    for name in re.findall(r"{(\w+)}", path):
        value = values.get(name, "x")
        if name == "name":
            value = values.get("app" if path.startswith("/v1/apps/") else "function", "x")
        path = path.replace(f"{{{name}}}", value)
    return path


def body_media(route: Route) -> str:
    return {
        "multipart": "multipart/form-data; boundary=b",
        "archive": "application/gzip",
        "binary": "application/octet-stream",
    }.get(route.body, "application/json")


async def test_every_route_refuses_other_origins_and_bodies_of_other_types(api: Api) -> None:
    """403 for a page of a foreign origin on every route; 415 for a body of a type its
    route does not take, on every route with a body: the door's, before any handler."""
    for route in ROUTES:
        path = concrete(route.path)
        status, body = await api.request(route.method, path, headers={"Origin": EVIL})
        assert error_of(status, body, 403) == "forbidden", (route.method, path)
        if route.body is not None:
            status, body = await api.request(
                route.method, path, data=b"x", headers={"Content-Type": "text/plain"}
            )
            assert error_of(status, body, 415) == "unsupported_media_type", (route.method, path)


async def test_every_route_with_a_body_refuses_one_too_large(api: Api) -> None:
    """413 on every route with a body, for one beyond its limit (1 MiB of JSON, 2 MiB of
    a package, in open_cluster), sent to a function and an app that are there."""
    await api.runtime("pyh")
    names = {"function": await api.handler_function("echo", "pyh")}
    names["app"] = unique("big")
    hello_bye = Path(__file__).parent / "data" / "unum" / "hello-bye"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for file in sorted(hello_bye.rglob("*")):
            if file.is_file():
                tar.add(file, arcname=str(file.relative_to(hello_bye)), recursive=False)
    status, body = await api.request(
        "PUT",
        f"/v1/apps/{names['app']}",
        data=archive.getvalue(),
        headers={"Content-Type": "application/gzip"},
    )
    assert status == 201, body
    big = b" " * (3 << 20)
    for route in ROUTES:
        if route.body is None:
            continue
        path = concrete(route.path, {**names, "sha256": "1" * 64})
        status, body = await api.request(
            route.method, path, data=io.BytesIO(big), headers={"Content-Type": body_media(route)}
        )
        assert error_of(status, body, 413) == "too_large", (route.method, path)


# ---- the whole API, fuzzed


@pytest.fixture(scope="module")
def fuzzed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """An open api for schemathesis alone, whose answers are not recorded: the statuses
    the document promises are to be seen by tests that ask for them (tests/statuses.py),
    not by whatever a time-bounded fuzzer happened to reach."""
    c = start_cluster(tmp_path_factory, env={"FUM_STATUS_RECORD": "", "FUM_MAX_JSON_MB": "1"})
    try:
        yield c
    finally:
        c.stop()


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(
    fuzzed_cluster: LocalCluster, tmp_path: Path
) -> None:
    """Schemathesis generates requests from /v1/openapi.json (examples, edge cases of every
    schema, random data, and chains of calls), bounded in time, against this api: no 5xx,
    and every answer's status, media type, headers and body as the document says."""
    checks = (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{fuzzed_cluster.url}/v1/openapi.json",
            "--checks",
            ",".join(checks),
            "--max-time",
            "45",
            "--workers",
            "1",
            "--request-timeout",
            "30",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "passed" in out.stdout
