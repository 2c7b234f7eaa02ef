"""Python callables as fum calls: cloudpickle in, cloudpickle out (the built-in function's params).

A callable defined in ``__main__`` or in a module of the user's own (not installed in
site-packages, not the standard library) is pickled by value, so the sandbox needs
only cloudpickle; ``include_modules`` asks for more modules by value.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import site
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle
import msgspec
from fum.durable import NO_DATA, parameter_names, split_arguments

from . import _callable_handler
from .errors import FumError
from .packaging import pack_files

_json = msgspec.json.Encoder()
_by_value_lock = threading.Lock()
_by_value: set[str] = set()


class SerializationError(FumError):
    """A callable, its arguments or its result cannot be (un)pickled."""


def handler_package() -> bytes:
    """The built-in function's package: the handler as ``main.py`` (same bytes every time)."""
    source = Path(_callable_handler.__file__).read_bytes()
    return pack_files({"main.py": source})


@functools.cache
def _system_roots() -> tuple[str, ...]:
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages())
    paths.add(site.getusersitepackages())
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


def _is_users_module(module: ModuleType) -> bool:
    """A module of the user's own code: from a file outside the stdlib and site-packages."""
    name = module.__name__
    if name == "__main__" or name.split(".")[0] in ("fum_client", "fum", "cloudpickle"):
        return False
    file = getattr(module, "__file__", None)
    if not file:
        return False
    return not os.path.realpath(file).startswith(_system_roots())


def _pickle_by_value(modules: Iterable[ModuleType]) -> None:
    for module in modules:
        with _by_value_lock:
            if module.__name__ in _by_value:
                continue
            cloudpickle.register_pickle_by_value(module)
            _by_value.add(module.__name__)


def _module_of(fn: Any) -> ModuleType | None:
    name = getattr(fn, "__module__", None) or type(fn).__module__
    return sys.modules.get(name) if name else None


@dataclass(frozen=True)
class CallableSpec:
    """A callable pickled once, and the constant head of every call's params."""

    name: str
    head: bytes  # the params JSON up to the pickled arguments
    takes: frozenset[str] | None  # parameter names, None when it takes **kwargs

    def params(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        try:
            pickled = cloudpickle.dumps((args, kwargs))
        except Exception as exc:
            raise SerializationError(f"cannot pickle the arguments of {self.name}: {exc}") from exc
        return self.head + base64.b64encode(pickled) + b'"}'

    def split(self, data: Any, extra_args: Any = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Lithops' rule (``fum.durable.split_arguments``)."""
        return split_arguments(data, extra_args, self.takes)


def callable_spec(
    fn: Callable[..., Any],
    include_modules: Iterable[ModuleType] = (),
    dumps: Callable[[Any], bytes] = cloudpickle.dumps,
) -> CallableSpec:
    """Pickle ``fn`` (by value where it is the user's code) for the built-in function;
    ``dumps``: the pickler (a coordinator's swaps the executor class)."""
    module = _module_of(fn)
    wanted = list(include_modules)
    if module is not None and _is_users_module(module):
        wanted.append(module)
    _pickle_by_value(wanted)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)[:80]
    try:
        pickled = dumps(fn)
    except Exception as exc:
        raise SerializationError(f"cannot pickle {name}: {exc}") from exc
    key = hashlib.sha256(pickled).hexdigest()[:24]
    head = (
        b'{"v":1,"py":'
        + _json.encode("{}.{}".format(*sys.version_info[:2]))
        + b',"name":'
        + _json.encode(name)
        + b',"fnKey":"'
        + key.encode()
        + b'","fn":"'
        + base64.b64encode(pickled)
        + b'","args":"'
    )
    return CallableSpec(name, head, parameter_names(fn))


def decode_result(result: Any) -> Any:
    """The value a callable returned, from the built-in function's result."""
    if not isinstance(result, dict) or "pickle" not in result:
        shown = repr(result)[:200]
        raise SerializationError(f"the built-in function answered an unexpected result: {shown}")
    try:
        return cloudpickle.loads(base64.b64decode(result["pickle"]))
    except Exception as exc:
        raise SerializationError(f"cannot unpickle the result: {exc}") from exc


def encode_json_params(params: Any, what: str) -> bytes:
    """Params of a deployed function as JSON text, or SerializationError."""
    if params is NO_DATA or params is None:
        return b"{}"
    try:
        return _json.encode(params)
    except (TypeError, msgspec.EncodeError) as exc:
        raise SerializationError(f"the params of {what} are not JSON: {exc}") from exc
