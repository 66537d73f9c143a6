"""Closed-loop HTTP load with wrk: a fixed number of connections, each POSTs back to back."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BenchError

RESULT_TAG = "BENCH_RESULT"
SCRIPT = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = {authorization}

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "{tag} %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.1f\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean))
end
"""
CAP = """
-- Stop sending after {cap} answers (wrk itself runs on until its duration or SIGINT).
local answered = 0
response = function(status, headers, body)
  answered = answered + 1
  if answered >= {cap} then wrk.thread:stop() end
end
"""


@dataclass(frozen=True, kw_only=True)
class Load:
    """What to send and how hard."""

    body: dict[str, object]
    api_key: str
    connections: int
    threads: int = 1
    timeout_s: float = 30.0
    max_requests: int | None = None
    """Stop sending after this many answers per wrk thread (None: until the end)."""


@dataclass(frozen=True, kw_only=True)
class LoadResult:
    """wrk's summary: answered requests, errors, latency percentiles (ms), its own CPU."""

    requests: int
    duration_s: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    wrk_cpu_s: float

    @property
    def per_second(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def write_script(load: Load, directory: Path, *, name: str = "post") -> Path:
    """The Lua script that makes wrk POST `load.body` with the bearer key."""
    cap = load.max_requests
    path = directory / f"{name}_{load.connections}{f'_{cap}' if cap else ''}.lua"
    script = SCRIPT.format(
        body=json.dumps(json.dumps(load.body, separators=(",", ":"))),
        authorization=json.dumps(f"Bearer {load.api_key}"),
        tag=RESULT_TAG,
    )
    path.write_text(script + (CAP.format(cap=cap) if cap else ""))
    return path


@dataclass
class RunningWrk:
    """A wrk started in the background: `interrupt()` ends it early (wrk then prints its
    summary as at the end of its duration), `finish()` waits for it and reads it."""

    popen: subprocess.Popen[bytes]
    out: Path
    duration_s: float
    timeout_s: float
    cpu_before: float

    def running(self) -> bool:
        return self.popen.poll() is None

    def interrupt(self) -> None:
        if self.running():
            self.popen.send_signal(signal.SIGINT)

    def finish(self) -> LoadResult:
        """Wait (bounded by its duration and request timeout) and parse wrk's summary."""
        try:
            self.popen.wait(timeout=self.duration_s + self.timeout_s + 30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)
            raise BenchError(f"wrk did not end:\n{self.out.read_text(errors='replace')}") from None
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        output = self.out.read_text(errors="replace")
        if self.popen.returncode != 0:
            raise BenchError(f"wrk failed ({self.popen.returncode}):\n{output}")
        return _parse(output, wrk_cpu_s=after.ru_utime + after.ru_stime - self.cpu_before)


def start_wrk(url: str, load: Load, *, duration_s: float, script: Path) -> RunningWrk:
    """Start wrk on `url` for at most `duration_s`; wrk must be on PATH."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError("wrk is not installed (apt-get install wrk)")
    cmd = [
        wrk,
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={load.timeout_s:g}s",
        "-s",
        str(script),
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = script.with_suffix(".out")
    with out.open("wb") as sink:
        popen = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    return RunningWrk(
        popen=popen,
        out=out,
        duration_s=duration_s,
        timeout_s=load.timeout_s,
        cpu_before=before.ru_utime + before.ru_stime,
    )


def run_wrk(url: str, load: Load, *, duration_s: float, script: Path) -> LoadResult:
    """Drive `url` for `duration_s` with `load.connections` connections."""
    return start_wrk(url, load, duration_s=duration_s, script=script).finish()


def _parse(output: str, *, wrk_cpu_s: float) -> LoadResult:
    for line in output.splitlines():
        if line.startswith(RESULT_TAG):
            values = [float(v) for v in line.split()[1:]]
            break
    else:
        raise BenchError(f"wrk printed no {RESULT_TAG} line:\n{output}")
    requests, duration_us, connect, read, write, status, timeout = (int(v) for v in values[:7])
    p50, p90, p99, p999, mean = (v / 1000 for v in values[7:])
    return LoadResult(
        requests=requests,
        duration_s=duration_us / 1e6,
        errors={
            "connect": connect,
            "read": read,
            "write": write,
            "status": status,
            "timeout": timeout,
        },
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        p999_ms=p999,
        mean_ms=mean,
        wrk_cpu_s=wrk_cpu_s,
    )
