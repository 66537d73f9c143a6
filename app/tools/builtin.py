"""The example tools of the built-in `assistant` agent."""

from __future__ import annotations

from app.tools.base import Tool
from app.tools.calculator import CALCULATOR
from app.tools.clock import CURRENT_TIME
from app.tools.files import DELETE_FILE, READ_FILE, WRITE_FILE
from app.tools.http import HTTP_GET


def builtin_tools() -> list[Tool]:
    """calculator, current_time, read_file, write_file, delete_file and http_get, in that order."""
    return [CALCULATOR, CURRENT_TIME, READ_FILE, WRITE_FILE, DELETE_FILE, HTTP_GET]
