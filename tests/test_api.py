"""The whole path of a call through a real local cluster (db, api, worker, miniworkers)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest

import fum_client._api
from fum_cli.local import LocalCluster
from fum_client import AsyncClient, Client

from .support import (
    HANDLER_RUNTIME,
    Api,
    curl,
    handler_package,
    invoke_dice,
    register_dice,
    targz,
    unique,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by .ci/run")
async def test_original_curl_sequence(cluster: LocalCluster) -> None:
    """The original design's curl examples, as written, against a started cluster."""
    url = cluster.url.removeprefix("http://")
    register_dice(url)
    num = invoke_dice(url)
    assert "pythonruntime" in json.loads(curl(f"{url}/runtimes"))
    assert "dice" in json.loads(curl(f"{url}/functions"))
    deadline = time.monotonic() + 60
    while True:
        call = json.loads(curl(f"{url}/call/{num}"))
        if call["status"] != "PENDING" and call["status"] != "RUNNING":
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert set(call) == {"funcName", "params", "callNum", "status", "result"}
    assert call["status"] == "DONE", call
    assert call["params"] == {"roll": "4d6"} and call["funcName"] == "dice"
    dice = json.loads(call["result"])  # the original keeps the result as text
    assert len(dice) == 4 and all(1 <= d <= 6 for d in dice)
    calls = json.loads(curl(f"{url}/calls"))
    assert calls[f"c{num}"]["callNum"] == num


async def test_blocking_and_non_blocking_invoke(api: Api) -> None:
    await api.runtime("pyh")
    name = await api.handler_function("echo", "pyh")
    status, call = await api.invoke(name, {"x": 1})
    assert status == 200 and call["status"] == "DONE" and call["result"] == {"x": 1}
    assert call["nodeId"] == 0 and call["attempts"] == 1 and call["durationMs"] >= 0
    status, call = await api.invoke(name, {"x": 2}, blocking=False)
    assert status == 202 and call["status"] == "PENDING"
    done = await api.wait_call(call["callNum"])
    assert done["result"] == {"x": 2}
    # a blocking call that does not end in time answers 202 with where to look
    sleepy = await api.handler_function("sleepy", "pyh")
    status, call = await api.invoke(sleepy, {"s": 1.5}, timeout=0.2)
    assert status == 202 and call["status"] in ("PENDING", "RUNNING")
    assert (await api.wait_call(call["callNum"]))["result"] == "slept"


async def test_blocking_calls_are_stored(api: Api) -> None:
    """A short blocking call is stored by its worker's result write (the api writes
    nothing); one still running after FUM_STORE_DELAY is stored by the api meanwhile."""
    await api.runtime("pyh")
    echo = await api.handler_function("echo", "pyh")
    await api.invoke(echo, {"warm": 1})  # the first call starts a sandbox: not short
    status, call = await api.invoke(echo, {"kept": 1})
    assert status == 200 and call["status"] == "DONE"
    deadline = time.monotonic() + 10
    while True:  # in the db, not only in the api's recent results: listed
        _, body = await api.request("GET", "/v1/calls", params={"function": echo})
        if len(body["items"]) == 2 and body["items"][0]["status"] == "DONE":
            break
        assert time.monotonic() < deadline, f"the short call was not stored: {body}"
        await asyncio.sleep(0.05)
    stored = body["items"][0]
    assert stored["callNum"] == call["callNum"]
    assert stored["params"] == {"kept": 1} and stored["result"] == {"kept": 1}

    sleepy = await api.handler_function("sleepy", "pyh")
    running = asyncio.ensure_future(api.invoke(sleepy, {"s": 1.0}))
    await asyncio.sleep(0.5)
    _, body = await api.request("GET", "/v1/calls", params={"function": sleepy})
    assert [c["status"] for c in body["items"]] in (["PENDING"], ["RUNNING"])
    status, call = await running
    assert status == 200 and call["result"] == "slept"
    # A client that waits less than FUM_STORE_DELAY gets a 202 naming a stored call.
    status, call = await api.invoke(sleepy, {"s": 0.5}, timeout=0.005)
    assert status == 202 and call["status"] in ("PENDING", "RUNNING")
    _, body = await api.request("GET", "/v1/calls", params={"function": sleepy})
    assert body["items"][0]["callNum"] == call["callNum"]
    assert (await api.wait_call(call["callNum"]))["result"] == "slept"


