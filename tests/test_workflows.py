"""Workflow apps in the unum style on a real cluster: deploy, sessions, semantics, and
exactly one result per instance (services/workflows, docs/WORKFLOWS.md)."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from fum_cli.local import LocalCluster
from fum_cli.main import app as cli

from .conftest import start_cluster
from .workflows import DATA, IDENTITY, Apps, app_archive, apps_of, pack


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory, env={"FUM_SWEEP_INTERVAL": "1"})
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def apps(cluster: LocalCluster) -> AsyncIterator[Apps]:
    async with apps_of(cluster) as client:
        yield client


async def test_the_appstore_hello_bye_branches(apps: Apps) -> None:
    created = await apps.deployed("hellobye", pack(DATA / "hello-bye"))
    assert created["start"] == "Start"
    assert created["functions"] == [f"hellobye.{n}" for n in ("Bye", "Hello", "Start", "World")]
    assert await apps.deploy("hellobye", pack(DATA / "hello-bye")) == (200, created)  # again
    for word, expected in (("hello", "Hello world!"), ("bye", "Bye world!")):
        done = await apps.finished("hellobye", {"Data": {"Source": "http", "Value": word}})
        assert (done["status"], done["result"]) == ("DONE", expected), done
        names = [i["name"] for i in done["instances"]]
        branch = "Hello-unumIndex-0" if word == "hello" else "Bye-unumIndex-1"
        assert names == ["Start", branch, f"World-unumIndex-{branch[-1]}"]
        assert all(i["status"] == "DONE" for i in done["instances"])


BRANCH = {
    "Start": (
        {
            "Start": True,
            "Next": [
                {"Name": "Left1", "Conditional": "$ret == 'left'"},
                {"Name": "Right1", "Conditional": "$ret == 'right'"},
            ],
            "NextInput": "Scalar",
        },
        "def lambda_handler(event, context):\n    return event['go']\n",
    ),
    "Left1": ({"Next": {"Name": "Left2"}}, "def lambda_handler(e, c):\n    return e + '>L1'\n"),
    "Left2": ({}, "def lambda_handler(e, c):\n    return e + '>L2'\n"),
    "Right1": ({"Next": {"Name": "Right2"}}, "def lambda_handler(e, c):\n    return e + '>R1'\n"),
    "Right2": ({}, "def lambda_handler(e, c):\n    return [e + '>R2', c.function_name]\n"),
}


async def test_a_branch_picks_one_of_two_chains(apps: Apps) -> None:
    await apps.deployed("branch", app_archive(BRANCH))
    left = await apps.finished("branch", {"go": "left"})  # a bare value is the Value
    assert (left["status"], left["result"]) == ("DONE", "left>L1>L2")
    assert [i["name"] for i in left["instances"]] == [
        "Start",
        "Left1-unumIndex-0",
        "Left2-unumIndex-0",
    ]
    right = await apps.finished("branch", {"Data": {"Source": "http", "Value": {"go": "right"}}})
    assert right["result"] == ["right>R1>R2", "branch.Right2"]  # context.function_name
    nowhere = await apps.finished("branch", {"go": "up"})  # no Conditional holds: Start ends it
    assert (nowhere["status"], nowhere["result"]) == ("DONE", "up")


LOOP = {
    "Step": (
        {
            "Start": True,
            "Next": {"Name": "Step", "InputType": "Scalar", "Conditional": "$0 < $size-1"},
            "Next Payload Modifiers": ["$0=$0+1"],
        },
        "def lambda_handler(event, context):\n    return event + [len(event)]\n",
    )
}


async def test_a_self_loop_of_ten_steps(apps: Apps) -> None:
    await apps.deployed("loop", app_archive(LOOP))
    event = {
        "Data": {"Source": "http", "Value": []},
        "Fan-out": {"Type": "Map", "Index": 0, "Size": 10},
    }
    done = await apps.finished("loop", event)
    assert (done["status"], done["result"]) == ("DONE", list(range(10)))
    assert [i["name"] for i in done["instances"]] == [f"Step-unumIndex-{i}" for i in range(10)]
    assert [i["ends"] for i in done["instances"]] == [False] * 9 + [True]


FAILING = {
    "First": ({"Start": True, "Next": {"Name": "Boom"}}, IDENTITY),
    "Boom": (
        {"Next": {"Name": "Never"}},
        "def lambda_handler(event, context):\n    raise ValueError('no ' + str(event))\n",
    ),
    "Never": ({}, IDENTITY),
}


async def test_a_step_that_raises_ends_the_session_error_naming_it(apps: Apps) -> None:
    await apps.deployed("failing", app_archive(FAILING))
    done = await apps.finished("failing", "luck")
    assert done["status"] == "ERROR"
    assert done["error"].startswith("Boom (call ") and "ValueError: no luck" in done["error"]
    assert [(i["name"], i["status"]) for i in done["instances"]] == [
        ("First", "DONE"),
        ("Boom", "ERROR"),
    ]


async def test_non_blocking_start_listing_and_cancel(apps: Apps) -> None:
    slow = {
        "Wait": (
            {
                "Start": True,
                "Next": {"Name": "Wait", "Conditional": "$0 < $size-1"},
                "Next Payload Modifiers": ["$0=$0+1"],
            },
            "import time\n\ndef lambda_handler(event, context):\n"
            "    time.sleep(0.3)\n    return event\n",
        )
    }
    await apps.deployed("slow", app_archive(slow))
    event = {"Data": {"Value": 1}, "Fan-out": {"Type": "Map", "Index": 0, "Size": 1000}}
    status, started = await apps.run("slow", event, blocking=False)
    assert (status, started["status"]) == (202, "RUNNING"), started
    status, listed = await apps.api.request("GET", "/v1/apps/slow/sessions")
    assert status == 200 and started["id"] in [s["id"] for s in listed["items"]]
    status, cancelled = await apps.api.request("DELETE", f"/v1/apps/slow/sessions/{started['id']}")
    assert (status, cancelled["status"]) == (200, "CANCELLED"), cancelled
    # the step running when it was cancelled ends, and sends nothing on
    deadline = time.monotonic() + 30
    while True:
        final = await apps.session("slow", started["id"])
        if all(i["status"] in ("DONE", "ERROR") for i in final["instances"]):
            break
        assert time.monotonic() < deadline, final
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # nothing more comes: the count stays
    again = await apps.session("slow", started["id"])
    assert len(again["instances"]) == len(final["instances"]) < 10
    assert again["status"] == "CANCELLED"
    status, _ = await apps.api.request("GET", f"/v1/apps/branch/sessions/{started['id']}")
    assert status == 404  # a session of another app


@pytest.mark.parametrize(
    ("functions", "field"),
    [
        ({"A": ({"Start": True}, IDENTITY), "B": ({"Start": True}, IDENTITY)}, "Start"),
        (
            {"A": ({"Start": True, "Next": {"Name": "Ghost"}}, IDENTITY)},
            "a/unum_config.json: Next.Name",
        ),
        (
            {"A": ({"Start": True, "Next": {"Name": "A", "Conditional": "$ret = 'x'"}}, IDENTITY)},
            "a/unum_config.json: Next.Conditional",
        ),
    ],
)
async def test_bad_apps_are_refused_and_nothing_is_stored(
    apps: Apps, functions: dict[str, tuple[dict[str, object], str]], field: str
) -> None:
    _, before = await apps.api.request("GET", "/v1/functions")
    status, body = await apps.deploy("bad", app_archive(functions))
    assert status == 400 and field in body["error"]["message"], body
    _, after = await apps.api.request("GET", "/v1/functions")
    assert after == before
    status, _ = await apps.run("bad", 1)
    assert status == 404


async def test_a_bad_event_or_listing_of_an_app_is_refused(apps: Apps) -> None:
    await apps.deployed("badevent", app_archive({"A": ({"Start": True}, IDENTITY)}))
    for event, part in [
        (b'{"Data": ', "malformed JSON"),
        (b'{"Data": {"Source": "s3", "Value": 1}}', "Data.Source"),
        (b'{"Data": {"Value": 1}, "Extra": 2}', "unknown fields"),
        (b'{"Data": 7}', "Data must be an object"),
    ]:
        status, body = await apps.api.request(
            "POST",
            "/v1/apps/badevent/sessions",
            data=event,
            headers={"Content-Type": "application/json"},
        )
        assert status == 400 and part in body["error"]["message"], (event, body)
    status, body = await apps.api.request("GET", "/v1/apps/badevent/sessions?limit=0")
    assert status == 400 and "limit" in body["error"]["message"], body
    _, listed = await apps.api.request("GET", "/v1/apps/badevent/sessions")
    assert listed["items"] == []  # nothing was started


async def test_an_app_without_app_py_is_refused(apps: Apps) -> None:
    archive = app_archive({"A": ({"Start": True}, IDENTITY)})
    buf = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive)) as src,
        tarfile.open(fileobj=buf, mode="w:gz") as dst,
    ):
        for member in src.getmembers():
            if member.name != "a/app.py":
                dst.addfile(member, src.extractfile(member))
    status, body = await apps.deploy("noapp", buf.getvalue())
    assert status == 400 and "a/app.py: missing" in body["error"]["message"], body
    status, body = await apps.api.request(
        "PUT",
        "/v1/apps/noapp",
        data=b"not an archive",
        headers={"Content-Type": "application/gzip"},
    )
    assert status == 400, body
    status, body = await apps.api.request(
        "PUT", "/v1/apps/noapp", data=archive, headers={"Content-Type": "text/plain"}
    )
    assert status == 415, body


MAP_SUM = {
    "Split": (
        {"Start": True, "Next": {"Name": "Square", "InputType": "Map"}},
        "def lambda_handler(event, context):\n    return list(range(event))\n",
    ),
    "Square": (
        {
            "Next": {"Name": "Sum", "InputType": {"Fan-in": {"Values": ["Square-unumIndex-*"]}}},
            "Next Payload Modifiers": ["Pop"],
        },
        "def lambda_handler(event, context):\n    return event * event\n",
    ),
    "Sum": ({}, "def lambda_handler(event, context):\n    return [sum(event), event[:3]]\n"),
}


async def test_a_map_of_100_with_a_fan_in_that_sums(apps: Apps) -> None:
    await apps.deployed("mapsum", app_archive(MAP_SUM))
    done = await apps.finished("mapsum", 100)
    assert done["status"] == "DONE", done
    assert done["result"] == [sum(i * i for i in range(100)), [0, 1, 4]]  # in Values order
    names = [i["name"] for i in done["instances"]]
    assert names[0] == "Split" and names[-1] == "Sum"
    assert sorted(names[1:-1]) == sorted(f"Square-unumIndex-{i}" for i in range(100))
    assert [i["ends"] for i in done["instances"]] == [False] * 101 + [True]


PARALLEL = {
    "Fork": (
        {
            "Start": True,
            "Next": [{"Name": "Double"}, {"Name": "Negate"}, {"Name": "Describe"}],
            "NextInput": "Scalar",
        },
        IDENTITY,
    ),
    **{
        name: (
            {
                "Next": {
                    "Name": "Join",
                    "InputType": {
                        "Fan-in": {
                            "Values": [
                                "Double-unumIndex-0",
                                "Negate-unumIndex-1",
                                "Describe-unumIndex-2",
                            ]
                        }
                    },
                },
                "Next Payload Modifiers": ["Pop"],
            },
            f"def lambda_handler(event, context):\n    return {expr}\n",
        )
        for name, expr in (
            ("Double", "event * 2"),
            ("Negate", "-event"),
            ("Describe", "f'{event} is ' + ('odd' if event % 2 else 'even')"),
        )
    },
    "Join": ({}, IDENTITY),
}


async def test_a_parallel_fan_out_of_three_with_an_explicit_fan_in(apps: Apps) -> None:
    await apps.deployed("parallel", app_archive(PARALLEL))
    done = await apps.finished("parallel", 7)
    assert (done["status"], done["result"]) == ("DONE", [14, -7, "7 is odd"]), done
    names = sorted(i["name"] for i in done["instances"])
    assert names == [
        "Describe-unumIndex-2",
        "Double-unumIndex-0",
        "Fork",
        "Join",
        "Negate-unumIndex-1",
    ]


NESTED = {
    "Rows": (
        {"Start": True, "Next": {"Name": "Row", "InputType": "Map"}},
        IDENTITY,  # a list of lists
    ),
    "Row": ({"Next": {"Name": "Cell", "InputType": "Map"}}, IDENTITY),
    "Cell": (
        {
            "Next": {
                "Name": "RowSum",
                "InputType": {"Fan-in": {"Values": ["Cell-unumIndex-*.$1"]}},
            },
            "Next Payload Modifiers": ["Pop"],
        },
        "def lambda_handler(event, context):\n    return event * 10\n",
    ),
    "RowSum": (
        {
            "Next": {"Name": "Total", "InputType": {"Fan-in": {"Values": ["RowSum-unumIndex-*"]}}},
            "Next Payload Modifiers": ["Pop"],
        },
        "def lambda_handler(event, context):\n    return sum(event)\n",
    ),
    "Total": ({}, IDENTITY),
}


async def test_a_nested_map_with_fan_ins(apps: Apps) -> None:
    await apps.deployed("nested", app_archive(NESTED))
    rows = [[1, 2, 3], [4], [5, 6]]
    done = await apps.finished("nested", rows)
    assert (done["status"], done["result"]) == ("DONE", [60, 40, 110]), done
    names = {i["name"] for i in done["instances"]}
    assert {"Cell-unumIndex-2.0", "Cell-unumIndex-0.1", "RowSum-unumIndex-2", "Total"} <= names
    assert len(names) == 1 + 3 + 6 + 3 + 1


async def test_the_appstore_map(apps: Apps) -> None:
    await apps.deployed("map", pack(DATA / "map"))
    event = {"Data": {"Source": "http", "Value": [1, 2, 3, 4, 5]}}  # its events/event.json
    done = await apps.finished("map", event)
    # Summary gets the F1 outputs in the order of the input array, and returns them
    assert (done["status"], done["result"]) == ("DONE", [1, 2, 3, 4, 5]), done
    assert len(done["instances"]) == 7


async def test_a_map_over_a_value_that_is_no_list_ends_error(apps: Apps) -> None:
    await apps.deployed("mapsum", app_archive(MAP_SUM))
    status, done = await apps.run("mapsum", "three")
    assert (status, done["status"]) == (200, "ERROR"), done
    assert done["error"].startswith("Split (call "), done


def fum(cluster: LocalCluster, tmp_path: Path, *args: str) -> Result:
    """``fum ARGS`` in-process (typer's runner), against the module's cluster."""
    env = {"FUM_API_URL": cluster.url, "FUM_CONFIG": str(tmp_path / "c.toml"), "FUM_API_KEY": ""}
    return CliRunner().invoke(cli, list(args), env=env)


async def test_the_cli_deploys_runs_lists_and_shows(cluster: LocalCluster, tmp_path: Path) -> None:
    def ok(*args: str) -> Result:
        result = fum(cluster, tmp_path, *args)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result

    # the CLI is synchronous: in a thread, so this loop's cluster clients stay served
    deployed = await asyncio.to_thread(ok, "app", "deploy", str(DATA / "hello-bye"), "--json")
    assert json.loads(deployed.stdout)["name"] == "hello-bye"
    run = await asyncio.to_thread(ok, "app", "run", "hello-bye", '{"Data": {"Value": "hello"}}')
    assert json.loads(run.stdout) == "Hello world!"
    started = await asyncio.to_thread(ok, "app", "run", "hello-bye", '"bye"', "--async")
    session = started.stdout.strip()
    shown = await asyncio.to_thread(ok, "app", "session", session, "--watch")
    assert "World: 1 instances" in shown.stdout and "Bye world!" in shown.stdout
    listed = await asyncio.to_thread(ok, "app", "sessions", "hello-bye", "--json")
    assert session in [s["id"] for s in json.loads(listed.stdout)]
    (tmp_path / "empty" / "f").mkdir(parents=True)
    (tmp_path / "empty" / "f" / "app.py").write_text(IDENTITY)
    bad = await asyncio.to_thread(fum, cluster, tmp_path, "app", "deploy", str(tmp_path / "empty"))
    assert bad.exit_code == 1 and "unum-template.yaml" in bad.stderr
    await asyncio.to_thread(ok, "app", "deploy", str(DATA / "map"), "--name", "m")
    failing = await asyncio.to_thread(fum, cluster, tmp_path, "app", "run", "m", '"not a list"')
    assert failing.exit_code == 1 and "ended ERROR: UnumMap0" in failing.stderr


PARTIAL = {
    "Split": (
        {"Start": True, "Next": {"Name": "Work", "InputType": "Map"}},
        "def lambda_handler(event, context):\n    return [1, 0, 2]\n",
    ),
    "Work": (
        {
            "Next": {
                "Name": "Sum",
                "InputType": {"Fan-in": {"Values": ["Work-unumIndex-*"]}},
                "Conditional": "$ret > 0",
            },
            "Next Payload Modifiers": ["Pop"],
        },
        IDENTITY,
    ),
    "Sum": ({}, "def lambda_handler(event, context):\n    return sum(event)\n"),
}


async def test_a_fan_in_that_can_never_fill_ends_the_session_error(apps: Apps) -> None:
    await apps.deployed("partial", app_archive(PARTIAL))
    done = await apps.finished("partial", None)
    assert done["status"] == "ERROR", done
    assert done["error"] == "fan-in Sum got 2 of its 3 inputs: the others never came", done
