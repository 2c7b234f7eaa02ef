"""An unum application read from its folder and checked: ``unum-template.yaml`` and
each function's ``unum_config.json``.

The dialect is the one unum's runtime parses, with the older spellings the appstore apps
still use (top-level ``NextInput``, ``Fan-out Modifiers``). The template's cloud fields
(data store, FaaSPlatform) mean nothing on fum: read and ignored. A bad app raises
``BadRequest`` naming the file and the field; nothing here writes anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import msgspec
import yaml

from services.common.errors import BadRequest
from services.common.models import NextStep, Step, check_name

from .expressions import ExpressionError, Modifier, check
from .payload import check_name_pattern

TEMPLATE = "unum-template.yaml"
CONFIG = "unum_config.json"
HANDLER = "app.py"
RUNTIMES = re.compile(r"python3(\.\d+)?")


class AppFunction(NamedTuple):
    """One function of an app: its code folder and what it does after it returns."""

    folder: Path
    step: Step


class App(NamedTuple):
    name: str
    start: str  # the Start function's name in the app
    functions: list[AppFunction]


def app_root(folder: Path) -> Path:
    """The folder holding the template: the archive's root, or its one top folder."""
    if (folder / TEMPLATE).is_file():
        return folder
    tops = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(tops) == 1 and tops[0].is_dir() and (tops[0] / TEMPLATE).is_file():
        return tops[0]
    raise BadRequest(f"the app has no {TEMPLATE} at its root")


def _template(root: Path) -> dict[str, Any]:
    try:
        template = yaml.safe_load((root / TEMPLATE).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{TEMPLATE}: not YAML: {exc}") from None
    if not isinstance(template, dict):
        raise BadRequest(f"{TEMPLATE}: not a mapping")
    functions = template.get("Functions")
    if not isinstance(functions, dict) or not functions:
        raise BadRequest(f"{TEMPLATE}: Functions: a mapping of one function or more is needed")
    globals_ = template.get("Globals") or {}
    if not isinstance(globals_, dict):
        raise BadRequest(f"{TEMPLATE}: Globals: not a mapping")
    return template


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "True", "false", "False"):
        return value in ("true", "True")
    raise BadRequest(f"{where}: true or false, not {value!r}")


def _code_folder(root: Path, name: str, properties: dict[str, Any]) -> Path:
    where = f"{TEMPLATE}: Functions.{name}.Properties"
    uri = properties.get("CodeUri")
    if not isinstance(uri, str) or not uri.strip("/ "):
        raise BadRequest(f"{where}.CodeUri: the function's folder is needed")
    path = PurePosixPath(uri.strip())
    if path.is_absolute() or ".." in path.parts:
        raise BadRequest(f"{where}.CodeUri: {uri!r} is not a folder inside the app")
    folder = root / path
    if not folder.is_dir():
        raise BadRequest(f"{where}.CodeUri: no folder {uri!r} in the app")
    runtime = properties.get("Runtime", "python3")
    if not isinstance(runtime, str) or not RUNTIMES.fullmatch(runtime):
        raise BadRequest(f"{where}.Runtime: {runtime!r}: only python3.x runs on fum")
    return folder


