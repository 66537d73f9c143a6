"""Log lines as text or JSON: the run they were logged for, the exception in them."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from app.observability.logs import RUN_ID, JsonFormatter, TextFormatter, log_config


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("app.x", logging.WARNING, __file__, 1, message, args, exc_info)


def test_a_record_is_one_json_object_with_its_exception() -> None:
    line = JsonFormatter().format(record("run %s: %s", "r1", 'said "hi"\nthen left', exc=True))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["logger"] == "app.x"
    assert entry["message"] == 'run r1: said "hi"\nthen left'
    assert entry["ts"].endswith("+00:00")
    assert entry["exc"].startswith("Traceback")
    assert "ValueError: boom" in entry["exc"]
    assert "exc" not in json.loads(JsonFormatter().format(record("plain")))


async def test_lines_logged_while_driving_a_run_name_it() -> None:
    async def drive() -> str:
        RUN_ID.set("run-7")  # as the executor does in each run's task
        return JsonFormatter().format(record("step"))

    assert json.loads(await asyncio.create_task(drive()))["run_id"] == "run-7"
    assert "run_id" not in json.loads(JsonFormatter().format(record("elsewhere")))


async def test_text_lines_logged_while_driving_a_run_end_with_it() -> None:
    async def drive() -> str:
        RUN_ID.set("run-7")
        return TextFormatter().format(record("step %d", 3, exc=True))

    first, *traceback = (await asyncio.create_task(drive())).splitlines()
    assert first.endswith(" WARNING app.x step 3 run_id=run-7")
    assert traceback[0] == "Traceback (most recent call last):"
    assert TextFormatter().format(record("elsewhere")).endswith(" WARNING app.x elsewhere")


def test_uvicorn_logs_through_the_same_handler() -> None:
    config = log_config("warning", "json")
    loggers = config["loggers"]
    assert isinstance(loggers, dict)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        assert loggers[name] == {"level": "WARNING", "handlers": [], "propagate": True}
    assert log_config("debug", "text")["loggers"]["alembic.runtime.plugins"] == {  # type: ignore[index]
        "level": "WARNING"
    }
    assert config["formatters"] == {"agentsvc": {"()": JsonFormatter}}
    assert log_config("info", "text")["formatters"] == {"agentsvc": {"()": TextFormatter}}
