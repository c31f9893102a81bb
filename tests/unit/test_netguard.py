"""The SSRF guard's decisions, on address values and URL strings; no connection is opened.

The end-to-end checks against a loopback receiver are in test_webhooks_delivery.py.
"""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from pixstream.errors import DestinationRefused
from pixstream.netguard import (
    GuardedResolver,
    check_url,
    is_forbidden_address,
    refusal,
)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.100.100.200", "carrier-grade NAT"),  # Alibaba Cloud metadata
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fd00::1", "private"),
        ("fc00::1", "private"),
        ("fd00:ec2::254", "cloud metadata"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "IPv4-mapped address of 127.0.0.1: loopback"),
        ("::ffff:169.254.169.254", "IPv4-mapped address of 169.254.169.254: cloud metadata"),
        ("64:ff9b::a9fe:a9fe", "NAT64 address of 169.254.169.254: cloud metadata"),
        ("64:ff9b::10.0.0.1", "NAT64 address of 10.0.0.1: private"),
        ("64:ff9b:1::8.8.8.8", "local-use NAT64"),
        ("2002:7f00:1::1", "6to4 address of 127.0.0.1: loopback"),
        ("2002:c0a8:101::1", "6to4 address of 192.168.1.1: private"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("2001:db8::1", "documentation"),
        ("100::1", "discard-only"),
        ("4000::1", "reserved"),  # unallocated space
    ],
)
def test_forbidden_addresses(address: str, reason: str) -> None:
    found = is_forbidden_address(ipaddress.ip_address(address))
    assert found is not None
    assert reason in found


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700::1111",
        "2001:4860:4860::8888",
        "::ffff:8.8.8.8",  # the connection goes to 8.8.8.8
        "64:ff9b::808:808",  # NAT64 translation of 8.8.8.8
        "2002:808:808::1",  # 6to4 relay for 8.8.8.8
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "fd00::1", "::ffff:192.168.1.1"])
def test_allow_private_lets_private_addresses_through(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert refusal(ip, allow_private=False) is not None
    assert refusal(ip, allow_private=True) is None


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe"],
)
def test_metadata_is_refused_even_when_private_is_allowed(address: str) -> None:
    reason = refusal(ipaddress.ip_address(address), allow_private=True)
    assert reason is not None
    assert "cloud metadata" in reason


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hooks",
        "http://hooks.example.com:8080/a?b=c",
        "https://8.8.8.8/",
        "https://[2606:4700::1111]/",
        "https://user:pass@example.com/",
        "https://1password.com/",  # numeric first label, not an address
    ],
)
def test_check_url_allows(url: str) -> None:
    check_url(url, allow_private=False)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("gopher://example.com/", "scheme 'gopher' is not allowed"),
        ("example.com/hooks", "scheme '' is not allowed"),
        ("http:///hooks", "no host"),
        ("http://127.0.0.1:8080/", "127.0.0.1 is refused: loopback"),
        ("http://[::1]/", "::1 is refused: loopback"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped address of 127.0.0.1: loopback"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://10.1.2.3/", "private"),
        ("http://127.1/", "non-canonical IPv4"),
        ("http://0x7f000001/", "non-canonical IPv4"),
        ("http://2130706433/", "non-canonical IPv4"),
        ("http://[fe80::1%25eth0]/", "link-local"),
    ],
)
def test_check_url_refuses(url: str, message: str) -> None:
    with pytest.raises(DestinationRefused, match=re.escape(message)):
        check_url(url, allow_private=False)


def test_check_url_allow_private() -> None:
    check_url("http://127.0.0.1:8080/", allow_private=True)
    check_url("http://[::1]:8080/", allow_private=True)
    with pytest.raises(DestinationRefused, match="cloud metadata"):
        check_url("http://169.254.169.254/", allow_private=True)
    with pytest.raises(DestinationRefused, match="scheme"):
        check_url("ftp://127.0.0.1/", allow_private=True)


class FixedResolver(AbstractResolver):
    """Answers every lookup with the given addresses; no DNS, no network."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        self.closed = True


async def test_resolver_passes_public_answers_through() -> None:
    resolver = GuardedResolver(FixedResolver("8.8.8.8", "2606:4700::1111"), allow_private=False)
    results = await resolver.resolve("hooks.example.com", 443)
    assert [r["host"] for r in results] == ["8.8.8.8", "2606:4700::1111"]


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        (("10.0.0.5",), "10.0.0.5, which is refused: private"),
        (("8.8.8.8", "169.254.169.254"), "169.254.169.254, which is refused: cloud metadata"),
        (("::ffff:127.0.0.1",), "IPv4-mapped address of 127.0.0.1: loopback"),
        (("not-an-address",), "unparseable"),
    ],
)
async def test_resolver_refuses_a_name_with_any_forbidden_answer(
    answers: tuple[str, ...], message: str
) -> None:
    resolver = GuardedResolver(FixedResolver(*answers), allow_private=False)
    with pytest.raises(DestinationRefused, match=message):
        await resolver.resolve("rebind.example.com", 80)


async def test_resolver_allow_private_still_refuses_metadata() -> None:
    allowed = GuardedResolver(FixedResolver("127.0.0.1", "::1"), allow_private=True)
    assert len(await allowed.resolve("localhost", 80)) == 2
    metadata = GuardedResolver(FixedResolver("169.254.169.254"), allow_private=True)
    with pytest.raises(DestinationRefused, match="cloud metadata"):
        await metadata.resolve("metadata.google.internal", 80)


async def test_resolver_closes_the_inner_resolver() -> None:
    inner = FixedResolver()
    await GuardedResolver(inner, allow_private=False).close()
    assert inner.closed
