"""The console script as a newcomer uses it: serve on SQLite, curl, keys, migrate."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSVC_")}
    return (
        env
        | {
            "AGENTSVC_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
            "AGENTSVC_SANDBOX_DIR": str(tmp_path / "sandbox"),
            "AGENTSVC_LOG_LEVEL": "warning",
        }
        | extra
    )


def agentsvc(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("processes", "log_format"), [("1", "text"), ("2", "json")])
def test_serve_on_bare_sqlite_answers_the_readme_curl(
    tmp_path: Path, processes: str, log_format: str
) -> None:
    port = free_port()
    env = cli_env(
        tmp_path,
        AGENTSVC_API_KEYS="demo:demo-key",
        AGENTSVC_PORT=str(port),
        AGENTSVC_WEB_PROCESSES=processes,
        AGENTSVC_LOG_FORMAT=log_format,
        AGENTSVC_LOG_LEVEL="info",
    )
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        response = httpx.post(
            f"{base}/agent",
            json={"agent": "assistant", "input": "What is 17*23?"},
            headers={"Authorization": "Bearer demo-key"},
            timeout=30,
        )
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "completed"
        assert "391" in body["result"]["output"]
        trace = httpx.get(
            f"{base}/agent/runs/{body['job_id']}/trace",
            headers={"Authorization": "Bearer demo-key"},
        ).json()
        assert trace["tool_calls"][0]["name"] == "calculator"
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert proc.wait(30) in (0, -signal.SIGTERM)
    lines = (tmp_path / "serve.log").read_text().splitlines()
    access = [line for line in lines if "POST /agent HTTP/1.1" in line]
    assert len(access) == 1, lines
    if log_format == "json":  # every line, ours and uvicorn's, one JSON object
        entries = [json.loads(line) for line in lines if line.strip()]
        assert {"ts", "level", "logger", "message"} <= set(entries[0])
        assert json.loads(access[0])["logger"] == "uvicorn.access"


def test_keys_create_prints_a_working_key_once(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    created = agentsvc("keys", "create", "--user", "carol", "--role", "approver", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("ak_")
    assert len(key) > 30

    import sqlite3

    with sqlite3.connect(tmp_path / "cli.db") as conn:
        rows = conn.execute("SELECT user_id, role, key_hash FROM api_keys").fetchall()
    assert rows[0][:2] == ("carol", "approver")
    assert key not in rows[0][2]

    bad = agentsvc("keys", "create", "--user", "carol", "--role", "root", env=env)
    assert bad.returncode != 0
    assert "role" in bad.stderr


def test_keys_list_and_revoke(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    keys = [agentsvc("keys", "create", "--user", u, env=env).stdout.strip() for u in "cd"]
    listed = agentsvc("keys", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert [(r[1], r[2], r[4]) for r in rows] == [("c", "user", "-"), ("d", "user", "-")]
    assert not any(k in listed.stdout for k in keys)

    by_key = agentsvc("keys", "revoke", keys[0], env=env)
    assert by_key.returncode == 0, by_key.stderr
    assert by_key.stdout.split() == [rows[0][0], "c", "revoked"]
    by_id = agentsvc("keys", "revoke", rows[1][0], env=env)
    assert by_id.returncode == 0, by_id.stderr
    only_d = agentsvc("keys", "list", "--user", "d", env=env).stdout.split()
    assert only_d[:3] == [rows[1][0], "d", "user"]
    assert only_d[4] != "-"

    unknown = agentsvc("keys", "revoke", "ak_nothing", env=env)
    assert unknown.returncode == 1
    assert "no stored key matches" in unknown.stderr


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    for _ in range(2):
        result = agentsvc("migrate", env=env)
        assert result.returncode == 0, result.stderr
        assert "latest revision" in result.stdout


def test_a_test_cannot_reach_a_real_model_api() -> None:
    """pytest-socket (pyproject addopts) refuses every connection that is not loopback."""
    from pytest_socket import SocketConnectBlockedError

    with (
        pytest.warns(UserWarning, match="192.0.2.1"),
        pytest.raises(SocketConnectBlockedError),
        socket.create_connection(("192.0.2.1", 443), 1),
    ):
        pass