async def test_zip_and_tar_gz_two_functions_on_one_runtime(api: Api) -> None:
    from .support import handler_package

    await api.runtime("pyh")
    names = []
    for archive in ("tar.gz", "zip"):
        name = unique(f"echo-{archive.replace('.', '')}")
        status, fn = await api.deploy(
            name, "pyh", handler_package("echo", archive), filename=f"code.{archive}"
        )
        assert status == 201 and fn["runtime"] == "pyh" and fn["filename"] == f"code.{archive}"
        names.append(name)
    results = await asyncio.gather(*(api.invoke(n, {"n": n}) for n in names))
    assert [r[1]["result"] for r in results] == [{"n": n} for n in names]
    status, body = await api.request("GET", "/v1/functions")
    assert {n for n in names} <= {f["name"] for f in body["items"]}


async def test_calls_listed_filtered_and_paginated(api: Api) -> None:
    await api.runtime("pyh")
    echo = await api.handler_function("echo", "pyh")
    fail = await api.handler_function("fail", "pyh")
    for i in range(5):
        await api.invoke(echo, {"i": i})
    await api.invoke(fail, {"why": "listed"})
    status, body = await api.request("GET", "/v1/calls", params={"function": echo})
    assert status == 200 and [c["params"]["i"] for c in body["items"]] == [4, 3, 2, 1, 0]
    status, body = await api.request(
        "GET", "/v1/calls", params={"status": "ERROR", "function": fail}
    )
    assert len(body["items"]) == 1 and body["items"][0]["funcName"] == fail
    # pages of two, following "next"
    seen, url = [], f"/v1/calls?function={echo}&limit=2"
    while url:
        status, body = await api.request("GET", url)
        seen += [c["params"]["i"] for c in body["items"]]
        url = body["next"]
    assert seen == [4, 3, 2, 1, 0]
    status, body = await api.request("GET", "/v1/calls", params={"status": "NOPE"})
    assert status == 400 and body["error"]["code"] == "bad_request"


async def test_function_error_timeout_and_crash(api: Api) -> None:
    await api.runtime("pyh")
    fail = await api.handler_function("fail", "pyh")
    status, call = await api.invoke(fail, {"why": "because"})
    assert (
        status == 200 and call["status"] == "ERROR" and "ValueError: boom: because" in call["error"]
    )

    sleepy = await api.handler_function("sleepy", "pyh", timeout=1)
    status, call = await api.invoke(sleepy, {"s": 30})
    assert status == 200 and call["status"] == "TIMEOUT" and "1s" in call["error"]
    status, call = await api.invoke(sleepy, {"s": 0})
    assert status == 200 and call["status"] == "DONE" and call["result"] == "slept"

    crash = await api.handler_function("crash", "pyh")
    _, call = await api.invoke(crash)
    assert call["status"] == "ERROR"
    assert "status 3" in call["error"] and "about to die" in call["error"]
    _, call = await api.invoke(crash)  # the sandbox was started again
    assert call["status"] == "ERROR" and "about to die" in call["error"]


# Ends of a function's process inside a call: the handler's (or the loop's) last words,
# and what the call's error must say about its exit.
EXITS = {
    "system-exit": ("raise SystemExit('boom')", "status 1"),
    "sys-exit-3": ("sys.exit(3)", "status 3"),
    "os-exit-4": ("os._exit(4)", "status 4"),
    "signal": ("os.kill(os.getpid(), signal.SIGKILL)", "signal 9"),
}


@pytest.mark.parametrize("style", ["handler", "loop"])
@pytest.mark.parametrize("ending", list(EXITS))
async def test_a_process_that_ends_mid_call_is_an_error_and_retried(
    api: Api, style: str, ending: str
) -> None:
    """Whatever ends the process inside a call, the call is ERROR with the exit status and
    the tail of the output, after the retry of docs/SCHEDULING.md: never DONE."""
    code, expected = EXITS[ending]
    if style == "handler":
        await api.runtime("pyh")
        source = f"def handle(params):\n    print('last words', flush=True)\n    {code}\n"
        files, runtime = {"main.py": "import os, signal, sys\n" + source}, "pyh"
    else:
        await api.runtime("pyloop", {**HANDLER_RUNTIME, "run": "python3 loop.py"})
        loop = "while True:\n    fum.fum_yield()\n    print('last words', flush=True)\n"
        files = {"loop.py": f"import os, signal, sys\nimport fum\n{loop}    {code}\n"}
        runtime = "pyloop"
    name = unique(ending)
    status, body = await api.deploy(name, runtime, targz(files))
    assert status == 201, body
    status, call = await api.invoke(name, {})
    assert status == 200 and call["status"] == "ERROR", call
    assert expected in call["error"] and "last words" in call["error"], call["error"]
    assert call["attempts"] == 2, call


