"""What a volume defined over the API may reach.

API clients are trusted with mail, not with the server. A volume set over the API may read
only under the directories, and from the non-public networks, that the operator lists in
``plugins.toml`` (``api_local_roots``, ``api_allow_networks``; both empty by default).
Without this, anyone holding the API token could mount ``/etc`` or allow-list the cloud
metadata address and mail the answers to themselves.

These checks run when a volume is set (its host's addresses too, so that a mistake is
refused at once) and, without looking names up, when a stored one is mounted again. What
keeps DNS from being turned against us is elsewhere: every connection such a volume makes
is checked at connect time, against the addresses the name has then (``guard.py``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from gmp_core import InvalidInput
from gmp_volumes.definitions import Network, VolumeDefinition
from gmp_volumes.guard import AddressGuard
from gmp_volumes.resolver import Address, ResolveError, Resolver


async def check_api_definition(
    definition: VolumeDefinition,
    local_roots: Sequence[str],
    networks: Sequence[Network],
    resolver: Resolver | None = None,
) -> None:
    """Raise :class:`InvalidInput`, naming the field, when the definition reaches further
    than the operator allows. With a ``resolver``, the host's addresses are checked too."""
    config = definition.backend_config()
    if definition.backend == "local":
        _check_local_root(config.base_path, local_roots)
    elif definition.backend in ("http", "webdav"):
        _check_networks(config.allow_networks, networks)
        if config.ca_bundle:
            raise InvalidInput("config.ca_bundle: may only be set in plugins.toml")
        if not config.verify_ssl:
            raise InvalidInput("config.verify_ssl: false may only be set in plugins.toml")
        field = "base_url" if definition.backend == "http" else "url"
        guard = AddressGuard(config.allow_networks, resolver)
        await _check_host(
            f"config.{field}", getattr(config, field), guard, resolver, "config.allow_networks"
        )
    elif definition.backend == "s3" and config.endpoint_url:
        guard = AddressGuard(networks, resolver)
        await _check_host(
            "config.endpoint_url",
            config.endpoint_url,
            guard,
            resolver,
            "[volumes] api_allow_networks",
        )


def _check_local_root(base_path: str, roots: Sequence[str]) -> None:
    path = Path(base_path)
    if not path.is_absolute():
        raise InvalidInput("config.base_path: must be an absolute path")
    resolved = path.resolve()
    if not any(resolved.is_relative_to(Path(root).resolve()) for root in roots):
        raise InvalidInput("config.base_path: not under a directory of [volumes] api_local_roots")


def _check_networks(wanted: Sequence[Network], granted: Sequence[Network]) -> None:
    for network in wanted:
        if not any(_within(network, allowed) for allowed in granted):
            raise InvalidInput(
                f"config.allow_networks: {network} is not within [volumes] api_allow_networks"
            )


async def _check_host(
    field: str, url: str, guard: AddressGuard, resolver: Resolver | None, allow_list: str
) -> None:
    """Every address the URL's host has must be permitted. Without a resolver (a stored
    volume mounted again) only an address literal is checked: no DNS at start-up."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{field}: must be an http:// or https:// URL")
    host = parts.hostname
    try:
        literal = _literal(host)
        addresses = await resolver.addresses(host) if resolver else [literal] if literal else []
    except ResolveError:
        raise InvalidInput(f"{field}: cannot resolve {host}") from None
    for address in addresses:
        if not guard.permits(address):
            raise InvalidInput(
                f"{field}: {host} resolves to a non-public address ({address}) outside {allow_list}"
            )


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _within(network: Network, allowed: Network) -> bool:
    return network.version == allowed.version and network.subnet_of(allowed)  # type: ignore[arg-type]
