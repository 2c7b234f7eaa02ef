"""Events and triggers on a real cluster: call ends as events, joins, contexts that
survive restarts, events no trigger wanted."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner

from fum_cli.local import LocalCluster
from fum_cli.main import app
from fum_client import Client

from .conftest import start_cluster
from .support import Api, targz


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalCluster]:
    cluster = start_cluster(tmp_path_factory)
    try:
        yield cluster  # type: ignore[misc]
    finally:
        cluster.stop()


@pytest.fixture
async def api(local: LocalCluster) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(local.url) as session:
        yield Api(session)


async def until(check: Any, timeout: float = 30.0) -> Any:
    """Poll ``check()`` (a coroutine function) until it gives something true."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.05)


async def publish(api: Api, *events: dict[str, Any]) -> list[dict[str, Any]]:
    status, body = await api.request("POST", "/v1/events", json=list(events))
    assert status == 201, body
    return list(body["items"])


async def calls_of(api: Api, function: str) -> list[dict[str, Any]]:
    status, body = await api.request("GET", "/v1/calls", params={"function": function})
    assert status == 200, body
    return list(body["items"])


async def test_every_call_end_is_an_event(api: Api) -> None:
    await api.runtime("pyh")
    echo = await api.handler_function("echo", "pyh")
    fail = await api.handler_function("fail", "pyh")
    _, done = await api.invoke(echo, {"x": 1})
    _, failed = await api.invoke(fail, {"why": "no"})
    for call, kind in ((done, "fum.call.done"), (failed, "fum.call.failed")):
        subject = f"calls/{call['callNum']}"

        async def ended(subject: str = subject) -> Any:
            # a blocking invoke may answer before the db stored the result (and its event)
            status, body = await api.request("GET", "/v1/events", params={"subject": subject})
            assert status == 200, body
            return body["items"]

        (event,) = await until(ended)
        assert event["type"] == kind and event["specversion"] == "1.0"
        assert event["data"]["callNum"] == call["callNum"]
        assert event["data"]["status"] == call["status"]
    assert event["data"]["error"] and "boom: no" in event["data"]["error"]
    _, body = await api.request("GET", "/v1/events", params={"type": "fum.call.done"})
    assert any(e["data"]["result"] == {"x": 1} for e in body["items"])


async def test_join_of_five_fires_once(api: Api) -> None:
    await api.runtime("pyh")
    echo = await api.handler_function("echo", "pyh")
    trigger = {
        "activation": [{"subject": "orders", "type": "order.placed"}],
        "condition": {"kind": "join", "count": 5},
        "action": {"kind": "invoke", "function": echo},
        "context": {"shop": "a"},
        "transient": True,
    }
    status, body = await api.request("PUT", "/v1/triggers/join5", json=trigger)
    assert status == 201, body
    assert body["fired"] == 0 and body["active"]
    sent = await publish(
        api, *({"subject": "orders", "type": "order.placed", "data": {"n": n}} for n in range(4))
    )
    _, body = await api.request("GET", "/v1/triggers/join5")
    assert body["fired"] == 0 and body["events"] == [e["id"] for e in sent]
    # another type of the same subject does not count
    await publish(api, {"subject": "orders", "type": "order.cancelled"})
    sent += await publish(
        api, *({"subject": "orders", "type": "order.placed", "data": {"n": n}} for n in (4, 5, 6))
    )
    (call,) = await until(lambda: calls_of(api, echo))
    done = await api.wait_call(call["callNum"])
    assert [e["data"]["n"] for e in done["result"]["events"]] == [0, 1, 2, 3, 4]
    assert done["result"]["context"]["shop"] == "a"
    _, body = await api.request("GET", "/v1/triggers/join5")
    assert body["fired"] == 1 and not body["active"]  # transient: fired once, then done
    assert len(await calls_of(api, echo)) == 1