async def test_logs_are_captured_per_call(api: Api) -> None:
    await api.runtime("pyh")
    chatty = await api.handler_function("chatty", "pyh")
    nums = []
    for n in (1, 2):
        _, call = await api.invoke(chatty, {"n": n})
        nums.append(call["callNum"])
    for n, num in zip((1, 2), nums, strict=True):
        status, body = await api.request("GET", f"/v1/calls/{num}/logs")
        assert status == 200
        assert f"out: {n}" in body["logs"] and f"err: {n}" in body["logs"]
        assert f"out: {3 - n}" not in body["logs"]


async def test_not_found_and_bad_requests(api: Api) -> None:
    status, body = await api.invoke(unique("nobody"), {})
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await api.request("POST", "/invokeFunction", json={"funcName": "nobody"})
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await api.deploy(unique("f"), unique("no-runtime"), b"x")
    assert status in (400, 404)
    status, body = await api.request("GET", "/v1/runtimes/nope")
    assert status == 404
    status, body = await api.request("GET", "/call/999999")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await api.request("GET", "/call/abc")
    assert status == 404
    # malformed JSON, missing fields, wrong types
    for path, data in [
        ("/registerRuntime", b"{not json"),
        ("/registerRuntime", b'{"image": "x"}'),
        ("/invokeFunction", b'{"params": {}}'),
        ("/invokeFunction", b"[1, 2"),
    ]:
        status, body = await api.request(
            "POST", path, data=data, headers={"Content-Type": "application/json"}
        )
        assert status == 400, (path, body)
        assert body["error"]["code"] == "bad_request" and body["error"]["message"]
    await api.runtime("pyh")
    echo = await api.handler_function("echo", "pyh")
    status, body = await api.request(
        "POST",
        f"/v1/functions/{echo}/invoke",
        data=b"{oops",
        headers={"Content-Type": "application/json"},
    )
    assert status == 400 and "malformed" in body["error"]["message"]
    status, body = await api.request(
        "PUT", "/v1/runtimes/bad name!", json={"image": "i", "run": "r"}
    )
    assert status == 400


