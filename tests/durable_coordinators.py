"""Coordinators the durable tests run (a module of the tests' own: pickled by value)."""

from __future__ import annotations

import random
import time

from fum_client import FunctionExecutor


def my_function(x):  # type: ignore[no-untyped-def]
    time.sleep(1)
    return x + 1


def main(args):  # type: ignore[no-untyped-def]
    """The original example, imports changed only."""
    fexec = FunctionExecutor(**args)
    fexec.call_async(my_function, 0)
    res = fexec.get_result()
    fexec.map(my_function, range(10))
    return [res, fexec.get_result()]


def inc(x: int) -> int:
    return x + 1


def chain(args):  # type: ignore[no-untyped-def]
    fexec = FunctionExecutor(**args)
    x = 0
    for _ in range(args.get("steps", 20)):
        fexec.call_async(inc, x)
        x = fexec.get_result()
    return x


def square(x: int) -> int:
    return x * x


def big_map(args):  # type: ignore[no-untyped-def]
    fexec = FunctionExecutor()
    fexec.map(square, range(args["n"]))
    return sum(fexec.get_result())


def total(results: list[int]) -> int:
    return sum(results)


def reducing(args):  # type: ignore[no-untyped-def]
    fexec = FunctionExecutor()
    futures = fexec.map_reduce(square, range(args["n"]), total)
    first = fexec.get_result(futures)
    return fexec.get_result(fexec.call_async(inc, first))


def left(x: int) -> int:
    return x


def right(x: int) -> int:
    return -x


def branching(args):  # type: ignore[no-untyped-def]
    """Not deterministic: which function it calls depends on random() in each run."""
    fexec = FunctionExecutor()
    out = []
    for i in range(12):
        fexec.call_async(left if random.random() < 0.5 else right, i)
        out.append(fexec.get_result())
    return out


def boom(x: int) -> int:
    raise ValueError(f"no {x}")


def catching(args):  # type: ignore[no-untyped-def]
    fexec = FunctionExecutor()
    fexec.call_async(boom, 7)
    try:
        fexec.get_result()
    except Exception as exc:  # the call's failure, raised on replay
        return f"caught: {exc}"
    return "not raised"


def nap(x: int) -> int:
    time.sleep(2)
    return x + 1


def chain_then_pause(args):  # type: ignore[no-untyped-def]
    """A chain whose last run (only it gets this far) takes ``pause`` seconds."""
    fexec = FunctionExecutor()
    x = 0
    for _ in range(args["steps"]):
        x = fexec.get_result(fexec.call_async(inc, x))
    time.sleep(args["pause"])
    return x


def napping_map(args):  # type: ignore[no-untyped-def]
    fexec = FunctionExecutor()
    fexec.map(nap, range(args["n"]))
    return fexec.get_result()


def doze(x: float) -> float:
    time.sleep(x)
    return x


def waits_on_earlier_steps(args):  # type: ignore[no-untyped-def]
    """Issues a slow call, a fast one and a slower one, waits for the fast one, then (in
    later runs) for the others, issued by the first run."""
    fexec = FunctionExecutor()
    slow = fexec.call_async(doze, args["slow"])
    fast = fexec.call_async(doze, 0.0)
    slower = fexec.call_async(doze, args["slower"])
    first = fexec.get_result(fast)
    return [first, fexec.get_result(slow), fexec.get_result(slower)]


def one_nap(args):  # type: ignore[no-untyped-def]
    fexec = FunctionExecutor()
    return fexec.get_result(fexec.call_async(nap, 1))
