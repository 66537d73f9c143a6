"""`calculator`: arithmetic over a whitelisted subset of Python's AST, never `eval`.

The model's expression is parsed with `ast.parse(mode="eval")` and walked node by
node; anything outside numbers, the arithmetic operators, parentheses, `pi`, `e`
and a few math functions is refused. Exponents, magnitudes and nesting are bounded
so an expression like `9**9**9` is refused at once instead of eating the CPU.

Results print as ints when they are whole numbers (`8/2` gives `4`, not `4.0`);
other floats print as `repr` (`2**0.5` gives `1.4142135623730951`, `1e20` gives
`1e+20`, since whole floats from 2**53 on are no longer exact).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from app.tools.base import Risk, Tool, ToolContext, ToolFailure

Number = int | float

MAX_EXPRESSION_CHARS = 200
MAX_DEPTH = 32
MAX_EXPONENT = 1000
MAX_ABS = 10**308
"""Largest magnitude of any intermediate result; about the float range."""
_MAX_RESULT_BITS = 1024
"""An integer power whose result needs more bits than this is refused before it is computed."""
_MAX_ROUND_DIGITS = 308
_MAX_EXACT_FLOAT = 2.0**53
"""Whole floats below this print as ints; above it a float is no longer exact."""


class CalculatorArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expression: str = Field(
        min_length=1,
        max_length=MAX_EXPRESSION_CHARS,
        description=(
            "Arithmetic expression, e.g. '17 * 23' or 'sqrt(2) * pi'. Operators: + - * / // % **"
            " and parentheses; constants: pi, e; functions: sqrt, abs, round, min, max, floor,"
            " ceil, log."
        ),
    )


@dataclass(frozen=True)
class _Function:
    min_args: int
    max_args: int | None
    """None: any number of arguments from `min_args` on."""
    apply: Callable[[Sequence[Number]], Number]


def _round(args: Sequence[Number]) -> Number:
    if len(args) == 1:
        return round(args[0])
    digits = args[1]
    if not isinstance(digits, int):
        raise ToolFailure("round() needs a whole number of digits")
    # Rounding an int to -n digits computes 10**n, so n must stay small.
    if abs(digits) > _MAX_ROUND_DIGITS:
        raise ToolFailure(
            f"round() digits must be between -{_MAX_ROUND_DIGITS} and {_MAX_ROUND_DIGITS}"
        )
    return round(args[0], digits)


def _log(args: Sequence[Number]) -> Number:
    return math.log(args[0]) if len(args) == 1 else math.log(args[0], args[1])


_FUNCTIONS: dict[str, _Function] = {
    "sqrt": _Function(1, 1, lambda a: math.sqrt(a[0])),
    "abs": _Function(1, 1, lambda a: abs(a[0])),
    "round": _Function(1, 2, _round),
    "min": _Function(2, None, min),
    "max": _Function(2, None, max),
    "floor": _Function(1, 1, lambda a: math.floor(a[0])),
    "ceil": _Function(1, 1, lambda a: math.ceil(a[0])),
    "log": _Function(1, 2, _log),
}

_CONSTANTS: dict[str, Number] = {"pi": math.pi, "e": math.e}

_BINARY: dict[type[ast.operator], Callable[[Number, Number], object]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression safely; raise `ToolFailure` on anything else."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolFailure(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolFailure(f"invalid expression: {exc.msg}") from None
    except ValueError:  # NUL bytes in the source, on Python 3.11
        raise ToolFailure("invalid expression") from None
    try:
        return _eval(tree.body, depth=0)
    except ZeroDivisionError:
        raise ToolFailure("division by zero") from None
    except OverflowError:
        raise ToolFailure("result is too large") from None
    except ValueError as exc:  # math domain errors: sqrt(-1), log(0)
        raise ToolFailure(f"math error: {exc}") from None


def format_number(value: Number) -> str:
    """Print ints and whole floats without a decimal point, other floats as `repr`."""
    if isinstance(value, float) and value.is_integer() and abs(value) < _MAX_EXACT_FLOAT:
        return str(int(value))
    return repr(value)


def _eval(node: ast.expr, *, depth: int) -> Number:
    if depth > MAX_DEPTH:
        raise ToolFailure("expression is nested too deeply")
    depth += 1
    match node:
        case ast.Constant(value=value) if isinstance(value, int | float) and not isinstance(
            value, bool
        ):
            return _checked(value)
        case ast.Name(id=name) if name in _CONSTANTS:
            return _CONSTANTS[name]
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return -_eval(operand, depth=depth)
        case ast.UnaryOp(op=ast.UAdd(), operand=operand):
            return +_eval(operand, depth=depth)
        case ast.BinOp(left=left, op=ast.Pow(), right=right):
            return _power(_eval(left, depth=depth), _eval(right, depth=depth))
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
            apply = _BINARY[type(op)]
            return _checked(apply(_eval(left, depth=depth), _eval(right, depth=depth)))
        case ast.Call(func=ast.Name(id=name), args=args, keywords=[]) if name in _FUNCTIONS:
            return _call(name, [_eval_arg(arg, depth=depth) for arg in args])
    raise ToolFailure(f"unsupported expression: {_excerpt(node)}")


def _eval_arg(node: ast.expr, *, depth: int) -> Number:
    if isinstance(node, ast.Starred):
        raise ToolFailure(f"unsupported expression: {_excerpt(node)}")
    return _eval(node, depth=depth)


def _call(name: str, args: list[Number]) -> Number:
    function = _FUNCTIONS[name]
    low, high = function.min_args, function.max_args
    if low <= len(args) and (high is None or len(args) <= high):
        return _checked(function.apply(args))
    if high is None:
        expected = f"at least {low} arguments"
    elif low == high:
        expected = f"exactly {low} argument{'s' if low > 1 else ''}"
    else:
        expected = f"{low} to {high} arguments"
    raise ToolFailure(f"{name}() takes {expected}, got {len(args)}")


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolFailure(f"exponent is larger than {MAX_EXPONENT}")
    # Integer powers are exact and unbounded in Python, so their size is checked
    # before computing them; float powers overflow to OverflowError on their own.
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and (abs(base).bit_length() - 1) * exponent > _MAX_RESULT_BITS
    ):
        raise ToolFailure("result is too large")
    result: object = base**exponent
    return _checked(result)


def _checked(value: object) -> Number:
    """Refuse results that are not finite real numbers within `MAX_ABS`."""
    if isinstance(value, complex):
        raise ToolFailure("result is not a real number")
    if not isinstance(value, int | float):
        raise ToolFailure("result is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolFailure("result is too large")
    if abs(value) > MAX_ABS:
        raise ToolFailure("result is too large")
    return value


def _excerpt(node: ast.AST) -> str:
    return ast.unparse(node)[:80]


async def calculate(args: BaseModel, ctx: ToolContext) -> str:
    """Evaluate `args.expression` and return the number as text."""
    if not isinstance(args, CalculatorArgs):
        raise TypeError(f"calculator got {type(args).__name__}, not CalculatorArgs")
    return format_number(evaluate(args.expression))


CALCULATOR = Tool(
    name="calculator",
    description=(
        "Evaluate an arithmetic expression exactly and return the number. Use it for any"
        " arithmetic instead of computing in your head. Supports + - * / // % ** and"
        " parentheses, the constants pi and e, and sqrt, abs, round, min, max, floor, ceil,"
        " log (natural, or log(x, base)). No variables, strings or other functions."
    ),
    args_model=CalculatorArgs,
    fn=calculate,
    risk=Risk.LOW,
    idempotent=True,
    read_only=True,
    timeout_s=2.0,
)
