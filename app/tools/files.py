"""`read_file`, `write_file` and `delete_file`, confined to the operator's sandbox folder.

Paths are relative, without `..`, and may not pass through a symlink. Rather than
resolving a path and checking it afterwards, every call walks it one component at
a time from an open descriptor of the sandbox, opening each folder with
`O_NOFOLLOW` relative to its parent (`openat`). A symlink anywhere fails that open,
and since each step holds the folder it checked, no concurrent rename can slip a
link in between the check and the use. This relies on POSIX `dir_fd` support.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import NoReturn

from pydantic import BaseModel, ConfigDict, Field

from app.tools.base import Risk, Tool, ToolContext, ToolFailure

MAX_PATH_CHARS = 255
MAX_WRITE_CHARS = 100_000
MAX_READ_BYTES = 64 * 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK so that opening a FIFO planted in the sandbox cannot hang the call.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_PATH_DESCRIPTION = "File path relative to the sandbox folder, e.g. 'notes/todo.txt'."


class ReadFileArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=MAX_PATH_CHARS, description=_PATH_DESCRIPTION)


class WriteFileArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=MAX_PATH_CHARS, description=_PATH_DESCRIPTION)
    content: str = Field(
        max_length=MAX_WRITE_CHARS,
        description="The whole new content of the file, as UTF-8 text.",
    )


class DeleteFileArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=MAX_PATH_CHARS, description=_PATH_DESCRIPTION)


def split_path(raw: str) -> tuple[str, ...]:
    """The components of a sandbox-relative path; `ToolFailure` for anything that could escape."""
    if "\x00" in raw:
        raise ToolFailure("path must not contain NUL bytes")
    path = PurePosixPath(raw)
    if path.is_absolute():
        raise ToolFailure(f"path must be relative to the sandbox folder, got {raw!r}")
    if ".." in path.parts:
        raise ToolFailure(f"path must not contain '..', got {raw!r}")
    if not path.parts:
        raise ToolFailure(f"path names no file: {raw!r}")
    return path.parts


@contextlib.contextmanager
def _parent_dir(sandbox_dir: Path, parts: tuple[str, ...], *, create: bool) -> Iterator[int]:
    """Yield a descriptor of the folder holding `parts[-1]`, creating folders if asked."""
    sandbox_dir.mkdir(parents=True, exist_ok=True)
    # The sandbox root itself is operator configuration and may be reached through a link.
    fd = os.open(sandbox_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, name in enumerate(parts[:-1], start=1):
            child = _open_dir(fd, name, "/".join(parts[:depth]), create=create)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _open_dir(parent: int, name: str, shown: str, *, create: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise ToolFailure(f"no such folder: {shown}") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            _refuse_entry(parent, name, shown, expected="folder")
        raise
    # Another call may create the same folder at the same moment; either way it exists.
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=parent)
    return os.open(name, _DIR_FLAGS, dir_fd=parent)


def _lstat(parent: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _refuse_entry(parent: int, name: str, shown: str, *, expected: str) -> NoReturn:
    """Raise the precise refusal for an entry that is not the `expected` kind."""
    st = _lstat(parent, name)
    mode = st.st_mode if st else 0
    if stat.S_ISLNK(mode):
        raise ToolFailure(f"refused: {shown} is a symlink; symlinks are not allowed in the sandbox")
    if stat.S_ISDIR(mode) and expected != "folder":
        raise ToolFailure(f"{shown} is a folder, not a file")
    raise ToolFailure(f"{shown} is not a {expected}")


def _read(sandbox_dir: Path, parts: tuple[str, ...]) -> str:
    shown = "/".join(parts)
    with _parent_dir(sandbox_dir, parts, create=False) as parent:
        try:
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            raise ToolFailure(f"no such file: {shown}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                _refuse_entry(parent, parts[-1], shown, expected="regular file")
            raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ToolFailure(f"{shown} is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise ToolFailure(f"{shown} is not a regular file")
        data = _read_at_most(fd, MAX_READ_BYTES + 1)
    finally:
        os.close(fd)
    text = data[:MAX_READ_BYTES].decode("utf-8", errors="replace")
    if len(data) > MAX_READ_BYTES:
        size = max(st.st_size, len(data))
        text += f"\n[truncated: showing the first {MAX_READ_BYTES} of {size} bytes]"
    return text


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0 and (chunk := os.read(fd, remaining)):
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _write(sandbox_dir: Path, parts: tuple[str, ...], content: str) -> str:
    shown = "/".join(parts)
    data = content.encode("utf-8")
    name = parts[-1]
    with _parent_dir(sandbox_dir, parts, create=True) as parent:
        existing = _lstat(parent, name)
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            _refuse_entry(parent, name, shown, expected="regular file")
        # Write a sibling and rename it over the target, so readers see the old
        # content or the new, never half of it. rename() replaces a link that
        # appears meanwhile instead of following it.
        temp = f".tmp-{secrets.token_hex(8)}"
        fd = os.open(temp, _TEMP_FLAGS, 0o644, dir_fd=parent)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=parent)
            raise
    return f"wrote {len(data)} bytes to {shown}"


def _delete(sandbox_dir: Path, parts: tuple[str, ...]) -> str:
    shown = "/".join(parts)
    name = parts[-1]
    with _parent_dir(sandbox_dir, parts, create=False) as parent:
        existing = _lstat(parent, name)
        if existing is None:
            raise ToolFailure(f"no such file: {shown}")
        if not stat.S_ISREG(existing.st_mode):
            _refuse_entry(parent, name, shown, expected="regular file")
        try:
            os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            raise ToolFailure(f"no such file: {shown}") from None
    return f"deleted {shown}"


async def _run_blocking(verb: str, path: str, call: Callable[[], str]) -> str:
    """Run file I/O off the event loop; an OS error becomes a message for the model."""
    try:
        return await asyncio.to_thread(call)
    except OSError as exc:
        # strerror only: the exception's filename would reveal the sandbox's location.
        raise ToolFailure(f"cannot {verb} {path}: {exc.strerror}") from None


async def read_file(args: BaseModel, ctx: ToolContext) -> str:
    """Return the file's text (UTF-8, undecodable bytes replaced), cut at 64 KiB."""
    if not isinstance(args, ReadFileArgs):
        raise TypeError(f"read_file got {type(args).__name__}, not ReadFileArgs")
    parts = split_path(args.path)
    return await _run_blocking("read", args.path, partial(_read, ctx.sandbox_dir, parts))


