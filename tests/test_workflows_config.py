"""Workflow apps read and checked (unum_config.json, unum-template.yaml), and what a step
sends on after it returns: no cluster, the pure parts of services/workflows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest

from services.common.errors import BadRequest
from services.workflows.config import load_app
from services.workflows.continuation import (
    ContinuationError,
    Instance,
    call_uuid,
    instance_of,
    plan,
)
from services.workflows.expressions import Expression, ExpressionError, Modifier
from services.workflows.payload import apply_modifiers, expand_names, fan_in_slot, instance_name

DATA = Path(__file__).parent / "data" / "unum"


def write_app(root: Path, configs: dict[str, dict[str, Any]], **template: Any) -> Path:
    """An app folder: one function folder per config, each with an app.py."""
    functions = {}
    for name, config in configs.items():
        folder = root / name.lower()
        folder.mkdir(parents=True)
        (folder / "app.py").write_text("def lambda_handler(event, context):\n    return event\n")
        (folder / "unum_config.json").write_text(json.dumps({"Name": name, **config}))
        functions[name] = {"Properties": {"CodeUri": f"{name.lower()}/", "Runtime": "python3.8"}}
    text = json.dumps({"Globals": {"ApplicationName": "t", **template}, "Functions": functions})
    (root / "unum-template.yaml").write_text(text)  # JSON is YAML
    return root


def test_the_appstore_apps_load_as_published(tmp_path: Path) -> None:
    hello = load_app(DATA / "hello-bye", "hb")
    assert hello.start == "Start"
    steps = {f.step.name: f.step for f in hello.functions}
    assert sorted(steps) == ["Bye", "Hello", "Start", "World"]
    assert [n.name for n in steps["Start"].next] == ["Hello", "Bye"]
    assert steps["Start"].next[0].conditional == "$ret == 'hello'"
    assert steps["World"].modifiers == ["Pop"]  # the older spelling, Fan-out Modifiers
    mapped = load_app(DATA / "map", "m")
    steps = {f.step.name: f.step for f in mapped.functions}
    assert steps["UnumMap0"].next[0].input_type == "Map"
    assert steps["F1"].next[0].values == ["F1-unumIndex-*"]
    assert all(f.step.checkpoint for f in mapped.functions)


def test_an_archive_with_one_top_folder_loads(tmp_path: Path) -> None:
    shutil.copytree(DATA / "hello-bye", tmp_path / "hello-bye")
    assert load_app(tmp_path, "hb").start == "Start"


@pytest.mark.parametrize(
    ("configs", "message"),
    [
        ({"A": {"Start": True}, "B": {"Start": True}}, "exactly one function starts"),
        ({"A": {}}, "exactly one function starts"),
        ({"A": {"Start": True, "Next": {"Name": "Nope"}}}, "a/unum_config.json: Next.Name"),
        (
            {"A": {"Start": True, "Next": [{"Name": "A", "Conditional": "$ret =="}]}},
            "a/unum_config.json: Next[0].Conditional",
        ),
        (
            {"A": {"Start": True, "Next": {"Name": "A", "Conditional": "__import__('os')"}}},
            "Next.Conditional",
        ),
        ({"A": {"Start": True, "Next Payload Modifiers": ["$0=="]}}, "Next Payload Modifiers[0]"),
        ({"A": {"Start": True, "Next": {"Name": "A", "InputType": "Loop"}}}, "Next.InputType"),
        (
            {"A": {"Start": True, "Next": {"Name": "A", "InputType": {"Fan-in": {}}}}},
            "Next.InputType.Fan-in.Values",
        ),
        ({"A": {"Start": True, "Name": "B"}}, "a/unum_config.json: Name"),
    ],
)
def test_bad_apps_are_refused_naming_the_file_and_field(
    tmp_path: Path, configs: dict[str, dict[str, Any]], message: str
) -> None:
    write_app(tmp_path, configs)
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_app(tmp_path, "t")


def test_a_missing_app_py_or_config_is_named(tmp_path: Path) -> None:
    write_app(tmp_path, {"A": {"Start": True}})
    (tmp_path / "a" / "app.py").unlink()
    with pytest.raises(BadRequest, match=r"a/app.py: missing"):
        load_app(tmp_path, "t")
    (tmp_path / "a" / "app.py").write_text("")
    (tmp_path / "a" / "unum_config.json").unlink()
    with pytest.raises(BadRequest, match=r"a/unum_config.json: missing"):
        load_app(tmp_path, "t")


def test_the_template_is_checked(tmp_path: Path) -> None:
    write_app(tmp_path, {"A": {"Start": True}})
    text = (tmp_path / "unum-template.yaml").read_text().replace("python3.8", "nodejs18.x")
    (tmp_path / "unum-template.yaml").write_text(text)
    with pytest.raises(BadRequest, match=r"Functions.A.Properties.Runtime"):
        load_app(tmp_path, "t")
    (tmp_path / "unum-template.yaml").write_text("Functions: [")
    with pytest.raises(BadRequest, match=r"unum-template.yaml: not YAML"):
        load_app(tmp_path, "t")
    (tmp_path / "unum-template.yaml").unlink()
    with pytest.raises(BadRequest, match=r"no unum-template.yaml"):
        load_app(tmp_path, "t")


def test_checkpoint_comes_from_globals_unless_the_function_says(tmp_path: Path) -> None:
    write_app(tmp_path, {"A": {"Start": True, "Checkpoint": True}, "B": {}}, Checkpoint=False)
    steps = {f.step.name: f.step for f in load_app(tmp_path, "t").functions}
    assert steps["A"].checkpoint and not steps["B"].checkpoint


def test_expressions_are_a_small_safe_language() -> None:
    assert Expression("$ret == 'hello'").evaluate({"ret": "hello"}) is True
    assert Expression("$0 < $size-1").evaluate({"i0": 8, "size": 10}) is True
    assert Expression("$0 < $size-1").evaluate({"i0": 9, "size": 10}) is False
    assert Expression("not ($1 == 2 or $ret > 3)").evaluate({"i1": 1, "ret": 2}) is True
    for bad in ["open('x')", "$ret.upper()", "[1][0]", "lambda: 1", "$ret ** 99999", "x"]:
        with pytest.raises(ExpressionError):
            Expression(bad)
    with pytest.raises(ExpressionError, match="multiplies numbers"):
        Expression("$ret * 1000000000000 == ''").evaluate({"ret": "a"})


def test_modifiers_and_names() -> None:
    inner = {
        "Type": "Map",
        "Index": 2,
        "Size": 5,
        "OuterLoop": {"Type": "Map", "Index": 1, "Size": 3},
    }
    assert instance_name("C", inner) == "C-unumIndex-2.1"
    assert apply_modifiers(inner, [Modifier("Pop")]) == {"Type": "Map", "Index": 1, "Size": 3}
    bumped = apply_modifiers(inner, [Modifier("$0=$0+1"), Modifier("$size=$size-1")])
    assert (bumped or {})["Index"] == 3 and (bumped or {})["Size"] == 4
    assert inner["Index"] == 2  # a copy: the input payload is left as it was
    popped = apply_modifiers(inner, [Modifier("Pop"), Modifier("$0=$0+1")])
    assert popped == {"Type": "Map", "Index": 2, "Size": 3}
    assert inner["OuterLoop"] == {"Type": "Map", "Index": 1, "Size": 3}
    assert expand_names(["C-unumIndex-*.$1"], inner) == [f"C-unumIndex-{i}.1" for i in range(5)]
    assert expand_names(["x-unumIndex-($0-1)"], inner) == ["x-unumIndex-1"]


def test_an_instance_call_uuid_is_uuid5_of_session_and_name() -> None:
    # uuid.uuid5(the namespace, "s/Work-unumIndex-3"): calls made before a restart keep theirs
    assert call_uuid("s", "Work-unumIndex-3") == "20430da475da5c9bbaee109a9a3b3427"


def steps_of(tmp_path: Path, configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f.step.name: f.step for f in load_app(write_app(tmp_path, configs), "t").functions}


def params(value: Any, fan_out: dict[str, Any] | None = None) -> bytes:
    payload: dict[str, Any] = {"Data": {"Source": "http", "Value": value}, "Session": "s"}
    if fan_out:
        payload["Fan-out"] = fan_out
    return msgspec.json.encode(payload)


def test_a_branch_sends_on_what_its_conditional_picks(tmp_path: Path) -> None:
    steps = steps_of(
        tmp_path,
        {
            "S": {
                "Start": True,
                "Next": [
                    {"Name": "H", "Conditional": "$ret == 'hello'"},
                    {"Name": "B", "Conditional": "$ret == 'bye'"},
                ],
                "NextInput": "Scalar",
            },
            "H": {},
            "B": {},
        },
    )
    instance = instance_of(steps["S"], params("bye"))
    assert instance == Instance("s", "S", None)
    sent = plan(steps["S"], instance, "bye")
    # two Scalar Nexts are a parallel fan-out, as unum counts them: Bye is branch 1 of 2
    assert [c.instance for c in sent.calls] == ["B-unumIndex-1"]
    assert msgspec.json.decode(sent.calls[0].params)["Data"]["Value"] == "bye"
    assert sent.calls[0].func_name == "t.B"
    assert plan(steps["H"], Instance("s", "H", None), "x").ends


def test_a_self_loop_counts_to_its_size(tmp_path: Path) -> None:
    steps = steps_of(
        tmp_path,
        {
            "P": {
                "Start": True,
                "Next": {"Name": "P", "InputType": "Scalar", "Conditional": "$0 < $size-1"},
                "Next Payload Modifiers": ["$0=$0+1"],
            }
        },
    )
    fan_out: dict[str, Any] | None = {"Type": "Map", "Index": 0, "Size": 3}
    names = []
    while True:
        instance = instance_of(steps["P"], params(1, fan_out))
        assert instance is not None
        names.append(instance.name)
        sent = plan(steps["P"], instance, 1)
        if sent.ends:
            break
        fan_out = msgspec.json.decode(sent.calls[0].params)["Fan-out"]
    assert names == ["P-unumIndex-0", "P-unumIndex-1", "P-unumIndex-2"]


def test_a_map_and_its_fan_in(tmp_path: Path) -> None:
    steps = steps_of(
        tmp_path,
        {
            "M": {"Start": True, "Next": {"Name": "F", "InputType": "Map"}},
            "F": {
                "Next": {"Name": "S", "InputType": {"Fan-in": {"Values": ["F-unumIndex-*"]}}},
                "Next Payload Modifiers": ["Pop"],
            },
            "S": {},
        },
    )
    sent = plan(steps["M"], Instance("s", "M", None), [10, 20, 30])
    assert [c.instance for c in sent.calls] == [f"F-unumIndex-{i}" for i in range(3)]
    fan_out = msgspec.json.decode(sent.calls[2].params)["Fan-out"]
    vote = plan(steps["F"], Instance("s", "F-unumIndex-2", fan_out), 30).fan_ins[0]
    assert (vote.slot, vote.size, vote.target.instance) == (2, 3, "S")
    assert msgspec.json.decode(vote.target.params) == {"Session": "s"}
    with pytest.raises(ContinuationError, match="must return a list"):
        plan(steps["M"], Instance("s", "M", None), 5)


@pytest.mark.parametrize(
    "values",
    [
        ["F-unumIndex-*"],
        ["C-unumIndex-*.$1"],
        ["A-unumIndex-0", "B-unumIndex-1", "C-unumIndex-*"],
        ["x-unumIndex-($0-1)", "F-unumIndex-*"],
    ],
)
def test_a_sources_slot_is_its_place_among_the_expanded_names(values: list[str]) -> None:
    for i in range(4):
        fan_out = {"Type": "Map", "Index": i, "Size": 4, "OuterLoop": {"Index": 2, "Size": 3}}
        names = expand_names(values, fan_out)
        for slot, name in enumerate(names):
            assert fan_in_slot(values, fan_out, name) in (
                (slot, len(names)),
                (names.index(name), len(names)),
            )
        assert fan_in_slot(values, fan_out, "G-unumIndex-0") is None
        assert fan_in_slot(values, fan_out, "F-unumIndex-9") is None
