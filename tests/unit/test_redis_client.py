"""The service's Redis client packs commands with hiredis, byte for byte as redis-py would,
and keeps the connection kind its URL asks for."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.typing import EncodableT

from app.bus.redis_client import connect_redis

COMMANDS: list[tuple[EncodableT, ...]] = [
    ("EVALSHA", "a" * 40, 3, "k:{u:1}", "k:{u:1}:holds", "k:{u:1}:due", 1.5, -1, 4096, "id"),
    ("SET", "agentsvc:pcache:key", b'{"message": "\xc3\xa9"}', "PX", 60000),
    ("CONFIG GET", "maxmemory"),
    ("GET", "caf\u00e9"),
    (b"PING",),
]


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_are_packed_as_redis_py_packs_them(command: tuple[EncodableT, ...]) -> None:
    pool = connect_redis("redis://127.0.0.1:6379/0", timeout_s=0.1).connection_pool
    ours = pool.connection_class(**pool.connection_kwargs)
    theirs = Connection()
    assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command))
    assert b"".join(ours.pack_commands([command, command])) == b"".join(
        theirs.pack_commands([command, command])
    )


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", Connection),
        ("rediss://127.0.0.1:6380/0", SSLConnection),
        ("unix:///run/redis.sock?db=0", UnixDomainSocketConnection),
    ],
)
def test_the_url_still_chooses_the_connection_kind(url: str, kind: type[object]) -> None:
    pool = connect_redis(url, timeout_s=0.1).connection_pool
    assert issubclass(pool.connection_class, kind)
    assert pool.connection_kwargs["socket_timeout"] == 0.1
