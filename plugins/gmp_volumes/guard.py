"""What a volume may connect to: the address guard against server-side request forgery.

Every connection of a guarded volume goes through :class:`AddressGuard`: the host name is
resolved, every address it has must be permitted (one bad answer is enough to refuse: we
cannot tell which one a client library would use), and the connection goes to one of the
addresses checked, never to the name again, so a DNS answer that changes between the check
and the connection gets nowhere. Permitted are public addresses, and those of the networks
the volume (or, for volumes set over the API, the operator) allow-lists.

IPv6 addresses that carry an IPv4 address count as that address: IPv4-mapped
(``::ffff:127.0.0.1``), IPv4-compatible (``::7f00:1``), IPv4-translated, NAT64
(``64:ff9b::/96``) and 6to4 (``2002::/16``). The local-use NAT64 prefix and the old
site-local range are never public.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from gmp_core import AttachmentError
from gmp_volumes.definitions import Network
from gmp_volumes.resolver import Address, ResolveError, Resolver
from gmp_volumes.sources import unreachable

# IPv6 prefixes whose last 32 bits are an IPv4 address (6to4 and mapped: ipaddress knows).
_CARRY_IPV4_IN_LOW_BITS = (
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64, well-known prefix (RFC 6052)
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated, RFC 4291)
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (RFC 2765)
)
_NEVER_PUBLIC = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # NAT64 for local use (RFC 8215)
    ipaddress.IPv6Network("fec0::/10"),  # site-local (deprecated, RFC 3879)
)


class ForbiddenAddress(AttachmentError):
    """A connection to a non-permitted address was refused (never retried)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"forbidden: {why}", temporary=False)


def effective(address: Address) -> Address:
    """The address a connection to ``address`` really reaches: the IPv4 address an IPv6 one
    carries, else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = address.ipv4_mapped or address.sixtofour
        if carried is None and any(address in net for net in _CARRY_IPV4_IN_LOW_BITS):
            carried = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if carried is not None:
            return carried
    return address


def is_public(address: Address) -> bool:
    """True for addresses on the public internet. Private, loopback, link-local (where cloud
    metadata services live, 169.254.169.254), shared, multicast, reserved and unspecified
    addresses are not; nor are IPv6 addresses that carry such an IPv4 address."""
    if any(address in net for net in _NEVER_PUBLIC):
        return False
    reached = effective(address)
    return reached.is_global and not reached.is_multicast


class AddressGuard:
    def __init__(self, allow: Sequence[Network] = (), resolver: Resolver | None = None) -> None:
        self.allow = list(allow)
        self.resolver = resolver or Resolver()

    def permits(self, address: Address) -> bool:
        reached = effective(address)
        return is_public(address) or any(reached in network for network in self.allow)

    def check(self, address: Address, host: str | None = None) -> None:
        """Raise :class:`ForbiddenAddress` unless a connection to ``address`` is permitted."""
        if not self.permits(address):
            raise ForbiddenAddress(
                f"{host or address} resolves to a non-public address ({address})"
            )

    async def resolve(self, host: str) -> list[Address]:
        """The addresses to connect to, each checked; raises :class:`ForbiddenAddress`, or
        a temporary :class:`AttachmentError` when the name cannot be resolved now."""
        try:
            addresses = await self.resolver.addresses(host)
        except ResolveError as exc:
            raise unreachable(str(exc)) from None
        if not addresses:
            raise unreachable(f"cannot resolve {host}")
        for address in addresses:
            self.check(address, host)
        return list(dict.fromkeys(addresses))
