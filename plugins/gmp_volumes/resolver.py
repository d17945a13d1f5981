"""The addresses of a host name, for the volumes' address guard.

By default the system's resolver answers (``getaddrinfo``: ``/etc/hosts``, then DNS). With
``[volumes] nameservers`` set, those DNS servers alone are asked, through dnspython (the
hosts file is not read): an operator may point volume look-ups at a resolver of their own
(one that filters, or logs), and the tests at a DNS server they control.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dns.asyncresolver

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DNS_PORT = 53
LOOKUP_TIMEOUT = 5.0  # seconds for one name, all its servers and both record types


class ResolveError(Exception):
    """The name has no address, or no server answered; the text says which."""


def parse_nameserver(value: str) -> tuple[str, int]:
    """``"10.0.0.2"``, ``"10.0.0.2:5353"``, ``"::1"`` or ``"[::1]:5353"`` -> (address, port)."""
    host, port = value, DNS_PORT
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif value.count(":") == 1:
        host, _, number = value.partition(":")
        port = int(number)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return str(ipaddress.ip_address(host)), port


class Resolver:
    def __init__(self, nameservers: Sequence[str] = ()) -> None:
        self.nameservers = [parse_nameserver(server) for server in nameservers]
        self._dns = _dns_resolver(self.nameservers) if self.nameservers else None

    async def addresses(self, host: str) -> list[Address]:
        """Every address ``host`` has now (an address literal is its own answer)."""
        literal = _literal(host)
        if literal is not None:
            return [literal]
        if self._dns is None:
            return await _system_addresses(host)
        return await self._ask_nameservers(host)

    async def _ask_nameservers(self, host: str) -> list[Address]:
        import dns.exception
        import dns.resolver

        assert self._dns is not None
        found: list[Address] = []
        failures: list[str] = []
        for kind in ("A", "AAAA"):
            try:
                answer = await self._dns.resolve(host, kind, lifetime=LOOKUP_TIMEOUT)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                failures.append(type(exc).__name__)
                continue
            found += [ipaddress.ip_address(record.to_text()) for record in answer]
        if not found:
            raise ResolveError(f"cannot resolve {host}" + (f" ({failures[0]})" if failures else ""))
        return found


async def _system_addresses(host: str) -> list[Address]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:  # UnicodeError: not a host name ("x..y")
        raise ResolveError(f"cannot resolve {host}: {getattr(exc, 'strerror', exc)}") from None
    # An IPv6 answer may carry a zone ("fe80::1%eth0"): ipaddress keeps it.
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _dns_resolver(nameservers: Sequence[tuple[str, int]]) -> dns.asyncresolver.Resolver:
    import dns.asyncresolver
    import dns.nameserver

    resolver = dns.asyncresolver.Resolver(configure=False)  # not /etc/resolv.conf
    resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers]
    return resolver