async def write_file(args: BaseModel, ctx: ToolContext) -> str:
    """Create or replace the file with `args.content`, creating its folders."""
    if not isinstance(args, WriteFileArgs):
        raise TypeError(f"write_file got {type(args).__name__}, not WriteFileArgs")
    parts = split_path(args.path)
    return await _run_blocking(
        "write", args.path, partial(_write, ctx.sandbox_dir, parts, args.content)
    )


async def delete_file(args: BaseModel, ctx: ToolContext) -> str:
    """Delete the file; folders are never deleted."""
    if not isinstance(args, DeleteFileArgs):
        raise TypeError(f"delete_file got {type(args).__name__}, not DeleteFileArgs")
    parts = split_path(args.path)
    return await _run_blocking("delete", args.path, partial(_delete, ctx.sandbox_dir, parts))


READ_FILE = Tool(
    name="read_file",
    description=(
        "Read a text file from your sandbox folder. The path is relative to that folder"
        " (e.g. 'notes/todo.txt'); files longer than 64 KiB are cut off with a note."
    ),
    args_model=ReadFileArgs,
    fn=read_file,
    risk=Risk.MEDIUM,
    idempotent=True,
    read_only=True,
    # Room for the whole 64 KiB and the truncation note, so the note is what the model sees.
    max_result_chars=MAX_READ_BYTES + 200,
)

WRITE_FILE = Tool(
    name="write_file",
    description=(
        "Create or overwrite a text file in your sandbox folder with the given content;"
        " missing folders are created. The path is relative to the sandbox folder."
        " This replaces the whole file."
    ),
    args_model=WriteFileArgs,
    fn=write_file,
    risk=Risk.HIGH,
    idempotent=False,
    read_only=False,
)

DELETE_FILE = Tool(
    name="delete_file",
    description=(
        "Delete a file from your sandbox folder. The path is relative to the sandbox folder;"
        " folders cannot be deleted."
    ),
    args_model=DeleteFileArgs,
    fn=delete_file,
    risk=Risk.HIGH,
    idempotent=False,
    read_only=False,
)
