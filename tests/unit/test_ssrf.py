"""The SSRF guard. Fake resolvers stand in for DNS; encoded hosts go through the real
resolver, which parses them as literal addresses without any DNS traffic."""

from __future__ import annotations

import socket

import httpx
import pytest

from app.jobs.ssrf import (
    GuardedTransport,
    Resolver,
    UnsafeURL,
    check_callback_url,
    default_resolve,
)

PUBLIC = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
NO_HOSTS: frozenset[str] = frozenset()


class FakeResolver:
    """Answers every host with fixed addresses and records what it was asked."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self.addresses


async def refusal(url: str, resolve: Resolver, allowed: frozenset[str] = NO_HOSTS) -> str:
    with pytest.raises(UnsafeURL) as caught:
        await check_callback_url(url, allowed_hosts=allowed, resolve=resolve)
    return str(caught.value)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "link-local, cloud metadata"),
        ("169.254.10.10", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("fec0::1", "site-local"),
        ("192.0.2.1", "not globally routable"),
        ("2001:db8::1", "not globally routable"),
        ("::ffff:127.0.0.1", "embeds 127.0.0.1, loopback"),
        ("::ffff:10.0.0.1", "embeds 10.0.0.1, private"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("::127.0.0.1", "embeds 127.0.0.1, loopback"),  # IPv4-compatible
        ("2002:7f00:1::1", "embeds 127.0.0.1, loopback"),  # 6to4
        ("2002:a9fe:a9fe::1", "embeds 169.254.169.254"),
        ("64:ff9b::a00:1", "embeds 10.0.0.1, private"),  # NAT64
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "embeds 10.0.0.1, private"),  # Teredo
        ("2001:0:4136:e378:8000:63bf:a247:27dd", "not globally routable"),  # Teredo, public client
        ("not-an-ip", "not an IP address"),
    ],
)
async def test_refuses_non_public_address(address: str, reason: str) -> None:
    message = await refusal("https://hooks.example.com/x", FakeResolver(address))
    assert f"resolves to {address}" in message
    assert reason in message


@pytest.mark.parametrize(
    "address",
    [PUBLIC, PUBLIC_V6, "::ffff:93.184.216.34", "2002:5db8:d822::1", "64:ff9b::5db8:d822"],
)
async def test_accepts_public_address(address: str) -> None:
    resolve = FakeResolver(address)
    await check_callback_url("https://hooks.example.com/x", allowed_hosts=NO_HOSTS, resolve=resolve)
    assert resolve.calls == [("hooks.example.com", 443)]


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f000001", "017700000001", "127.1", "0177.1", "0x7f.1", "[::ffff:7f00:1]"],
)
async def test_encoded_loopback_forms_are_refused_by_the_real_resolver(host: str) -> None:
    message = await refusal(f"http://{host}/hook", resolve=default_resolve)
    assert "loopback" in message


async def test_zero_host_is_unspecified() -> None:
    assert "unspecified" in await refusal("http://0/hook", resolve=default_resolve)


async def test_octal_dotted_quad_is_refused_as_invalid() -> None:
    # httpx rejects leading zeros in a four-part address before any resolution.
    assert "invalid URL" in await refusal("http://0177.0.0.1/", FakeResolver(PUBLIC))


async def test_one_private_address_among_public_ones_refuses_the_host() -> None:
    message = await refusal("https://hooks.example.com/", FakeResolver(PUBLIC, "10.0.0.7"))
    assert "10.0.0.7 (private)" in message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://hooks.example.com/", "only http and https"),
        ("not a url", "only http and https"),
        ("http://user:secret@hooks.example.com/", "credentials"),
        ("http://user@hooks.example.com/", "credentials"),
        ("http:///path", "no host"),
        ("http://[::1/", "invalid URL"),
    ],
)
async def test_refuses_bad_url_shape_without_resolving(url: str, reason: str) -> None:
    resolve = FakeResolver(PUBLIC)
    assert reason in await refusal(url, resolve)
    assert resolve.calls == []


async def test_allowlisted_host_skips_the_address_check() -> None:
    resolve = FakeResolver("127.0.0.1")
    allowed = frozenset({"127.0.0.1", "Hooks.Internal"})
    await check_callback_url("http://127.0.0.1:8080/h", allowed_hosts=allowed, resolve=resolve)
    await check_callback_url("http://HOOKS.internal/h", allowed_hosts=allowed, resolve=resolve)
    assert "only http and https" in await refusal("ftp://127.0.0.1/", resolve, allowed)
    assert "credentials" in await refusal("http://u:p@127.0.0.1/", resolve, allowed)


async def test_resolution_failure_is_refused() -> None:
    async def fail(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    assert "cannot resolve nowhere.example" in await refusal("http://nowhere.example/", fail)
    assert "no addresses" in await refusal("http://nowhere.example/", FakeResolver())


async def test_explicit_port_is_resolved() -> None:
    resolve = FakeResolver(PUBLIC)
    await check_callback_url(
        "http://hooks.example.com:8080/", allowed_hosts=NO_HOSTS, resolve=resolve
    )
    assert resolve.calls == [("hooks.example.com", 8080)]


class Inner:
    """A MockTransport handler that records what the guarded transport dials."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.requests: list[httpx.Request] = []
        self.refuse = refuse

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host in self.refuse:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(204)


