"""Bundled plugin: attachments from storage volumes.

An attachment's ``storage_path`` is ``volume:subpath``. ``base64:<data>`` is built in; other
volumes are named mounts of a backend (``local``, ``memory`` through genro-storage; ``s3``
through s3fs; ``http`` and ``webdav`` through httpx), defined in ``plugins.toml`` or over the
REST API (``POST /volume``). Every connection of a network volume set over the API, and of
every http and webdav one, goes through the address guard (``guard.py``). See
docs/volumes.md.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, field_validator

from gmp_core import (
    Service,
    Settings,
    VolumeBackend,
    VolumeStore,
    hookimpl,
    require_capability,
    setting,
)
from gmp_volumes.definitions import Network, VolumeDefinition, expand_environment
from gmp_volumes.registry import VolumeRegistry
from gmp_volumes.resolver import parse_nameserver
from gmp_volumes.sources import Base64Volume

__all__ = ["VolumeDefinition", "VolumeRegistry", "VolumesSettings", "registry_of"]

MiB = 1024 * 1024
STATE_KEY = "volumes"


class VolumesSettings(Settings):
    max_attachment_bytes: int = setting(
        25 * MiB, description="largest attachment read from any volume", ge=1
    )
    fetch_timeout: float = setting(
        30.0, description="seconds one attachment may take to read (then retried later)", gt=0
    )
    reuse_seconds: float = setting(
        5.0,
        description="how long a read is reused by other messages naming the same path",
        ge=0,
    )
    reuse_max_bytes: int = setting(64 * MiB, description="memory for reads kept for reuse", ge=0)
    api_local_roots: list[str] = setting(
        [], description="directories under which volumes set over the API may read files"
    )
    api_allow_networks: list[Network] = setting(
        [],
        description="non-public networks volumes set over the API may reach (allow-list "
        "in their allow_networks, or as an S3 endpoint)",
    )
    nameservers: list[str] = setting(
        [],
        description="DNS servers (address, or address:port) that the volumes' address guard "
        "asks instead of the system's resolver; empty: the system's",
    )
    refresh_seconds: float = setting(
        2.0,
        description="how often volumes that other processes sharing the database set or "
        "deleted over the API are picked up; 0: never",
        ge=0,
    )
    mounts: list[VolumeDefinition] = setting(
        [],
        description="volumes defined here: [[volumes.mounts]] tables with name, backend, "
        "config and account_id; ${ENV_VAR} in config values reads the environment",
    )

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, servers: list[str]) -> list[str]:
        for server in servers:
            parse_nameserver(server)  # a ValueError names what is wrong
        return servers

    @field_validator("mounts")
    @classmethod
    def _resolve(cls, mounts: list[VolumeDefinition]) -> list[VolumeDefinition]:
        """Fill in ``${ENV_VAR}`` references and check each backend's config."""
        resolved, seen = [], set()
        for index, definition in enumerate(mounts):
            where = f"mounts[{index}]"
            config = expand_environment(definition.config, where)
            definition = definition.model_copy(update={"config": config})
            try:
                definition.backend_config()
            except ValueError as exc:
                raise ValueError(f"{where}.{exc}") from None
            key = (definition.name, definition.account_id)
            if key in seen:
                raise ValueError(f"{where}: volume {definition.name!r} is defined twice")
            seen.add(key)
            resolved.append(definition)
        return resolved


def registry_of(service: Service) -> VolumeRegistry | None:
    """The volume registry of a running service (None when this plugin is disabled)."""
    registry: VolumeRegistry | None = service.state.get(STATE_KEY)
    return registry


@hookimpl
def gmp_register_settings(register: Callable[[str, type[BaseModel]], None]) -> None:
    register("volumes", VolumesSettings)


@hookimpl
def gmp_register_volume_backends(
    register: Callable[[str, VolumeBackend], None], service: Service
) -> None:
    settings: VolumesSettings = service.config.section("volumes")
    register("base64", Base64Volume(settings.max_attachment_bytes))
    store = require_capability(
        service.store,
        VolumeStore,
        plugin="volumes",
        needs="keeps the volumes defined over the API in the store",
    )
    registry = VolumeRegistry(service, settings, store)
    service.state[STATE_KEY] = registry  # first: if mounting fails, shutdown closes the rest
    registry.mount_configured(register)


@hookimpl
async def gmp_startup(service: Service) -> None:
    registry = registry_of(service)
    if registry is not None:
        await registry.sync_stored()
        registry.start_following()


@hookimpl
async def gmp_shutdown(service: Service) -> None:
    registry = registry_of(service)
    if registry is not None:
        await registry.close()
