# The tests arrange and inspect the sandbox with blocking calls on purpose: they are
# tiny, and nothing else runs on the test's event loop.
# ruff: noqa: ASYNC240
from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.tools.base import Tool, ToolContext, ToolFailure
from app.tools.files import DELETE_FILE, MAX_READ_BYTES, READ_FILE, WRITE_FILE


def _no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"a file tool made a request to {request.url}")


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    return tmp_path / "sandbox"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the sandbox, holding a secret the tools must not reach."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("top secret")
    return folder


@pytest.fixture
async def ctx(sandbox: Path) -> AsyncIterator[ToolContext]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(_no_network)) as client:
        yield ToolContext(sandbox_dir=sandbox, http=client)


async def call(tool: Tool, ctx: ToolContext, **arguments: str) -> str:
    return await tool.fn(tool.args_model.model_validate(arguments), ctx)


async def test_write_read_delete_round_trip(ctx: ToolContext, sandbox: Path) -> None:
    assert await call(WRITE_FILE, ctx, path="notes/todo.txt", content="héllo") == (
        "wrote 6 bytes to notes/todo.txt"
    )
    assert (sandbox / "notes" / "todo.txt").read_text(encoding="utf-8") == "héllo"
    assert await call(READ_FILE, ctx, path="notes/todo.txt") == "héllo"

    assert await call(WRITE_FILE, ctx, path="notes/todo.txt", content="bye") == (
        "wrote 3 bytes to notes/todo.txt"
    )
    assert await call(READ_FILE, ctx, path="./notes//todo.txt") == "bye"

    assert await call(DELETE_FILE, ctx, path="notes/todo.txt") == "deleted notes/todo.txt"
    assert not (sandbox / "notes" / "todo.txt").exists()
    # No temporary files are left behind by the atomic writes.
    assert list((sandbox / "notes").iterdir()) == []


async def test_sandbox_is_created_on_first_use(ctx: ToolContext, sandbox: Path) -> None:
    assert not sandbox.exists()
    with pytest.raises(ToolFailure, match="no such file: a.txt"):
        await call(READ_FILE, ctx, path="a.txt")
    assert sandbox.is_dir()


@pytest.mark.parametrize("path", ["../x", "a/../../x", "a/..", ".."])
async def test_parent_references_are_refused(path: str, ctx: ToolContext, outside: Path) -> None:
    for tool, extra in ((READ_FILE, {}), (WRITE_FILE, {"content": "x"}), (DELETE_FILE, {})):
        with pytest.raises(ToolFailure, match=r"must not contain '\.\.'"):
            await call(tool, ctx, path=path, **extra)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


@pytest.mark.parametrize("path", ["/etc/passwd", "//etc/passwd"])
async def test_absolute_paths_are_refused(path: str, ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="must be relative"):
        await call(READ_FILE, ctx, path=path)
    with pytest.raises(ToolFailure, match="must be relative"):
        await call(WRITE_FILE, ctx, path=path, content="x")


@pytest.mark.parametrize("path", [".", "./", "a/."])
async def test_paths_naming_no_file_are_refused(path: str, ctx: ToolContext, sandbox: Path) -> None:
    (sandbox / "a").mkdir(parents=True)
    with pytest.raises(ToolFailure, match="names no file|is a folder"):
        await call(READ_FILE, ctx, path=path)


async def test_nul_bytes_are_refused(ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="NUL"):
        await call(WRITE_FILE, ctx, path="a\x00b", content="x")


async def test_symlinked_file_pointing_outside_is_refused(
    ctx: ToolContext, sandbox: Path, outside: Path
) -> None:
    sandbox.mkdir()
    (sandbox / "link.txt").symlink_to(outside / "secret.txt")

    with pytest.raises(ToolFailure, match="link.txt is a symlink"):
        await call(READ_FILE, ctx, path="link.txt")
    with pytest.raises(ToolFailure, match="link.txt is a symlink"):
        await call(WRITE_FILE, ctx, path="link.txt", content="owned")
    with pytest.raises(ToolFailure, match="link.txt is a symlink"):
        await call(DELETE_FILE, ctx, path="link.txt")

    assert (outside / "secret.txt").read_text() == "top secret"
    assert (sandbox / "link.txt").is_symlink()


async def test_symlink_to_a_file_inside_the_sandbox_is_refused_too(
    ctx: ToolContext, sandbox: Path
) -> None:
    sandbox.mkdir()
    (sandbox / "real.txt").write_text("real")
    (sandbox / "alias.txt").symlink_to("real.txt")
    with pytest.raises(ToolFailure, match="symlink"):
        await call(READ_FILE, ctx, path="alias.txt")


