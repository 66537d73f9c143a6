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
    formatter: dict[str, object] = (
        {"()": JsonFormatter} if fmt == "json" else {"format": TEXT_FORMAT}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "agentsvc"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"agentsvc": formatter},
        "handlers": {"stderr": {**handler, "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # uvicorn's own loggers pass their records up to the root's handler.
        "loggers": {
            name: {"level": level.upper(), "handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure_logging(level: str, fmt: str) -> None:
    logging.config.dictConfig(log_config(level, fmt))