def guarded_client(
    inner: Inner, resolve: Resolver, allowed: frozenset[str] = NO_HOSTS
) -> httpx.AsyncClient:
    transport = GuardedTransport(httpx.MockTransport(inner), allowed_hosts=allowed, resolve=resolve)
    return httpx.AsyncClient(transport=transport)


async def test_transport_refuses_private_address_without_dialling() -> None:
    inner = Inner()
    async with guarded_client(inner, FakeResolver("10.0.0.1")) as client:
        with pytest.raises(UnsafeURL, match="10.0.0.1"):
            await client.post("https://hooks.example.com/x", content=b"{}")
    assert inner.requests == []


async def test_transport_refuses_credentials_without_resolving() -> None:
    inner, resolve = Inner(), FakeResolver(PUBLIC)
    async with guarded_client(inner, resolve) as client:
        with pytest.raises(UnsafeURL, match="credentials"):
            await client.get("https://u:p@hooks.example.com/")
    assert (inner.requests, resolve.calls) == ([], [])


async def test_transport_dials_the_checked_ip_over_http() -> None:
    inner = Inner()
    async with guarded_client(inner, FakeResolver(PUBLIC)) as client:
        response = await client.post("http://hooks.example.com:8080/x?a=1", content=b"{}")
    assert response.status_code == 204
    assert str(response.request.url) == "http://hooks.example.com:8080/x?a=1"
    [sent] = inner.requests
    assert str(sent.url) == f"http://{PUBLIC}:8080/x?a=1"
    assert sent.headers["host"] == "hooks.example.com:8080"
    assert "sni_hostname" not in sent.extensions
    assert sent.content == b"{}"


async def test_transport_sets_sni_to_the_original_host_over_https() -> None:
    inner = Inner()
    async with guarded_client(inner, FakeResolver(PUBLIC_V6)) as client:
        await client.post("https://hooks.example.com/x", content=b"{}")
    [sent] = inner.requests
    assert str(sent.url) == f"https://[{PUBLIC_V6}]/x"
    assert sent.headers["host"] == "hooks.example.com"
    assert sent.extensions["sni_hostname"] == "hooks.example.com"


async def test_transport_resolves_and_presents_the_ascii_host() -> None:
    inner, resolve = Inner(), FakeResolver(PUBLIC)
    async with guarded_client(inner, resolve) as client:
        await client.get("https://münchen.example/")
    assert resolve.calls == [("xn--mnchen-3ya.example", 443)]
    assert inner.requests[0].extensions["sni_hostname"] == "xn--mnchen-3ya.example"


async def test_transport_tries_the_next_checked_address_when_refused() -> None:
    second = "93.184.216.35"
    inner = Inner(refuse=frozenset({PUBLIC}))
    async with guarded_client(inner, FakeResolver(PUBLIC, second)) as client:
        response = await client.get("https://hooks.example.com/")
    assert response.status_code == 204
    assert [r.url.host for r in inner.requests] == [PUBLIC, second]


async def test_transport_raises_the_last_connect_error() -> None:
    inner = Inner(refuse=frozenset({PUBLIC}))
    async with guarded_client(inner, FakeResolver(PUBLIC)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("https://hooks.example.com/")


async def test_transport_pins_allowlisted_host_without_checking() -> None:
    inner = Inner()
    allowed = frozenset({"hooks.internal"})
    async with guarded_client(inner, FakeResolver("10.0.0.1"), allowed) as client:
        await client.get("https://hooks.internal/x")
    [sent] = inner.requests
    assert str(sent.url) == "https://10.0.0.1/x"
    assert sent.headers["host"] == "hooks.internal"