async def test_corrupt_archive_is_refused_and_nothing_is_stored(api: Api) -> None:
    from .support import handler_package

    await api.runtime("pyh")
    fresh = unique("corrupt")
    good = handler_package("echo")
    for junk in (b"not an archive at all", good[: len(good) // 2], b"PK\x03\x04garbage"):
        status, body = await api.deploy(fresh, "pyh", junk)
        assert status == 400 and body["error"]["code"] == "bad_request", body
        status, _ = await api.request("GET", f"/v1/functions/{fresh}")
        assert status == 404
    # replacing a working function with a corrupt package keeps the old one
    echo = await api.handler_function("echo", "pyh")
    _, before = await api.request("GET", f"/v1/functions/{echo}")
    status, _ = await api.deploy(echo, "pyh", b"\x1f\x8bbroken gzip")
    assert status == 400
    _, after = await api.request("GET", f"/v1/functions/{echo}")
    assert after == before
    status, call = await api.invoke(echo, {"still": "works"})
    assert call["result"] == {"still": "works"}


async def test_runtime_in_use_cannot_be_deleted(api: Api) -> None:
    rt = unique("rt")
    await api.runtime(rt)
    echo = await api.handler_function("echo", rt)
    status, body = await api.request("DELETE", f"/v1/runtimes/{rt}")
    assert status == 409 and body["error"]["code"] == "conflict"
    status, _ = await api.request("DELETE", f"/v1/functions/{echo}")
    assert status == 204
    status, _ = await api.request("DELETE", f"/v1/runtimes/{rt}")
    assert status == 204
    status, _ = await api.request("GET", f"/v1/runtimes/{rt}")
    assert status == 404


async def test_openapi_document_matches_the_routes(api: Api, cluster: LocalCluster) -> None:
    from services.api.app import init_app
    from services.api.routes import route_keys
    from services.api.settings import ApiSettings

    status, doc = await api.request("GET", "/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == route_keys(init_app(ApiSettings()))
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert "403" in op["responses"], path  # the door's, on every route
            assert ("401" in op["responses"]) == ("security" in op), path
            for code, response in op["responses"].items():
                content = response.get("content", {})
                if int(code) >= 400:
                    assert content == {"application/json": {"schema": error}}, (path, code)
                elif code != "204":  # every answer with a body says what it holds
                    assert content and all("schema" in c for c in content.values()), (path, code)
            for ref in json.dumps(op).split('"$ref": "')[1:]:
                name = ref.split('"')[0].rsplit("/", 1)[1]
                assert name in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


async def test_batch_create_and_wait(api: Api) -> None:
    await api.runtime("pyh")
    echo = await api.handler_function("echo", "pyh")
    sleepy = await api.handler_function("sleepy", "pyh")
    calls = [{"function": echo, "params": {"i": i}} for i in range(50)]
    status, body = await api.request("POST", "/v1/calls", json={"calls": calls})
    assert status == 202 and len(body["callNums"]) == 50
    nums = body["callNums"]
    status, waited = await api.request(
        "POST", "/v1/calls/wait", json={"callNums": nums, "timeout": 30}
    )
    assert status == 200 and waited["pending"] == []
    assert [c["result"]["i"] for c in waited["done"]] == list(range(50))
    # FIRST_COMPLETED answers as soon as one is done; a zero timeout only looks
    _, fast = await api.request(
        "POST",
        "/v1/calls",
        json={
            "calls": [
                {"function": sleepy, "params": {"s": 3}},
                {"function": echo, "params": {"q": 1}},
            ]
        },
    )
    status, first = await api.request(
        "POST",
        "/v1/calls/wait",
        json={"callNums": fast["callNums"], "timeout": 30, "returnWhen": "FIRST_COMPLETED"},
    )
    assert [c["funcName"] for c in first["done"]] == [echo]
    assert first["pending"] == [fast["callNums"][0]]
    # all or nothing: one unknown function stores no call
    _, last = await api.request("GET", "/v1/calls", params={"limit": 1})
    status, err = await api.request(
        "POST", "/v1/calls", json={"calls": [{"function": echo}, {"function": unique("nobody")}]}
    )
    assert status == 404 and err["error"]["code"] == "not_found"
    _, still = await api.request("GET", "/v1/calls", params={"limit": 1})
    assert still["items"][0]["callNum"] == last["items"][0]["callNum"]
    status, err = await api.request("POST", "/v1/calls", json={"calls": []})
    assert status == 400
    status, err = await api.request("POST", "/v1/calls/wait", json={"callNums": [10**9]})
    assert status == 404


async def test_limits_are_set_at_upload_and_updated(api: Api) -> None:
    await api.runtime("pyh")
    name = await api.handler_function("echo", "pyh", timeout=5, concurrency=2, maxContainers=3)
    _, fn = await api.request("GET", f"/v1/functions/{name}")
    assert fn["limits"]["timeout"] == 5 and fn["limits"]["concurrency"] == 2
    assert fn["limits"]["maxContainers"] == 3 and fn["limits"]["minWarm"] == 0
    status, fn = await api.request(
        "PATCH", f"/v1/functions/{name}", json={"timeout": 7, "concurrency": None}
    )
    assert status == 200 and fn["limits"]["timeout"] == 7 and fn["limits"]["concurrency"] is None
    assert fn["limits"]["maxContainers"] == 3
    for bad in ({"nope": 1}, {"timeout": -1}, {"minWarm": 4}, {"memory": "lots"}):
        status, body = await api.request("PATCH", f"/v1/functions/{name}", json=bad)
        assert status == 400 and body["error"]["code"] == "bad_request", bad
    _, fn = await api.request("GET", f"/v1/functions/{name}")
    assert fn["limits"]["timeout"] == 7  # a refused change changed nothing
    status, _ = await api.deploy(unique("f"), "pyh", b"", concurrency=0)
    assert status == 400


async def test_functions_and_runtimes_are_paginated(
    api: Api, cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = unique("pg")
    runtimes = [f"{prefix}-rt{i}" for i in range(3)]
    for name in runtimes:
        await api.runtime(name)
    functions = [f"{prefix}-fn{i}" for i in range(5)]
    for name in functions:
        status, body = await api.deploy(name, runtimes[0], handler_package("echo"))
        assert status == 201, body
    for path, names in (("/v1/functions", functions), ("/v1/runtimes", runtimes)):
        # every page in name order, "next" until the last; the same query beside the cursor
        seen: list[str] = []
        url: str | None = f"{path}?limit=2"
        while url is not None:
            status, page = await api.request("GET", url)
            assert status == 200 and len(page["items"]) <= 2, page
            seen += [item["name"] for item in page["items"]]
            url = page["next"]
            assert url is None or "limit=2" in url
        assert seen == sorted(seen) and [n for n in seen if n.startswith(prefix)] == names
        status, page = await api.request("GET", path, params={"after": names[-2]})
        assert [item["name"] for item in page["items"]][:1] == names[-1:]
        status, body = await api.request("GET", path, params={"limit": "0"})
        assert status == 400 and "limit" in body["error"]["message"]
    # the SDK follows the pages (made short here so that five functions take three)
    monkeypatch.setattr(fum_client._api, "PAGE", 2)
    with Client(cluster.url) as client:
        assert [f.name for f in client.list_functions() if f.name.startswith(prefix)] == functions
    async with AsyncClient(cluster.url) as aclient:
        listed = await aclient.list_runtimes()
        assert [r.name for r in listed if r.name.startswith(prefix)] == runtimes


async def test_the_keepers_tree_is_read_through_the_api(api: Api, cluster: LocalCluster) -> None:
    """GET /v1/keeper/nodes: a znode's stat, data preview and children, as kazoo made them;
    then, the keeper gone, a 503, and its tree again once it is back."""
    import base64

    from kazoo.security import make_digest_acl

    from .keeper import kazoo_client

    base = "/" + unique("api-tree")
    blob = bytes(range(256)) * 8  # not UTF-8, and longer than the preview
    with kazoo_client(cluster.keeper_hosts) as zk:
        zk.create(f"{base}/config", "héllo".encode(), makepath=True)
        zk.set(f"{base}/config", "héllo, again".encode())
        zk.create(f"{base}/blob", blob)
        zk.create(f"{base}/owned", b"mine", ephemeral=True)
        zk.create(f"{base}/secret", b"s", acl=[make_digest_acl("someone", "pw", all=True)])
        owner = zk.client_id[0]

        status, root = await api.request("GET", "/v1/keeper/nodes")  # the root by default
        assert status == 200 and root["path"] == "/" and base[1:] in root["children"], root
        status, node = await api.request("GET", "/v1/keeper/nodes", params={"path": base})
        assert status == 200, node
        assert node["children"] == ["blob", "config", "owned", "secret"]
        assert node["stat"]["numChildren"] == 4 and node["stat"]["ephemeralOwner"] is None

        status, config = await api.request("GET", "/v1/keeper/nodes?path=" + f"{base}/config")
        assert status == 200, config
        assert (config["data"], config["encoding"], config["truncated"]) == (
            "héllo, again",
            "utf-8",
            False,
        )
        assert config["stat"]["version"] == 1 and config["stat"]["dataLength"] == 13
        assert config["readable"] and config["children"] == []

        status, node = await api.request("GET", "/v1/keeper/nodes", params={"path": f"{base}/blob"})
        assert status == 200 and node["encoding"] == "base64" and node["truncated"], node
        assert base64.b64decode(node["data"]) == blob[:1024]
        assert node["stat"]["dataLength"] == len(blob)

        status, node = await api.request(
            "GET", "/v1/keeper/nodes", params={"path": f"{base}/owned"}
        )
        assert status == 200 and node["stat"]["ephemeralOwner"] == hex(owner), node

        status, node = await api.request(
            "GET", "/v1/keeper/nodes", params={"path": f"{base}/secret"}
        )
        assert status == 200 and not node["readable"] and node["data"] is None, node
        assert node["stat"]["dataLength"] == 1  # the stat is anyone's to read

    status, body = await api.request("GET", "/v1/keeper/nodes", params={"path": f"{base}/owned"})
    assert status == 404 and body["error"]["code"] == "not_found"  # its session ended
    for bad in ("relative", f"{base}/", f"{base}//config", f"{base}/../x", "/a\x01b"):
        status, body = await api.request("GET", "/v1/keeper/nodes", params={"path": bad})
        assert status == 400 and body["error"]["code"] == "bad_request", (bad, body)

    cluster.stop_process("keeper")
    try:
        status, body = await api.request("GET", "/v1/keeper/nodes", params={"path": base})
        assert status == 503 and body["error"]["code"] == "unavailable", body
    finally:
        cluster.start_keeper("keep")
    deadline = time.monotonic() + 30
    while (await api.request("GET", "/v1/keeper/nodes", params={"path": base}))[0] != 200:
        assert time.monotonic() < deadline, "the api never read the keeper again"
        await asyncio.sleep(0.2)
