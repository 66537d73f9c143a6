"""Child processes of a benchmark: start, wait until they answer, measure CPU, stop.

Every wait is bounded; a child that does not stop on SIGTERM is killed by its pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The benchmark cannot go on (a server did not start, a check failed)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Child:
    """A process this benchmark started, with its output in `log`."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def start(
    name: str, cmd: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_dir: Path
) -> Child:
    """Start `cmd` in its own session with stdout and stderr going to `log_dir/name.log`."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(cmd),
            env=dict(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Child(name, popen, log)


def wait_ready(child: Child, url: str, *, timeout_s: float = 30.0) -> None:
    """Poll `url` until it answers 200; fail when the child exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if child.popen.poll() is not None:
                raise BenchError(
                    f"{child.name} exited with {child.popen.returncode}:\n{child.tail()}"
                )
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise BenchError(f"{child.name} did not answer {url} within {timeout_s:g} s:\n{child.tail()}")


def stop(child: Child, *, grace_s: float = 15.0) -> None:
    """SIGTERM, wait up to `grace_s`, then SIGKILL; only ever this child's own pid."""
    if child.popen.poll() is not None:
        return
    child.popen.send_signal(signal.SIGCONT)  # a paused child would not see SIGTERM
    child.popen.send_signal(signal.SIGTERM)
    try:
        child.popen.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.popen.kill()
        child.popen.wait(timeout=5)


def pause(child: Child) -> None:
    """SIGSTOP: the child keeps its connections and state but runs nothing until resumed."""
    if child.popen.poll() is None:
        child.popen.send_signal(signal.SIGSTOP)


def resume(child: Child) -> None:
    if child.popen.poll() is None:
        child.popen.send_signal(signal.SIGCONT)


def py_spy_record(
    pid: int, out: Path, *, duration_s: float, subprocesses: bool = False
) -> subprocess.Popen[bytes]:
    """Sample `pid` at 200 Hz for `duration_s` into `out` (.svg flame graph, .json
    speedscope, anything else py-spy's raw collapsed stacks). py-spy beside the
    interpreter, on PATH, or in $PY_SPY."""
    beside = Path(sys.executable).with_name("py-spy")
    py_spy = os.environ.get("PY_SPY") or (str(beside) if beside.exists() else None)
    py_spy = py_spy or shutil.which("py-spy")
    if py_spy is None:
        raise BenchError("profiling needs py-spy (pip install py-spy, or set PY_SPY)")
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
    cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, round(duration_s)))]
    cmd += ["--rate", "200", "--nonblocking", "--format", fmt, "-o", str(out)]
    if subprocesses:
        cmd.append("--subprocesses")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (uvicorn's workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read_stat(int(entry.name))
        if stat is not None:
            children.setdefault(int(stat[2]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def pids_named(command: str) -> list[int]:
    """Every process whose command name is `command` (e.g. all PostgreSQL backends)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _read_stat(int(entry.name))
            if stat is not None and stat[0] == command:
                pids.append(int(entry.name))
    return pids


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """User + system CPU time each live process has used so far."""
    used = {}
    for pid in pids:
        stat = _read_stat(pid)
        if stat is not None:
            used[pid] = (int(stat[12]) + int(stat[13])) / CLOCK_TICKS  # utime, stime
    return used


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two samples by the processes alive at the second.

    A process that started in between counts from zero; one that ended in between is
    lost, so this is a lower bound when processes come and go (PostgreSQL backends of
    connections opened and closed under load).
    """
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


@dataclass(frozen=True, kw_only=True)
class CpuUse:
    """CPU seconds each party used in a window, and what the whole machine did meanwhile."""

    parties: dict[str, float]
    wall_s: float
    machine_busy_s: float
    """CPU seconds all cores were busy during the window (anyone's)."""
    machine_total_s: float
    """CPU seconds all cores had during the window."""

    @property
    def machine_busy(self) -> float:
        return self.machine_busy_s / max(self.machine_total_s, 1e-9)

    def others_busy(self, *extra_s: float) -> float:
        """Share of all cores used by processes that are none of the parties nor `extra_s`
        (CPU measured another way, e.g. wrk's): other work on the machine."""
        ours = sum(self.parties.values()) + sum(extra_s)
        return max(self.machine_busy_s - ours, 0.0) / max(self.machine_total_s, 1e-9)


class CpuMeter:
    """CPU of named groups of processes between `start()` and `stop()`. Each group's pids
    are listed at both ends, so processes started in between count from zero."""

    def __init__(self, parties: Mapping[str, Callable[[], Iterable[int]]]) -> None:
        self._parties = dict(parties)
        self._before: dict[str, dict[int, float]] = {}
        self._machine = (0.0, 0.0)
        self._wall = 0.0

    def _sample(self) -> dict[str, dict[int, float]]:
        return {name: cpu_seconds(pids()) for name, pids in self._parties.items()}

    def start(self) -> None:
        self._before = self._sample()
        self._machine = machine_cpu()
        self._wall = time.monotonic()

    def stop(self) -> CpuUse:
        after = self._sample()
        busy, total = machine_cpu()
        return CpuUse(
            parties={n: cpu_used(self._before.get(n, {}), a) for n, a in after.items()},
            wall_s=time.monotonic() - self._wall,
            machine_busy_s=busy - self._machine[0],
            machine_total_s=total - self._machine[1],
        )


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def _read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/pid/stat after the pid: [comm, state, ppid, ...]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm_end = text.rfind(")")
    comm = text[text.find("(") + 1 : comm_end]
    return [comm, *text[comm_end + 2 :].split()]
