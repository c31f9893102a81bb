"""The SSRF guard for outgoing requests to user-supplied URLs (webhooks).

A pure decision on addresses, a URL check for what is known before DNS, and an aiohttp
resolver that applies the decision to the very addresses a connection will use.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from pixstream.errors import DestinationRefused

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = frozenset({"http", "https"})

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Cloud instance-metadata endpoints hand out credentials; they stay refused even when
# private destinations are allowed (that switch exists for local development receivers).
_METADATA: tuple[IPAddress, ...] = (
    ipaddress.IPv4Address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
    ipaddress.IPv6Address("fd00:ec2::254"),  # AWS over IPv6
)

# Checked in order, so a specific reason wins over the broader range containing it.
_V4_RANGES: tuple[tuple[_V4, str], ...] = (
    (_V4("0.0.0.0/8"), "unspecified ('this network')"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("100.64.0.0/10"), "carrier-grade NAT (shared address space)"),
    (_V4("169.254.0.0/16"), "link-local"),
    (_V4("192.0.0.0/24"), "reserved (IETF protocol assignments)"),
    (_V4("192.0.2.0/24"), "reserved (documentation)"),
    (_V4("198.51.100.0/24"), "reserved (documentation)"),
    (_V4("203.0.113.0/24"), "reserved (documentation)"),
    (_V4("198.18.0.0/15"), "reserved (benchmarking)"),
    (_V4("192.88.99.0/24"), "reserved (6to4 relay anycast)"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("255.255.255.255/32"), "broadcast"),
    (_V4("240.0.0.0/4"), "reserved"),
)

# Prefixes that carry an IPv4 address: the packet ends up at that IPv4 address, so it is
# the one to judge.
_V4_MAPPED = _V6("::ffff:0:0/96")
_NAT64 = _V6("64:ff9b::/96")
_SIX_TO_FOUR = _V6("2002::/16")

_V6_RANGES: tuple[tuple[_V6, str], ...] = (
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("64:ff9b:1::/48"), "local-use NAT64"),
    (_V6("::/96"), "IPv4-compatible (deprecated)"),
    (_V6("100::/64"), "reserved (discard-only)"),
    (_V6("2001::/32"), "Teredo tunnel"),
    (_V6("2001:db8::/32"), "reserved (documentation)"),
    (_V6("2001::/23"), "reserved (IETF protocol assignments)"),
    (_V6("fc00::/7"), "private (unique local)"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local (deprecated)"),
    (_V6("ff00::/8"), "multicast"),
)

# A host whose last label is numeric is an IPv4 address to URL parsers and to getaddrinfo
# ("127.1", "0x7f000001", "017700000001"); only the dotted-quad spelling is judged as one.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if ip in _V4_MAPPED:
        return "IPv4-mapped", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    return None


def is_forbidden_address(ip: IPAddress) -> str | None:
    """Why a connection to `ip` is refused, or None when `ip` is a public unicast address."""
    if ip in _METADATA:
        return "cloud metadata endpoint"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is not None:
            kind, v4 = embedded
            reason = is_forbidden_address(v4)
            return None if reason is None else f"{kind} address of {v4}: {reason}"
        for network6, reason in _V6_RANGES:
            if ip in network6:
                return reason
    else:
        for network4, reason in _V4_RANGES:
            if ip in network4:
                return reason
    # The tables name the common cases; these catch whatever else the registries set aside
    # (e.g. unallocated IPv6 space), so the guard fails closed.
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


def _is_metadata(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is not None:
            return embedded[1] in _METADATA
    return ip in _METADATA


def refusal(ip: IPAddress, *, allow_private: bool) -> str | None:
    """`is_forbidden_address` under the `allow_private` switch (metadata is always refused)."""
    reason = is_forbidden_address(ip)
    if reason is not None and allow_private and not _is_metadata(ip):
        return None
    return reason


def _parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse `url` for what is known without DNS: scheme, host, and a literal IP host.

    Hostnames are judged at connect time by `GuardedResolver`. aiohttp never asks the
    resolver about a literal IP, so this check must run before every request as well.
    """
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise DestinationRefused(f"webhook URL is not a valid URL: {exc}") from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise DestinationRefused(
            f"webhook URL scheme {parsed.scheme!r} is not allowed (only http and https)"
        )
    host = parsed.host
    if not host:
        raise DestinationRefused("webhook URL has no host")

    ip = _parse_ip(host)
    if ip is None:
        if ":" in host or "%" in host:
            raise DestinationRefused(f"webhook URL host {host!r} is not a valid IP address")
        last_label = host.rstrip(".").rsplit(".", 1)[-1]
        if _NUMERIC_LABEL.match(last_label):
            raise DestinationRefused(
                f"webhook URL host {host!r} is a non-canonical IPv4 address; "
                "write it as a dotted quad"
            )
        return
    reason = refusal(ip, allow_private=allow_private)
    if reason is not None:
        raise DestinationRefused(f"webhook URL host {ip} is refused: {reason}")


class GuardedResolver(AbstractResolver):
    """Resolves with aiohttp's resolver, then refuses the lookup if any address is forbidden.

    The connection is made to exactly the addresses vetted here (aiohttp connects to what the
    resolver returned and caches only that), so a DNS answer that changes between a check
    and the connection, "DNS rebinding", cannot slip a private address through. One
    forbidden address refuses the whole name rather than filtering it: a name that points
    into a private network is not a legitimate webhook destination.
    """

    def __init__(self, inner: AbstractResolver | None = None, *, allow_private: bool) -> None:
        self._inner = inner if inner is not None else DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            ip = _parse_ip(result["host"])
            reason = (
                "unparseable address"
                if ip is None
                else refusal(ip, allow_private=self._allow_private)
            )
            if reason is not None:
                log.warning(
                    "refused webhook destination %s (%s): %s",
                    host,
                    result["host"],
                    reason,
                    extra={"host": host, "address": result["host"], "reason": reason},
                )
                raise DestinationRefused(
                    f"webhook URL host {host!r} resolves to {result['host']}, "
                    f"which is refused: {reason}"
                )
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_session(
    *, allow_private: bool, timeout_seconds: float, user_agent: str = "PixStream-Webhooks"
) -> aiohttp.ClientSession:
    """A client session whose every DNS answer passes the guard; call it in a running loop.

    Pass `settings.webhook_allow_private` and `settings.webhook_timeout_seconds`. The caller
    owns the session (`async with guarded_session(...) as session:`). Send requests through
    `guarded_request`: it also judges literal IP hosts and turns off redirects, which would
    otherwise reach a new host (a 3xx to http://169.254.169.254/) that only this check sees.
    The session ignores proxy environment variables (`trust_env=False`): a proxy would make
    the connection for us, past the resolver.
    """
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow_private=allow_private))
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_seconds),
        headers={"User-Agent": user_agent},
        trust_env=False,
    )


@asynccontextmanager
async def guarded_request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    allow_private: bool,
    **kwargs: Any,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """`session.request` after `check_url`, never following redirects.

    `allow_private` must match the session's (`guarded_session`), since hostnames are judged
    by the session's resolver and literal IPs here.
    """
    check_url(url, allow_private=allow_private)
    async with session.request(method, url, allow_redirects=False, **kwargs) as response:
        yield response
