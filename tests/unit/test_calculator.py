from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.tools.base import ToolContext, ToolFailure
from app.tools.calculator import CALCULATOR


def _no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"the calculator made a request to {request.url}")


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[ToolContext]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(_no_network)) as client:
        yield ToolContext(sandbox_dir=tmp_path, http=client)


async def calculate(expression: str, ctx: ToolContext) -> str:
    args = CALCULATOR.args_model.model_validate({"expression": expression})
    return await CALCULATOR.fn(args, ctx)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("17*23", "391"),
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("2 ** 3 ** 2", "512"),
        ("-3 ** 2", "-9"),
        ("10 - 4 - 3", "3"),
        ("7 // 2", "3"),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("  1 + 1  ", "2"),
        ("9" * 30, "9" * 30),
    ],
)
async def test_integer_arithmetic_follows_python_precedence(
    expression: str, expected: str, ctx: ToolContext
) -> None:
    assert await calculate(expression, ctx) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 / 3", "0.3333333333333333"),
        ("0.1 + 0.2", "0.30000000000000004"),
        ("2 ** 0.5", "1.4142135623730951"),
        ("2 ** -1", "0.5"),
        ("1.5e3", "1500"),
        ("1e20", "1e+20"),
    ],
)
async def test_floats_print_as_repr(expression: str, expected: str, ctx: ToolContext) -> None:
    assert await calculate(expression, ctx) == expected


@pytest.mark.parametrize(("expression", "expected"), [("8 / 2", "4"), ("-0.0", "0"), ("2.0", "2")])
async def test_whole_floats_print_without_decimal_point(
    expression: str, expected: str, ctx: ToolContext
) -> None:
    assert await calculate(expression, ctx) == expected


@pytest.mark.parametrize(
    ("expression", "expected"), [("-5", "-5"), ("+5", "5"), ("--5", "5"), ("-(2 - 7)", "5")]
)
async def test_unary_operators(expression: str, expected: str, ctx: ToolContext) -> None:
    assert await calculate(expression, ctx) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("sqrt(16)", "4"),
        ("abs(-2.5)", "2.5"),
        ("round(2.567, 2)", "2.57"),
        ("round(2.5)", "2"),
        ("min(3, 1, 2)", "1"),
        ("max(1, 2.5)", "2.5"),
        ("floor(-2.5)", "-3"),
        ("ceil(2.1)", "3"),
        ("log(e)", "1"),
        ("log(8, 2)", "3"),
        ("pi", "3.141592653589793"),
        ("2 * pi", "6.283185307179586"),
    ],
)
async def test_functions_and_constants(expression: str, expected: str, ctx: ToolContext) -> None:
    assert await calculate(expression, ctx) == expected


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "x",
        "sqrt.__class__",
        "(1).real",
        "open('/etc/passwd')",
        "print(1)",
        "'a' * 3",
        "1 < 2",
        "lambda: 1",
        "True + 1",
        "1j",
        "[1, 2]",
        "1, 2",
        "1 if 1 else 2",
        "1 << 3",
        "abs(x=1)",
        "min(*[1, 2])",
        "(lambda: 1)()",
    ],
)
async def test_everything_else_is_refused(expression: str, ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="unsupported expression"):
        await calculate(expression, ctx)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("sqrt(1, 2)", r"sqrt\(\) takes exactly 1 argument, got 2"),
        ("sqrt()", r"sqrt\(\) takes exactly 1 argument, got 0"),
        ("round(1, 2, 3)", r"round\(\) takes 1 to 2 arguments, got 3"),
        ("min(1)", r"min\(\) takes at least 2 arguments, got 1"),
        ("round(1.5, 0.5)", "whole number of digits"),
        ("round(10**300, -10**9)", "digits must be between -308 and 308"),
    ],
)
async def test_function_arguments_are_checked(
    expression: str, message: str, ctx: ToolContext
) -> None:
    with pytest.raises(ToolFailure, match=message):
        await calculate(expression, ctx)


@pytest.mark.parametrize(
    "expression", ["9**9**9", "10**10**10", "2**100000", "(10**300)**999", "1e300**2", "1e999"]
)
async def test_huge_results_are_refused_fast(expression: str, ctx: ToolContext) -> None:
    started = time.perf_counter()
    with pytest.raises(ToolFailure, match="too large|larger than"):
        await calculate(expression, ctx)
    assert time.perf_counter() - started < 0.5


async def test_repeated_multiplication_stays_bounded(ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="too large"):
        await calculate("10**300 * 10**300 * 10**300", ctx)


@pytest.mark.parametrize("expression", ["1 / 0", "1 // 0", "5 % 0", "1.5 / 0.0", "0 ** -1"])
async def test_division_by_zero(expression: str, ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="division by zero"):
        await calculate(expression, ctx)


@pytest.mark.parametrize("expression", ["sqrt(-1)", "log(0)"])
async def test_math_domain_errors(expression: str, ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="math error"):
        await calculate(expression, ctx)


async def test_complex_results_are_refused(ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="not a real number"):
        await calculate("(-8) ** (1/3)", ctx)


async def test_deep_nesting_is_refused(ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="nested too deeply"):
        await calculate("-" * 100 + "1", ctx)


@pytest.mark.parametrize("expression", ["1 +", "(1", "1 2", " "])
async def test_syntax_errors(expression: str, ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="invalid expression"):
        await calculate(expression, ctx)


def test_expression_length_is_limited() -> None:
    CALCULATOR.args_model.model_validate({"expression": "1+" * 99 + "1"})
    with pytest.raises(ValidationError, match="at most 200 characters"):
        CALCULATOR.args_model.model_validate({"expression": "1+" * 100 + "1"})


def test_unknown_arguments_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        CALCULATOR.args_model.model_validate({"expression": "1", "mode": "eval"})


def test_declared_as_a_safe_tool() -> None:
    assert CALCULATOR.name == "calculator"
    assert CALCULATOR.risk == "low"
    assert CALCULATOR.idempotent
    assert CALCULATOR.read_only
