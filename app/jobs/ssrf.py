"""The SSRF guard for callback URLs: only public addresses, checked where they are dialled.

Two layers, both with the same rules and the same operator allowlist:

- `check_callback_url` refuses a URL up front (when a client submits a
  `webhook_url`), so a bad URL is a 422 and not a day of failed retries.
- `GuardedTransport` checks again on every request and then dials exactly the
  address it checked. Checking at submit time alone is not enough: DNS can
  answer a public address to the check and `127.0.0.1` to the connect (DNS
  rebinding), so the transport resolves once and connects to that IP.

An address is public when it is none of: unspecified, loopback, link-local
(including the 169.254.169.254 metadata service), private (RFC 1918, fc00::/7),
shared (CGNAT 100.64/10), multicast, site-local, reserved, or otherwise not
globally routable. IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4,
Teredo, compatible) are judged by the IPv4 address they carry too. Encoded
IPv4 hosts (`2130706433`, `0x7f000001`, `127.1`) need no special case:
`getaddrinfo` turns them into the address they stand for.

Hosts in `allowed_hosts` (compared lower-case with the URL's ASCII host) skip
the address check only; scheme and credential checks still apply.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet

import httpx

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""`(host, port) -> addresses`; raises `OSError` when the host does not resolve."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SCHEMES = {"http": 80, "https": 443}
_PRIVATE = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPATIBLE = ipaddress.ip_network("::/96")


class UnsafeURL(ValueError):
    """A callback URL that must not be called; the message says why."""


async def default_resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_problem(address: str) -> str | None:
    """Why `address` is not a public unicast address (e.g. "loopback"), or None if it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(ip)) is not None:
        problem = _category(embedded)
        if problem is not None:
            return f"embeds {embedded}, {problem}"
        if ip.ipv4_mapped is not None or ip in _NAT64:
            return None  # these reach exactly the (public) IPv4 they carry
    return _category(ip)


async def check_callback_url(
    url: str, *, allowed_hosts: AbstractSet[str], resolve: Resolver = default_resolve
) -> None:
    """Raise `UnsafeURL` unless `url` is http(s), has a host and no credentials, and every
    address the host resolves to is public (or the host is in `allowed_hosts`)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeURL(f"invalid URL: {exc}") from None
    host, port = _host_and_port(parsed)
    if host not in _lower(allowed_hosts):
        await _resolve_public(host, port, resolve)


async def _resolve(host: str, port: int, resolve: Resolver) -> list[str]:
    try:
        addresses = await resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise UnsafeURL(f"cannot resolve {host}: {exc}") from None
    if not addresses:
        raise UnsafeURL(f"cannot resolve {host}: no addresses")
    return addresses


async def _resolve_public(host: str, port: int, resolve: Resolver) -> list[str]:
    # One bad address refuses the host: a client may connect to any of them.
    addresses = await _resolve(host, port, resolve)
    for address in addresses:
        problem = address_problem(address)
        if problem is not None:
            raise UnsafeURL(
                f"{host} resolves to {address} ({problem}); only public addresses are allowed"
            )
    return addresses


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that dials only public addresses, and exactly the ones it checked.

    For each request it resolves the host, raises `UnsafeURL` (not an httpx
    error: callers catch it separately) if any address is not public, then
    sends the request to the checked IP: the URL host becomes the IP, the `Host`
    header keeps the original name, and for https `sni_hostname` carries the
    original name so the certificate is still verified against it. Addresses
    are tried in order while the connection is refused. Allowlisted hosts are
    pinned the same way, without the address check.

    Use it with `httpx.AsyncClient(transport=..., follow_redirects=False)`
    (httpx's default): a redirect is an answer to report, not a place to go.
    A client given a transport ignores proxy environment variables, so nothing
    bypasses the guard.

    The inner pool keys connections by IP, so two hostnames on the same IP may
    share a connection that was TLS-verified for the first name.
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport | None = None,
        *,
        allowed_hosts: AbstractSet[str] = frozenset(),
        resolve: Resolver = default_resolve,
    ) -> None:
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        self._allowed = _lower(allowed_hosts)
        self._resolve = resolve

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host, port = _host_and_port(request.url)
        if host in self._allowed:
            addresses = await _resolve(host, port, self._resolve)
        else:
            addresses = await _resolve_public(host, port, self._resolve)
        for address in addresses[:-1]:
            try:
                return await self._inner.handle_async_request(_pinned(request, host, address))
            except httpx.ConnectError:
                continue  # nothing was sent yet, so the next checked address is safe to try
        return await self._inner.handle_async_request(_pinned(request, host, addresses[-1]))

    async def aclose(self) -> None:
        await self._inner.aclose()


def _host_and_port(url: httpx.URL) -> tuple[str, int]:
    """The URL's ASCII (IDNA) host in lower case and its port, after the shape checks."""
    if url.scheme not in _SCHEMES:
        raise UnsafeURL(f"only http and https URLs are allowed, got {url.scheme or 'none'!r}")
    if url.userinfo:
        raise UnsafeURL("URLs with credentials (user:password@host) are not allowed")
    host = url.raw_host.decode("ascii").lower()
    if not host:
        raise UnsafeURL("URL has no host")
    return host, url.port or _SCHEMES[url.scheme]


def _pinned(request: httpx.Request, host: str, address: str) -> httpx.Request:
    extensions = dict(request.extensions)
    if request.url.scheme == "https":
        extensions["sni_hostname"] = host
    # httpx.Request keeps a Host header it is given, so the server still sees the name.
    return httpx.Request(
        request.method,
        request.url.copy_with(host=address),
        headers=request.headers,
        stream=request.stream,
        extensions=extensions,
    )


def _category(ip: IPAddress) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local, cloud metadata" if ip in _METADATA else "link-local"
    if any(ip in net for net in _PRIVATE):
        return "private"
    if ip in _SHARED:
        return "shared address space (CGNAT)"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or (ip in _COMPATIBLE and int(ip) > 1):  # :: and ::1 are not IPv4
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def _lower(hosts: AbstractSet[str]) -> frozenset[str]:
    return frozenset(host.lower() for host in hosts)
