"""The text exposition of `/metrics`: this process's metrics, or, when the processes of the
host share a metrics directory (see `multiprocess.py`), the sum over all of them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, start_http_server
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from app.observability.multiprocess import forget_dead_processes
from app.settings import Settings


class _HostCollector:
    """Every process's files in the directory, after dropping the gauges of dead ones."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._files = MultiProcessCollector(None, path=str(directory))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        forget_dead_processes(self._directory)
        return self._files.collect()  # type: ignore[no-untyped-call,no-any-return]


def metrics_registry(metrics_dir: Path | None) -> CollectorRegistry:
    """What a scrape reads: the process's own registry, or the host's shared directory."""
    if metrics_dir is None:
        return REGISTRY
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_HostCollector(metrics_dir))
    return registry


async def render_metrics(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition and its content type. Collecting reads files in multiprocess mode,
    so it runs in a thread, off the event loop."""
    body = await asyncio.to_thread(generate_latest, registry)
    return body, CONTENT_TYPE_LATEST


@contextlib.contextmanager
def metrics_server(settings: Settings) -> Iterator[None]:
    """For `agentsvc worker`, which has no API: /metrics on AGENTSVC_METRICS_PORT, from a
    thread, while the block runs (nothing when the port is not set)."""
    if settings.metrics_port is None:
        yield
        return
    registry = metrics_registry(settings.metrics_dir)
    server, thread = start_http_server(settings.metrics_port, settings.host, registry)
    try:
        yield
    finally:
        server.shutdown()
        thread.join(5)
