"""Process logging: plain lines for a terminal, or one JSON object per line for a log
pipeline (Loki, Elasticsearch, CloudWatch), for our loggers and uvicorn's alike."""

from __future__ import annotations

import logging
import logging.config
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

RUN_ID: ContextVar[str | None] = ContextVar("run_id", default=None)
"""The run the current task drives (set by the executor for each run's task): JSON lines
logged meanwhile carry it as `run_id`."""


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, with ` run_id=<id>` after the message when logged while driving a run
    (before the traceback, when the record carries one)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        run_id = RUN_ID.get()
        return line if run_id is None else f"{line} run_id={run_id}"


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message"}`, with `run_id` when logged while driving a run
    and `exc` when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        run_id = RUN_ID.get()
        if run_id is not None:
            entry["run_id"] = run_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return orjson.dumps(entry).decode()


def log_config(level: str, fmt: str) -> dict[str, object]:
    """A `logging.config.dictConfig` for the root logger and uvicorn's, in `fmt`."""
    formatter: dict[str, object] = {"()": JsonFormatter if fmt == "json" else TextFormatter}
    handler = {"class": "logging.StreamHandler", "formatter": "agentsvc"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"agentsvc": formatter},
        "handlers": {"stderr": {**handler, "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # uvicorn's own loggers pass their records up to the root's handler.
        "loggers": {
            **{
                name: {"level": level.upper(), "handlers": [], "propagate": True}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
            # Alembic announces each of its plugins at INFO whenever it migrates.
            "alembic.runtime.plugins": {"level": "WARNING"},
        },
    }


def configure_logging(level: str, fmt: str) -> None:
    logging.config.dictConfig(log_config(level, fmt))