async def test_join_of_subjects_and_publish(api: Api) -> None:
    trigger = {
        "activation": [{"subject": s} for s in ("a", "b", "c")],
        "condition": {"kind": "join", "subjects": ["a", "b", "c"]},
        "action": {"kind": "publish", "event": {"subject": "abc", "type": "joined"}},
        "transient": False,
    }
    status, body = await api.request("PUT", "/v1/triggers/abc", json=trigger)
    assert status == 201, body
    sent = await publish(
        api,
        {"subject": "a", "type": "t"},
        {"subject": "a", "type": "t"},
        {"subject": "b", "type": "u"},
    )
    _, body = await api.request("GET", "/v1/events", params={"subject": "abc"})
    assert body["items"] == []
    sent += await publish(api, {"subject": "c", "type": "t"})
    _, body = await api.request("GET", "/v1/events", params={"subject": "abc"})
    (joined,) = body["items"]
    assert joined["type"] == "joined"
    assert joined["data"]["events"] == [sent[0]["id"], sent[2]["id"], sent[3]["id"]]
    _, body = await api.request("GET", "/v1/triggers/abc")
    assert body["fired"] == 1 and body["active"]  # not transient: it joins again
    # put again: replaced (200), with the context it is given
    status, body = await api.request(
        "PUT", "/v1/triggers/abc", json={**trigger, "context": {"v": 2}}
    )
    assert status == 200 and body["context"] == {"v": 2}, body


async def test_unmatched_event_is_kept(api: Api) -> None:
    (event,) = await publish(api, {"subject": "nobody", "type": "listens", "data": [1, 2]})
    status, body = await api.request("GET", "/v1/events", params={"subject": "nobody"})
    assert status == 200 and body["items"] == [event]
    # the same id again is the same event, stored once
    again = await publish(api, {"id": event["id"], "subject": "nobody", "type": "listens"})
    assert again == [event]
    # one event alone (not a list) is answered alone; pages go back by seq
    status, one = await api.request(
        "POST", "/v1/events", json={"subject": "nobody", "type": "later"}
    )
    assert status == 201 and one["type"] == "later" and one["seq"] > event["seq"]
    _, page = await api.request("GET", "/v1/events", params={"subject": "nobody", "limit": "1"})
    assert [e["id"] for e in page["items"]] == [one["id"]] and page["next"]
    _, rest = await api.request("GET", page["next"])
    assert [e["id"] for e in rest["items"]] == [event["id"]]


async def test_bad_triggers_and_events_are_refused(api: Api) -> None:
    cases: list[tuple[str, str, Any, int]] = [
        ("PUT", "/v1/triggers/x", {"activation": []}, 400),
        (
            "PUT",
            "/v1/triggers/x",
            {"activation": [{"subject": "s"}], "action": {"kind": "nope"}},
            400,
        ),
        (
            "PUT",
            "/v1/triggers/x",
            {"activation": [{"subject": "s"}], "condition": {"kind": "join"}},
            400,
        ),
        (
            "PUT",
            "/v1/triggers/x",
            {"activation": [{"subject": "s"}], "action": {"kind": "invoke", "function": "nope"}},
            404,
        ),
        (
            "PUT",
            "/v1/triggers/x",
            {"activation": [{"subject": "s"}], "action": {"kind": "resume", "execution": "e"}},
            400,
        ),
        ("PUT", "/v1/triggers/bad%20name", {"activation": [{"subject": "s"}]}, 400),
        ("POST", "/v1/events", {"subject": "s"}, 400),
        ("POST", "/v1/events", [], 400),
        ("GET", "/v1/triggers/never", None, 404),
        ("DELETE", "/v1/triggers/never", None, 404),
        ("GET", "/v1/executions/never", None, 404),
    ]
    for method, path, body, code in cases:
        status, answer = await api.request(method, path, json=body)
        assert status == code, (method, path, body, answer)
        assert "error" in answer
    status, _ = await api.request("GET", "/v1/triggers/x")
    assert status == 404  # nothing was stored


async def test_list_and_delete_triggers(api: Api) -> None:
    for name in ("lst-1", "lst-2", "lst-3"):
        status, body = await api.request(
            "PUT", f"/v1/triggers/{name}", json={"activation": [{"subject": f"s-{name}"}]}
        )
        assert status == 201, body
    _, body = await api.request("GET", "/v1/triggers", params={"subject": "s-lst-2"})
    assert [t["id"] for t in body["items"]] == ["lst-2"]
    _, body = await api.request("GET", "/v1/triggers", params={"after": "lst-1", "limit": "1"})
    assert [t["id"] for t in body["items"]] == ["lst-2"] and "after=lst-2" in body["next"]
    status, _ = await api.request("DELETE", "/v1/triggers/lst-2")
    assert status == 204
    _, body = await api.request("GET", "/v1/triggers", params={"subject": "s-lst-2"})
    assert body["items"] == []


