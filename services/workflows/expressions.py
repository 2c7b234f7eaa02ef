"""unum's small expression language, parsed once and evaluated without ``eval``.

unum substitutes its variables into a string and hands it to Python's ``eval``; function
configurations are not trusted here, so an expression is parsed into Python's AST and
only a whitelist of nodes is evaluated: literals, the variables ``$ret`` (the function's
output), ``$0``...``$9`` (fan-out indexes, ``$0`` innermost) and ``$size`` (the size of the
innermost fan-out), comparisons, ``and``/``or``/``not`` and integer arithmetic.
"""

from __future__ import annotations

import ast
import functools
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from services.common.errors import BadRequest

_VARIABLE = re.compile(r"\$(ret|size|[0-9])")
_NAMES = {"ret": "ret", "size": "size", **{str(i): f"i{i}" for i in range(10)}}


def _multiply(a: Any, b: Any) -> Any:
    # Numbers only: "x" * 10**12 would fill the worker's memory (a function's output is
    # not trusted, and the worker evaluates its continuation).
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b)):
        raise ExpressionError(
            f"* multiplies numbers, not {type(a).__name__} and {type(b).__name__}"
        )
    return a * b


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _multiply,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.Not: operator.not_,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


class ExpressionError(Exception):
    """An expression that does not parse, or fails when it is evaluated."""


def _python(text: str) -> str:
    return _VARIABLE.sub(lambda m: _NAMES[m.group(1)], text)


def _check(node: ast.AST, text: str) -> None:
    """Refuse any node outside the language (calls, attributes, subscripts, lambdas...)."""
    for child in ast.walk(node):
        ok = isinstance(
            child,
            ast.Expression
            | ast.BoolOp
            | ast.BinOp
            | ast.UnaryOp
            | ast.Compare
            | ast.Constant
            | ast.Name
            | ast.Load
            | ast.And
            | ast.Or
            | ast.operator
            | ast.cmpop
            | ast.unaryop,
        )
        if isinstance(child, ast.operator) and type(child) not in _BINARY:
            ok = False
        if isinstance(child, ast.Name) and child.id not in _NAMES.values():
            raise ExpressionError(f"{text!r}: unknown name {child.id!r} (use $ret, $0..$9, $size)")
        if isinstance(child, ast.Constant) and not isinstance(
            child.value, str | int | float | bool | type(None)
        ):
            ok = False
        if not ok:
            raise ExpressionError(f"{text!r}: {type(child).__name__} is not allowed")


class Expression:
    """One parsed expression; ``evaluate`` gives its value for some variables."""

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ExpressionError(f"{text!r}: not an expression")
        self.text = text
        try:
            tree = ast.parse(_python(text).strip(), mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"{text!r}: {exc.msg}") from None
        _check(tree, text)
        self._body = tree.body

    @property
    def variables(self) -> set[str]:
        return {n.id for n in ast.walk(self._body) if isinstance(n, ast.Name)}

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        try:
            return _eval(self._body, variables)
        except ExpressionError:
            raise
        except Exception as exc:  # a type error between the values, a division by zero
            raise ExpressionError(f"{self.text!r}: {type(exc).__name__}: {exc}") from None


def _eval(node: ast.expr, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise ExpressionError(f"${node.id.lstrip('i')} has no value here")
        return env[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, env), _eval(node.right, env))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, env))
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            return all(_eval(value, env) for value in node.values)
        return any(_eval(value, env) for value in node.values)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, env)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    raise ExpressionError(f"{type(node).__name__} is not allowed")


def variables_of(indexes: list[int], size: int | None, ret: Any = None) -> dict[str, Any]:
    """The variables of an expression for an instance: its fan-out indexes (innermost
    first), the innermost fan-out's size, and its output."""
    env: dict[str, Any] = {f"i{i}": index for i, index in enumerate(indexes[:10])}
    if size is not None:
        env["size"] = size
    env["ret"] = ret
    return env


class Modifier:
    """A Next Payload Modifier: ``Pop``, or ``$0=<expr>`` / ``$size=<expr>`` (any index)."""

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise ExpressionError(f"{text!r}: a modifier is a string")
        self.text = text
        self.pop = text.strip() == "Pop"
        self.target: str | None = None
        self.value: Expression | None = None
        if self.pop:
            return
        target, sep, value = text.partition("=")
        target = target.strip()
        if not sep or value.startswith("=") or not re.fullmatch(r"\$(size|[0-9])", target):
            raise ExpressionError(f"{text!r}: use Pop, $0=<expression> or $size=<expression>")
        self.target = target[1:]
        self.value = Expression(value)


@functools.lru_cache(maxsize=1024)
def parsed(text: str) -> Expression:
    """The expression of ``text``, parsed once per process (every step of a map asks)."""
    return Expression(text)


@functools.lru_cache(maxsize=1024)
def parsed_modifier(text: str) -> Modifier:
    return Modifier(text)


def check(text: Any, what: str) -> Expression:
    """Parse an expression of a configuration; ``BadRequest`` naming ``what`` if not."""
    try:
        return Expression(text)
    except ExpressionError as exc:
        raise BadRequest(f"{what}: cannot parse {exc}") from None
