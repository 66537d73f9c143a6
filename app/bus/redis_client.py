"""The process's Redis client: short timeouts, no retries, commands packed by hiredis.

redis-py's asyncio client packs every command in Python (about 20 µs for a budget script's
dozen arguments on a slow core), while its synchronous client hands the same work to
hiredis's C packer (about 5 µs). These connection classes make the asyncio client do what
the synchronous one does; everything else is redis-py's own.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.typing import EncodableT
from redis.utils import HIREDIS_AVAILABLE

_PACKER = HiredisRespSerializer()


class _HiredisPacking(AbstractConnection):
    def pack_command(self, *args: EncodableT) -> list[bytes]:
        packed: list[bytes] = _PACKER.pack(*args)  # type: ignore[arg-type]  # typed wrongly
        return packed


class _TcpConnection(_HiredisPacking, Connection):
    pass


class _TlsConnection(_HiredisPacking, SSLConnection):
    pass


class _UnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _TcpConnection,
    SSLConnection: _TlsConnection,
    UnixDomainSocketConnection: _UnixConnection,
}


def call_deadline_s(timeout_s: float) -> float:
    """The most one call to Redis (a script, a pipeline) may take before its caller counts it
    as failed, whatever the client's own retries: three times the client's socket timeout."""
    return 3 * timeout_s


def connect_redis(url: str, *, timeout_s: float) -> Redis:
    """A client for `url` whose every call has `timeout_s` and no retry, so a Redis that
    stops answering costs each caller at most that (its policy then applies). No retry,
    because the budget and breaker scripts are not idempotent: a retry after a late reply
    would count a reservation twice. (redis-py's default retries ten times with backoff:
    seconds per call.)"""
    client = Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    pool = client.connection_pool
    if HIREDIS_AVAILABLE:
        pool.connection_class = _PACKING.get(pool.connection_class, pool.connection_class)
    return client
