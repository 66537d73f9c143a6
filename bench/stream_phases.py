"""The SSE benchmark's phases, each on a fresh server process: idle connections held
(keep-alive baseline, then streams) and fan-out of one run's events (Redis round trip,
one subscriber, then many)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from bench import procs, servers, stream_io
from bench.harness import Harness
from bench.procs import BenchError, Child, CpuMeter
from bench.stream_io import ClientProcess
from bench.stream_report import KEEPALIVE, REDIS_RTT, FanoutRow, IdleRow, Results
from bench.stream_tracing import growth

KEEPALIVE_TIMEOUT_S = 86_400
"""The baseline server's keep-alive timeout: uvicorn's default (5 s) would close the
idle connections it is meant to hold."""


class Phases:
    """Runs ids, servers and client processes of one benchmark run; fills `results`."""

    def __init__(self, args: argparse.Namespace, h: Harness) -> None:
        self.args = args
        self.h = h
        self.env = h.agentsvc_env(log_level=args.log_level, embedded_workers=0)
        self.env["AGENTSVC_REDIS_URL"] = args.redis
        self.results = Results()
        self.idle_ids: list[str] = []
        self.warm_ids: list[str] = []
        self.fan_ids: list[str] = []
        self._traced = 0
        self._port = 0
        """The port of the server started last."""

    def _server(self, name: str, *, baseline: bool = False, traced: bool = False) -> Child:
        port = procs.free_port()
        host = ["--host", "127.0.0.1", "--port", str(port)]
        if baseline:
            cmd = [sys.executable, "-m", "uvicorn", "bench.servers:agentsvc_app", "--factory"]
            cmd += [*host, "--log-level", self.args.log_level, "--proxy-headers"]
            cmd += ["--timeout-keep-alive", str(KEEPALIVE_TIMEOUT_S)]
        elif traced:
            cmd = [sys.executable, "-m", "bench.stream_tracing", "--snapshots", str(self.h.tmp)]
            cmd += ["--frames", str(self.args.trace_frames), "serve", *host]
        else:
            cmd = servers.agentsvc_command(
                port, servers.ServeOptions(log_level=self.args.log_level)
            )
        child = self.h.start(name, cmd, self.env)
        # Importing the app under tracemalloc with many frames takes a while.
        ready_s = 300.0 if traced else 30.0
        procs.wait_ready(child, f"http://127.0.0.1:{port}/healthz", timeout_s=ready_s)
        # One process: `agentsvc serve` runs uvicorn in-process (no worker processes).
        if procs.descendants(child.pid) != [child.pid]:
            raise BenchError(f"{name} runs in several processes: {procs.descendants(child.pid)}")
        self._port = port
        return child

    def _client(self, name: str, args: list[str]) -> ClientProcess:
        parallel = ["--parallel", str(self.args.open_parallel)]
        log = self.h.tmp / f"{name}.log"
        client = ClientProcess.start(
            [*parallel, *args], port=self._port, cwd=self.h.app_dir, log=log
        )
        self.h.children.append(client.child)
        return client

    def _ids_file(self, name: str, ids: list[str]) -> list[str]:
        path = self.h.tmp / f"{name}.ids"
        path.write_text("\n".join(ids) + "\n")
        return ["stream", "--ids", str(path)]

    def _open_timeout(self, count: int) -> float:
        return 60.0 + count / 20

    def submit(self) -> None:
        """Every run the phases stream, pending for good (no worker runs anywhere)."""
        a = self.args
        server = self._server("submit")
        warm = min(a.warmup, a.streams)
        fan = 2 * len(a.rates)
        ids = stream_io.submit_runs(self._port, a.streams + warm + fan)
        procs.stop(server)
        self.idle_ids, self.warm_ids = ids[: a.streams], ids[a.streams : a.streams + warm]
        self.fan_ids = ids[a.streams + warm :]
        print(f"submitted {len(ids)} runs")  # noqa: T201

    def idle(self, what: str) -> None:
        """A fresh server; warm it with a few connections of the kind measured; RSS before;
        open them all; settle; RSS after; CPU over the idle window; check all still open."""
        a = self.args
        keepalive = what == KEEPALIVE
        traced = not keepalive and a.trace_memory
        name = "keepalive" if keepalive else "streams"
        server = self._server(name, baseline=keepalive, traced=traced)
        if keepalive:
            warm = ["healthz", "--count", str(min(a.warmup, a.streams))]
            hold = ["healthz", "--count", str(a.streams)]
        else:
            warm, hold = (
                self._ids_file("warm", self.warm_ids),
                self._ids_file("idle", self.idle_ids),
            )
        warmer = self._client("warmup", warm)
        warmer.answer(self._open_timeout(a.warmup))
        warmer.exit()
        time.sleep(1.0)
        snapshots = self._snapshot(server) if traced else []
        before = stream_io.rss_kib(server.pid)
        client = self._client("client", hold)
        opened = client.answer(self._open_timeout(a.streams))
        time.sleep(a.settle)
        after = stream_io.rss_kib(server.pid)
        at_rss = client.ask({"cmd": "status"}, 30)
        snapshots += self._snapshot(server) if traced else []
        meter = self._meter(server, client)
        meter.start()
        time.sleep(a.idle_s)
        cpu = meter.stop()
        status = client.ask({"cmd": "status"}, 30)
        client.exit()
        procs.stop(server)
        traced_bytes = None
        if traced:
            traced_bytes, self.results.trace_lines = growth(snapshots[0], snapshots[1])
        errors = opened["errors"]
        assert isinstance(errors, dict)
        self.results.idle.append(
            IdleRow(
                what=what + (" under tracemalloc" if traced else ""),
                connections=a.streams,
                opened=_int(opened["opened"]),
                failed=_int(opened["failed"]),
                errors={str(k): _int(v) for k, v in errors.items()},
                open_s=float(str(opened["open_s"])),
                rss_before_kib=before,
                rss_after_kib=after,
                open_at_rss=_int(at_rss["open"]),
                still_open=_int(status["open"]),
                later_events=_int(status["later_events"]),
                idle=cpu,
                server_log=stream_io.log_problems(server.log),
                traced_growth_bytes=traced_bytes,
            )
        )

    def _snapshot(self, server: Child) -> list[Path]:
        """Ask the traced server for a snapshot; its path once written."""
        path = self.h.tmp / f"snapshot-{self._traced}.pickle"
        self._traced += 1
        server.popen.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 120
        while not path.exists():
            if time.monotonic() > deadline:
                raise BenchError(f"no tracemalloc snapshot {path} within 120 s")
            time.sleep(0.2)
        return [path]

    def _meter(self, server: Child, client: ClientProcess | None) -> CpuMeter:
        parties = {
            "server": lambda: [server.pid],
            "postgres": lambda: procs.pids_named("postgres"),
            "redis": lambda: procs.pids_named("redis-server"),
        }
        if client is not None:
            parties["client"] = lambda: [client.child.pid]
        return CpuMeter(parties)

    def fanout(self) -> None:
        """A fresh server; at each rate a raw Redis round trip, then `--events` published
        into a run's bus with one subscriber, then into another's with `--subscribers`."""
        a = self.args
        server = self._server("fanout")
        runs = iter(self.fan_ids)
        for rate in a.rates:
            meter = self._meter(server, None)
            meter.start()
            latency, seqs = stream_io.redis_round_trip(a.redis, count=a.events, rate=rate)
            cpu = meter.stop()
            in_order = int(seqs == list(range(1, a.events + 1)))
            self.results.fanout.append(
                FanoutRow(
                    what=REDIS_RTT,
                    subscribers=1,
                    events=a.events,
                    rate=rate,
                    publish_s=cpu.wall_s,
                    latency_ms=latency,
                    check={"deliveries": len(seqs), "complete_in_order": in_order},
                    cpu=cpu,
                )
            )
            self._fan(server, next(runs), 1, rate)
            self._fan(server, next(runs), a.subscribers, rate)
        procs.stop(server)
        self.results.fanout_log = stream_io.log_problems(server.log)

    def _fan(self, server: Child, run_id: str, count: int, rate: float) -> None:
        a = self.args
        client = self._client(f"fanout-{count}", self._ids_file(f"fan-{count}", [run_id] * count))
        opened = client.answer(self._open_timeout(count))
        if _int(opened["opened"]) != count:
            raise BenchError(f"only {opened['opened']} of {count} subscribers connected: {opened}")
        time.sleep(1.0)
        profiling = None
        if a.profile is not None and count > 1 and rate == max(a.rates):
            took_s = a.events / rate
            profiling = procs.py_spy_record(server.pid, a.profile, duration_s=took_s)
        meter = self._meter(server, client)
        meter.start()
        publish_s = stream_io.publish_deltas(
            a.redis, run_id, count=a.events, rate=rate, env=self.h.env, cwd=self.h.app_dir
        )
        summary = client.ask({"cmd": "collect", "last_seq": a.events, "timeout_s": 60}, 90)
        cpu = meter.stop()
        client.exit()
        if profiling is not None:
            profiling.wait(timeout=120)
        latency, worst = summary.pop("latency_ms"), summary.pop("worst_events_ms")
        assert isinstance(latency, dict)
        assert isinstance(worst, dict)
        self.results.fanout.append(
            FanoutRow(
                what=f"agentsvc, {count} subscriber{'s' if count > 1 else ''} on one run",
                subscribers=count,
                events=a.events,
                rate=rate,
                publish_s=publish_s,
                latency_ms={str(k): float(v) for k, v in latency.items()},
                check={k: _int(v) for k, v in summary.items()},
                worst_events_ms={str(k): float(v) for k, v in worst.items()},
                cpu=cpu,
                open_s=float(str(opened["open_s"])),
            )
        )


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value