async def test_context_counter_survives_api_and_db_restarts(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cluster = start_cluster(tmp_path_factory)
    try:
        trigger = {
            "activation": [{"subject": "ticks", "type": "tick"}],
            "condition": {"kind": "threshold", "key": "ticks", "value": 3},
            "action": {"kind": "publish", "event": {"subject": "alarm", "type": "three"}},
        }
        async with aiohttp.ClientSession(cluster.url) as session:
            api = Api(session)
            status, _ = await api.request("PUT", "/v1/triggers/ticks", json=trigger)
            assert status == 201
            await publish(api, {"subject": "ticks", "type": "tick"})
        for name in ("api", "db"):
            cluster.stop_process(name)
        cluster.start_db()
        cluster.start_api()
        cluster.wait_ready(60)
        async with aiohttp.ClientSession(cluster.url) as session:
            api = Api(session)
            _, body = await api.request("GET", "/v1/triggers/ticks")
            assert body["context"] == {"ticks": 1} and body["fired"] == 0
            await publish(api, {"subject": "ticks", "type": "tick"})
            cluster.stop_process("db")
            cluster.start_db()
            await publish(api, {"subject": "ticks", "type": "tick"})
            await publish(api, {"subject": "ticks", "type": "tick"})  # after it fired: kept
            _, body = await api.request("GET", "/v1/events", params={"subject": "alarm"})
            assert len(body["items"]) == 1
            _, body = await api.request("GET", "/v1/triggers/ticks")
            assert body["fired"] == 1 and not body["active"]
            _, body = await api.request("GET", "/v1/events", params={"subject": "ticks"})
            assert len(body["items"]) == 4
    finally:
        cluster.stop()


def test_cli_trigger_add_ls_show_rm(local: LocalCluster, tmp_path: Any) -> None:
    env = {"FUM_API_URL": local.url, "FUM_CONFIG": str(tmp_path / "c.toml"), "FUM_API_KEY": ""}

    def fum(*args: str) -> Any:
        result = CliRunner().invoke(app, list(args), env=env)
        return result

    added = fum(
        "trigger",
        "add",
        "cli-t",
        "--on",
        "s1",
        "--on",
        "s2",
        "--join-all",
        "--publish",
        "both@joined",
        "--context",
        '{"a": 1}',
        "--json",
    )
    assert added.exit_code == 0, added.output
    body = json.loads(added.stdout)
    assert body["condition"] == {"kind": "join", "subjects": ["s1", "s2"], "count": None}
    assert body["action"]["event"] == {"subject": "both", "type": "joined"}
    listed = fum("trigger", "ls", "--subject", "s2")
    assert listed.exit_code == 0 and "cli-t" in listed.stdout
    with Client(local.url) as client:
        client.publish_events({"subject": "s1", "type": "x"}, {"subject": "s2", "type": "x"})
        assert len(client.list_events(subject="both")["items"]) == 1
    shown = fum("trigger", "show", "cli-t")
    assert shown.exit_code == 0 and "fired" in shown.stdout
    assert json.loads(fum("trigger", "show", "cli-t", "--json").stdout)["fired"] == 1
    bad = fum("trigger", "add", "cli-u", "--on", "s", "--threshold", "nonsense")
    assert bad.exit_code != 0
    body_file = tmp_path / "t.json"
    body_file.write_text(json.dumps({"activation": [{"subject": "f"}], "transient": False}))
    from_file = fum("trigger", "add", "cli-f", "-f", str(body_file), "--json")
    assert from_file.exit_code == 0 and json.loads(from_file.stdout)["transient"] is False
    refused = fum("trigger", "add", "cli-g", "--on", "s", "--invoke", "no-such-function")
    assert refused.exit_code == 1 and "no function named" in refused.output
    assert fum("trigger", "rm", "cli-t").exit_code == 0
    gone = fum("trigger", "show", "cli-t")
    assert gone.exit_code == 1 and "no trigger named" in gone.output


async def test_async_client_events_and_triggers(local: LocalCluster) -> None:
    from fum_client import AsyncClient

    async with AsyncClient(local.url) as client:
        await client.put_trigger(
            "async-t", {"activation": [{"subject": "async-s"}], "transient": False}
        )
        (event,) = await client.publish_events({"subject": "async-s", "type": "t", "data": 1})
        page = await client.list_events(subject="async-s")
        assert page["items"] == [event]
        assert (await client.get_trigger("async-t"))["fired"] == 1
        listed = await client.list_triggers(subject="async-s")
        assert [t["id"] for t in listed["items"]] == ["async-t"]
        await client.delete_trigger("async-t")


def count_to_three(context: dict[str, Any], event: dict[str, Any]) -> bool:
    """A Python condition: counts the events' amounts in the context."""
    context["total"] = context.get("total", 0) + event["data"]["amount"]
    return bool(context["total"] >= 3)


def test_python_condition_and_action(local: LocalCluster) -> None:
    from fum_client import TriggerflowExecutor

    with TriggerflowExecutor(local.url) as tf:
        builtin = tf._executor.builtin_function
        trigger = tf.put_trigger(
            "py-t",
            [{"subject": "py-s"}],
            condition=count_to_three,
            action=lambda context, events: [context["total"], len(events)],
            context={"total": 0},
        )
        assert trigger["condition"]["kind"] == "python"
        client = tf.client
        client.publish_events(
            *({"subject": "py-s", "type": "t", "data": {"amount": 1}} for _ in range(5))
        )

        def fired() -> Any:
            t = client.get_trigger("py-t")
            return t if t["fired"] else None

        deadline = time.monotonic() + 60
        while (t := fired()) is None:
            assert time.monotonic() < deadline, client.get_trigger("py-t")
            time.sleep(0.05)
        assert t["context"] == {"total": 3} and not t["active"]  # transient: it stopped
        actions = [
            c
            for c in client.iter_calls(function=builtin)
            if isinstance(c.params, dict) and str(c.params.get("name")).endswith("<lambda>")
        ]
        (action,) = actions
        done = client.wait_call(action.call_num, timeout=60)
        from fum_client.serialize import decode_result

        assert decode_result(done.result) == [3, 3]  # the three events that made it fire


async def test_an_event_sent_twice_is_processed_once(api: Api) -> None:
    trigger = {
        "activation": [{"subject": "dups"}],
        "condition": {"kind": "threshold", "key": "n", "value": 2},
        "action": {"kind": "publish", "event": {"subject": "dups-out", "type": "two"}},
    }
    status, _ = await api.request("PUT", "/v1/triggers/dups", json=trigger)
    assert status == 201
    for _ in range(3):
        await publish(api, {"id": "the-same", "subject": "dups", "type": "t"})
    _, body = await api.request("GET", "/v1/triggers/dups")
    assert body["context"] == {"n": 1} and body["fired"] == 0
    await publish(api, {"id": "another", "subject": "dups", "type": "t"})
    _, body = await api.request("GET", "/v1/events", params={"subject": "dups-out"})
    assert len(body["items"]) == 1


BIG = "1180591620717411303424"  # 2**70: JSON has it, the control plane's msgpack does not


async def test_numbers_beyond_64_bits_neither_crash_nor_poison_the_db(api: Api) -> None:
    """Found by schemathesis: such a number in an event stopped the db at the next listing."""
    for method, path, body in [
        ("POST", "/v1/events", f'{{"subject": "big", "type": "t", "data": {{"n": {BIG}}}}}'),
        (
            "PUT",
            "/v1/triggers/big",
            '{"activation": [{"subject": "big"}], "condition": {"kind": "true"}, '
            f'"action": {{"kind": "pass"}}, "context": {{"n": {BIG}}}}}',
        ),
    ]:
        status, answer = await api.request(
            method, path, data=body, headers={"Content-Type": "application/json"}
        )
        assert status == 400 and "64-bit" in answer["error"]["message"], answer
    assert (await api.request("GET", "/v1/triggers/big"))[0] == 404  # nothing stored
    await api.runtime("pyh")
    status, _ = await api.deploy(
        "big-result", "pyh", targz({"main.py": f"def handle(p):\n    return {BIG}\n"})
    )
    assert status == 201
    status, call = await api.invoke("big-result")
    assert (status, call["status"], call["result"]) == (200, "DONE", int(BIG))
    found = await until(lambda: events_of(api, f"calls/{call['callNum']}"))
    assert found[0]["data"]["result"] == BIG  # carried as its JSON text
    status, page = await api.request("GET", "/v1/events")
    assert status == 200 and page["items"]
    assert (await api.request("GET", "/healthz"))[0] == 200  # the db is alive


async def events_of(api: Api, subject: str) -> list[dict[str, Any]] | None:
    status, page = await api.request("GET", "/v1/events", params={"subject": subject})
    return page["items"] if status == 200 and page["items"] else None