def _config(folder: Path, rel: str) -> dict[str, Any]:
    where = f"{rel}/{CONFIG}"
    if not (folder / HANDLER).is_file():
        raise BadRequest(f"{rel}/{HANDLER}: missing (it defines lambda_handler)")
    try:
        config = json.loads((folder / CONFIG).read_text())
    except FileNotFoundError:
        raise BadRequest(f"{where}: missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{where}: not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise BadRequest(f"{where}: not a JSON object")
    return config


def _input_type(value: Any, where: str) -> tuple[str, list[str]]:
    if value in ("Scalar", "Map"):
        return str(value), []
    if isinstance(value, dict) and set(value) == {"Fan-in"}:
        fan_in = value["Fan-in"]
        values = fan_in.get("Values") if isinstance(fan_in, dict) else None
        if not isinstance(values, list) or not values:
            raise BadRequest(f"{where}.Fan-in.Values: a list of instance names is needed")
        for i, name in enumerate(values):
            try:
                check_name_pattern(name)
            except ExpressionError as exc:
                raise BadRequest(f"{where}.Fan-in.Values[{i}]: cannot parse {exc}") from None
        return "Fan-in", [str(v) for v in values]
    raise BadRequest(
        f'{where}: "Scalar", "Map" or {{"Fan-in": {{"Values": [...]}}}}, not {value!r}'
    )


def _step(app: str, name: str, config: dict[str, Any], where: str, checkpoint: bool) -> Step:
    if config.get("Name", name) != name:
        raise BadRequest(
            f"{where}: Name: {config.get('Name')!r}, but the template calls it {name!r}"
        )
    default_input = config.get("NextInput", "Scalar")
    raw_next = config.get("Next", [])
    if not isinstance(raw_next, dict | list):
        raise BadRequest(f"{where}: Next: an object or a list of them")
    entries = [raw_next] if isinstance(raw_next, dict) else raw_next
    nexts = []
    for i, entry in enumerate(entries):
        at = f"{where}: Next" + (f"[{i}]" if isinstance(raw_next, list) else "")
        if not isinstance(entry, dict) or not isinstance(entry.get("Name"), str):
            raise BadRequest(f"{at}.Name: the next function's name is needed")
        field = "InputType" if "InputType" in entry else "NextInput"
        input_type, values = _input_type(entry.get("InputType", default_input), f"{at}.{field}")
        conditional = entry.get("Conditional")
        if conditional is not None:
            check(conditional, f"{at}.Conditional")
        nexts.append(NextStep(entry["Name"], input_type, values, conditional))
    field = "Next Payload Modifiers" if "Next Payload Modifiers" in config else "Fan-out Modifiers"
    modifiers = config.get(field, [])
    if not isinstance(modifiers, list):
        raise BadRequest(f"{where}: {field}: a list of modifiers")
    for i, text in enumerate(modifiers):
        try:
            Modifier(text)
        except ExpressionError as exc:
            raise BadRequest(f"{where}: {field}[{i}]: cannot parse {exc}") from None
    if "Checkpoint" in config:
        checkpoint = _bool(config["Checkpoint"], f"{where}: Checkpoint")
    return Step(
        app=app,
        name=name,
        start=_bool(config.get("Start", False), f"{where}: Start"),
        checkpoint=checkpoint,
        next=nexts,
        parallel=isinstance(raw_next, list),
        modifiers=[str(m) for m in modifiers],
    )


def load_app(folder: Path, name: str) -> App:
    """Read and check the app in ``folder`` (an unpacked archive) named ``name``."""
    check_name("app", name)
    root = app_root(folder)
    template = _template(root)
    globals_ = template.get("Globals") or {}
    checkpoint = _bool(globals_.get("Checkpoint", True), f"{TEMPLATE}: Globals.Checkpoint")
    functions: list[AppFunction] = []
    for fname, spec in template["Functions"].items():
        if not isinstance(fname, str):
            raise BadRequest(f"{TEMPLATE}: Functions: {fname!r} is not a name")
        try:
            check_name("function", f"{name}.{fname}")
        except BadRequest as exc:
            raise BadRequest(f"{TEMPLATE}: Functions.{fname}: {exc.message}") from None
        properties = spec.get("Properties") if isinstance(spec, dict) else None
        if not isinstance(properties, dict):
            raise BadRequest(f"{TEMPLATE}: Functions.{fname}.Properties: a mapping is needed")
        code = _code_folder(root, fname, properties)
        rel = str(code.relative_to(root))
        step = _step(name, fname, _config(code, rel), f"{rel}/{CONFIG}", checkpoint)
        if "Start" in properties and _bool(
            properties["Start"], f"{TEMPLATE}: Functions.{fname}.Properties.Start"
        ):
            step = msgspec.structs.replace(step, start=True)
        functions.append(AppFunction(code, step))
    names = {f.step.name for f in functions}
    for function in functions:
        for i, nxt in enumerate(function.step.next):
            if nxt.name not in names:
                where = f"{function.folder.relative_to(root)}/{CONFIG}: Next"
                where += f"[{i}]" if function.step.parallel else ""
                raise BadRequest(f"{where}.Name: no function {nxt.name!r} in {TEMPLATE}")
    starts = [f.step.name for f in functions if f.step.start]
    if len(starts) != 1:
        found = ", ".join(starts) or "none"
        raise BadRequest(f"{CONFIG}: Start: exactly one function starts the app (found: {found})")
    return App(name, starts[0], functions)
