"""Metrics shared by the processes of one host (prometheus_client's multiprocess mode).

prometheus_client decides once, when it is first imported, whether a process keeps its
metric values in memory (one process: the default) or in per-process files under
`PROMETHEUS_MULTIPROC_DIR`, which a scrape of any process of the host adds up. So
`agentsvc serve` and `agentsvc worker` call `share_metrics` before they import the app,
and the processes they start inherit the directory through the environment. This module
imports prometheus_client only inside its functions, for that reason.

Processes sharing a directory must share a PID namespace (one host or one container):
files are named by process id, and `forget_dead_processes` drops the gauges of processes
that no longer exist.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from app.settings import Settings

PROMETHEUS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
SETTING_VARIABLE = "AGENTSVC_METRICS_DIR"
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


class MetricsSetupError(RuntimeError):
    """The process cannot share its metrics the way the settings ask."""


@contextlib.contextmanager
def host_metrics(settings: Settings, *, processes: int) -> Iterator[Settings]:
    """For `agentsvc serve|worker`, before the app is imported: share metrics through
    AGENTSVC_METRICS_DIR when set, else through a temporary directory when this command
    starts several processes, else not at all. Yields the settings the processes run with;
    on exit this process's live gauges are dropped (a temporary directory is removed)."""
    if settings.metrics_dir is not None:
        share_metrics(settings.metrics_dir)
        try:
            yield settings
        finally:
            mark_dead(settings.metrics_dir, os.getpid())
    elif processes > 1:
        with tempfile.TemporaryDirectory(prefix="agentsvc-metrics-") as tmp:
            share_metrics(Path(tmp))
            yield settings.model_copy(update={"metrics_dir": Path(tmp)})
    else:
        yield settings


def share_metrics(directory: Path) -> None:
    """Keep this process's metrics, and those of the processes it starts, in `directory`.
    Call it before anything imports prometheus_client."""
    if "prometheus_client" in sys.modules:
        raise MetricsSetupError(
            "prometheus_client was imported before the metrics directory was set up"
        )
    directory.mkdir(parents=True, exist_ok=True)
    # Both: prometheus_client reads the first, the Settings of child processes the second.
    os.environ[PROMETHEUS_DIR_VARIABLE] = str(directory)
    os.environ[SETTING_VARIABLE] = str(directory)


def is_sharing() -> bool:
    """Whether this process's prometheus_client keeps its values in shared files."""
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


def check_sharing(directory: Path | None) -> None:
    """Fail at start-up when the settings and prometheus_client disagree (an app started
    some other way than `agentsvc serve|worker` with AGENTSVC_METRICS_DIR set, or the
    reverse): its /metrics would otherwise silently miss values."""
    if (directory is not None) != is_sharing():
        raise MetricsSetupError(
            f"AGENTSVC_METRICS_DIR and {PROMETHEUS_DIR_VARIABLE} must name the same directory"
            " (or neither be set); `agentsvc serve` and `agentsvc worker` set the second"
            " from the first"
        )


def mark_dead(directory: Path, pid: int) -> None:
    """Drop the live gauges (runs in flight, breaker and queue state) of process `pid`;
    its counters and histograms stay in the host's totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def forget_dead_processes(directory: Path) -> list[int]:
    """Mark dead every process with live gauges in `directory` that no longer runs (it
    crashed, or exited without marking itself). Returns their pids."""
    dead = set()
    for entry in os.scandir(directory):
        match = _LIVE_GAUGE_FILE.match(entry.name)
        if match is not None and not _alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        mark_dead(directory, pid)
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