async def test_symlinked_folder_in_the_path_is_refused(
    ctx: ToolContext, sandbox: Path, outside: Path
) -> None:
    (sandbox / "a").mkdir(parents=True)
    (sandbox / "a" / "escape").symlink_to(outside, target_is_directory=True)

    with pytest.raises(ToolFailure, match="a/escape is a symlink"):
        await call(READ_FILE, ctx, path="a/escape/secret.txt")
    with pytest.raises(ToolFailure, match="a/escape is a symlink"):
        await call(WRITE_FILE, ctx, path="a/escape/new.txt", content="owned")
    with pytest.raises(ToolFailure, match="a/escape is a symlink"):
        await call(DELETE_FILE, ctx, path="a/escape/secret.txt")

    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


async def test_missing_file(ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="no such file: missing.txt"):
        await call(READ_FILE, ctx, path="missing.txt")
    with pytest.raises(ToolFailure, match="no such file: missing.txt"):
        await call(DELETE_FILE, ctx, path="missing.txt")
    with pytest.raises(ToolFailure, match="no such folder: nope"):
        await call(READ_FILE, ctx, path="nope/missing.txt")


async def test_folders_are_not_files(ctx: ToolContext, sandbox: Path) -> None:
    (sandbox / "sub").mkdir(parents=True)
    with pytest.raises(ToolFailure, match="sub is a folder, not a file"):
        await call(READ_FILE, ctx, path="sub")
    with pytest.raises(ToolFailure, match="sub is a folder, not a file"):
        await call(WRITE_FILE, ctx, path="sub", content="x")
    with pytest.raises(ToolFailure, match="sub is a folder, not a file"):
        await call(DELETE_FILE, ctx, path="sub")
    assert (sandbox / "sub").is_dir()


async def test_a_file_used_as_a_folder_is_refused(ctx: ToolContext, sandbox: Path) -> None:
    await call(WRITE_FILE, ctx, path="plain.txt", content="x")
    with pytest.raises(ToolFailure, match="plain.txt is not a folder"):
        await call(WRITE_FILE, ctx, path="plain.txt/inner.txt", content="x")


async def test_fifo_is_refused_without_blocking(ctx: ToolContext, sandbox: Path) -> None:
    sandbox.mkdir()
    os.mkfifo(sandbox / "pipe")
    with pytest.raises(ToolFailure, match="pipe is not a regular file"):
        await call(READ_FILE, ctx, path="pipe")


async def test_long_files_are_truncated(ctx: ToolContext, sandbox: Path) -> None:
    sandbox.mkdir()
    (sandbox / "big.txt").write_bytes(b"a" * MAX_READ_BYTES + b"b" * 10)
    text = await call(READ_FILE, ctx, path="big.txt")
    body, note = text.rsplit("\n", 1)
    assert body == "a" * MAX_READ_BYTES
    assert note == f"[truncated: showing the first {MAX_READ_BYTES} of {MAX_READ_BYTES + 10} bytes]"


async def test_a_file_of_exactly_the_limit_is_not_truncated(
    ctx: ToolContext, sandbox: Path
) -> None:
    sandbox.mkdir()
    (sandbox / "full.txt").write_bytes(b"a" * MAX_READ_BYTES)
    assert await call(READ_FILE, ctx, path="full.txt") == "a" * MAX_READ_BYTES


async def test_invalid_utf8_is_replaced(ctx: ToolContext, sandbox: Path) -> None:
    sandbox.mkdir()
    (sandbox / "bin.dat").write_bytes(b"ok \xff\xfe end")
    assert await call(READ_FILE, ctx, path="bin.dat") == "ok \ufffd\ufffd end"


def test_argument_limits() -> None:
    WRITE_FILE.args_model.model_validate({"path": "a" * 255, "content": "x" * 100_000})
    with pytest.raises(ValidationError, match="at most 255 characters"):
        READ_FILE.args_model.model_validate({"path": "a" * 256})
    with pytest.raises(ValidationError, match="at most 100000 characters"):
        WRITE_FILE.args_model.model_validate({"path": "a", "content": "x" * 100_001})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        DELETE_FILE.args_model.model_validate({"path": "a", "recursive": True})


def test_declared_risks() -> None:
    assert (READ_FILE.risk, READ_FILE.idempotent, READ_FILE.read_only) == ("medium", True, True)
    assert (WRITE_FILE.risk, WRITE_FILE.idempotent, WRITE_FILE.read_only) == ("high", False, False)
    assert (DELETE_FILE.risk, DELETE_FILE.idempotent) == ("high", False)
