"""What a volume defined over the API may reach.

API clients are trusted with mail, not with the server. A volume set over the API may read
only under the directories, and from the non-public networks, that the operator lists in
``plugins.toml`` (``api_local_roots``, ``api_allow_networks``; both empty by default).
Without this, anyone holding the API token could mount ``/etc`` or allow-list the cloud
metadata address and mail the answers to themselves.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from gmp_core import InvalidInput
from gmp_volumes.definitions import Network, VolumeDefinition
from gmp_volumes.web import is_public


async def check_api_definition(
    definition: VolumeDefinition, local_roots: Sequence[str], networks: Sequence[Network]
) -> None:
    """Raise :class:`InvalidInput`, naming the field, when the definition reaches further
    than the operator allows."""
    config = definition.backend_config()
    if definition.backend == "local":
        _check_local_root(config.base_path, local_roots)
    elif definition.backend in ("http", "webdav"):
        _check_networks(config.allow_networks, networks)
        if config.ca_bundle:
            raise InvalidInput("config.ca_bundle: may only be set in plugins.toml")
        if not config.verify_ssl:
            raise InvalidInput("config.verify_ssl: false may only be set in plugins.toml")
    elif definition.backend == "s3" and config.endpoint_url:
        await _check_endpoint(config.endpoint_url, networks)


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


async def _check_endpoint(url: str, granted: Sequence[Network]) -> None:
    """S3 endpoints are reached by s3fs, which has no address guard of its own: check the
    name's addresses when the volume is defined."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("config.endpoint_url: must be an http:// or https:// URL")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, parts.port or 443, type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError):  # UnicodeError: no host name at all ("x..y")
        raise InvalidInput(f"config.endpoint_url: cannot resolve {parts.hostname}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not is_public(address) and not any(address in net for net in granted):
            raise InvalidInput(
                f"config.endpoint_url: {parts.hostname} resolves to a non-public address "
                f"({address}) outside [volumes] api_allow_networks"
            )


def _within(network: Network, allowed: Network) -> bool:
    return network.version == allowed.version and network.subnet_of(allowed)  # type: ignore[arg-type]
