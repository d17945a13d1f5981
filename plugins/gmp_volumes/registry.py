"""The live set of volumes: mounted sources by (name, account), the objects the core looks
volumes up by name through (``service.volumes``), and reads with their limits.

Volumes from ``plugins.toml`` are mounted at start-up and cannot be changed over the API;
volumes from ``POST /volume`` are kept in the store, mounted at once, and mounted again at
every start.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from gmp_core import (
    AttachmentError,
    ConfigError,
    InvalidInput,
    Service,
    VolumeRecord,
    VolumeStore,
)
from gmp_volumes.definitions import VolumeDefinition, describe
from gmp_volumes.guard import AddressGuard
from gmp_volumes.install import MissingLibrary
from gmp_volumes.policy import check_api_definition
from gmp_volumes.resolver import Resolver
from gmp_volumes.s3 import S3Source
from gmp_volumes.sources import Source, StorageSource
from gmp_volumes.web import WebSource

if TYPE_CHECKING:
    from genro_storage import StorageManager

    from gmp_volumes import VolumesSettings

log = logging.getLogger("gmp.volumes")

Key = tuple[str, str | None]  # (name, account_id); None: every account

_serials = itertools.count(1)


@dataclass(slots=True)
class Mounted:
    definition: VolumeDefinition
    source: Source
    from_file: bool  # defined in plugins.toml: not changeable over the API
    created_at: float | None = None
    updated_at: float | None = None
    # Names this mount in shared reads: a volume replaced under the same name never serves
    # bytes read through its predecessor.
    serial: int = field(default_factory=lambda: next(_serials))

    def public(self) -> dict[str, Any]:
        return {
            **self.definition.public(),
            "source": "config" if self.from_file else "api",
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class NamedVolume:
    """What the core sees under one volume name: the global volume of that name and the
    accounts' own ones, the account's own winning."""

    def __init__(self, registry: VolumeRegistry, name: str) -> None:
        self.registry = registry
        self.name = name

    def accepts(self, account_id: str) -> bool:
        return self.registry.resolve(self.name, account_id) is not None

    async def read(self, subpath: str, account_id: str) -> bytes:
        mounted = self.registry.resolve(self.name, account_id)
        if mounted is None:  # deleted, or never this account's
            raise AttachmentError(f"volume {self.name!r} is not available", temporary=False)
        return await self.registry.fetch(mounted, subpath)


class VolumeRegistry:
    def __init__(self, service: Service, settings: VolumesSettings, store: VolumeStore) -> None:
        self.service = service
        self.store = store  # the service's store, checked at start-up to keep volumes
        self.settings = settings
        self.reuse = RecentReads(settings.reuse_seconds, settings.reuse_max_bytes)
        self.resolver = Resolver(settings.nameservers)
        self._mounted: dict[Key, Mounted] = {}
        self._changing = asyncio.Lock()
        self._following: asyncio.Task[None] | None = None
        self._complained: set[tuple[str, str | None, float]] = set()

    @cached_property
    def storage(self) -> StorageManager:
        """genro-storage, imported when the first local or memory volume is mounted: it
        brings fsspec and more (5 MB resident) that base64 and http volumes never use."""
        from genro_storage import StorageManager

        return StorageManager()

    # ------------------------------------------------------------------ lookups

    def resolve(self, name: str, account_id: str) -> Mounted | None:
        return self._mounted.get((name, account_id)) or self._mounted.get((name, None))

    def list(self, account_id: str | None = None) -> list[dict[str, Any]]:
        """Every volume; with ``account_id``, that account's and the global ones."""
        return [
            mounted.public()
            for (_, owner), mounted in sorted(self._mounted.items(), key=_sort_key)
            if account_id is None or owner in (None, account_id)
        ]

    def get(self, name: str, account_id: str | None = None) -> dict[str, Any] | None:
        mounted = self._mounted.get((name, account_id)) if account_id else None
        mounted = mounted or self._mounted.get((name, None))
        return mounted.public() if mounted else None

    # ------------------------------------------------------------------ reading

    async def fetch(self, mounted: Mounted, subpath: str) -> bytes:
        """The bytes at ``subpath``, within the size cap and the fetch timeout. Messages of
        one dispatch batch asking for the same path share one read."""
        limit, timeout = self.settings.max_attachment_bytes, self.settings.fetch_timeout

        async def read() -> bytes:
            try:
                async with asyncio.timeout(timeout):
                    return await mounted.source.read(subpath, limit)
            except TimeoutError:
                raise AttachmentError(
                    f"source timed out after {timeout:g}s", temporary=True
                ) from None

        return await self.reuse.get((mounted.serial, subpath), read)

    async def write(self, name: str, subpath: str, data: bytes, account_id: str = "") -> None:
        """Put a file in a genro-storage volume (``memory`` ones: tests and embedding)."""
        mounted = self.resolve(name, account_id)
        if mounted is None or not isinstance(mounted.source, StorageSource):
            raise LookupError(f"no writable volume named {name!r}")
        await mounted.source.write(subpath, data)

    # ------------------------------------------------------------------ changes

    def mount_configured(self, register: Callable[[str, Any], None]) -> None:
        """Mount the volumes of ``plugins.toml`` and register their names (at start-up, from
        the registration hook)."""
        for definition in self.settings.mounts:
            key = (definition.name, definition.account_id)
            try:
                source = self._mount(definition, from_api=False)
            except Exception as exc:
                raise ConfigError(f"[volumes] volume {definition.name!r}: {_reason(exc)}") from None
            self._mounted[key] = Mounted(definition, source, from_file=True)
        for name in sorted({name for name, _ in self._mounted}):
            register(name, NamedVolume(self, name))

    async def sync_stored(self) -> None:
        """Mount the volumes kept in the store as they are there now: at start-up, then every
        ``refresh_seconds`` (:meth:`start_following`), which picks up what other processes
        sharing the store set or deleted over the API. One that cannot be mounted (an extra
        uninstalled since, a reach the operator narrowed) is logged once and skipped: its
        messages fail with a clear error."""
        retired: list[Source] = []
        async with self._changing:  # the store read too: a put here meanwhile is in it
            records = {(r.name, r.account_id): r for r in await self.store.list_volumes()}
            for key, mounted in list(self._mounted.items()):
                if not mounted.from_file and key not in records:  # deleted elsewhere
                    retired.append(self._uninstall(key).source)
            for key, record in records.items():
                current = self._mounted.get(key)
                if current is not None and current.updated_at == record.updated_at:
                    continue  # as mounted
                if (*key, record.updated_at) in self._complained:
                    continue  # could not be mounted: not tried again until it changes
                source = await self._mount_stored(record)
                if source is not None:
                    self._install(_definition(record), source, record)
                    if current is not None:
                        retired.append(current.source)
        for source in retired:
            await source.close()

    async def _mount_stored(self, record: VolumeRecord) -> Source | None:
        complaint = (record.name, record.account_id, record.updated_at)
        blocked = self._blocked(record.name, record.account_id)
        try:
            if blocked:
                raise InvalidInput(f"{blocked}; the one kept in the store is not mounted")
            definition = _definition(record)
            await self._check_reach(definition, look_up=False)  # the operator may have narrowed it
            return self._mount(definition, from_api=True)
        except Exception as exc:
            if complaint not in self._complained:  # once, not at every refresh
                self._complained.add(complaint)
                log.error("volume %r cannot be mounted: %s", record.name, _reason(exc))
            return None

    def start_following(self) -> None:
        if self.settings.refresh_seconds > 0:
            self._following = asyncio.create_task(self._follow(), name="gmp-volumes-follow")

    async def _follow(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.settings.refresh_seconds)
            try:
                await self.sync_stored()
            except Exception:
                if not failing:  # once per outage (the store may be down a while)
                    log.exception("reading the volumes from the store failed; retrying")
                failing = True
            else:
                if failing:
                    log.warning("reading the volumes from the store works again")
                failing = False

    async def _check_reach(self, definition: VolumeDefinition, *, look_up: bool) -> None:
        """Refuse what reaches further than the operator allows; ``look_up``: the host's
        addresses too (when set; at start-up a DNS outage must not unmount volumes, and
        every connection is checked anyway)."""
        settings = self.settings
        await check_api_definition(
            definition,
            settings.api_local_roots,
            settings.api_allow_networks,
            self.resolver if look_up else None,
        )

    def _blocked(self, name: str, account_id: str | None) -> str | None:
        """Why the API may not set this volume: plugins.toml defines it, or another plugin
        registered a volume of that name."""
        current = self._mounted.get((name, account_id))
        if current is not None and current.from_file:
            return f"volume {name!r} is defined in plugins.toml"
        taken = self.service.volumes.get(name)
        if taken is not None and not isinstance(taken, NamedVolume):
            return f"volume name {name!r} is taken by a plugin"
        return None

    async def put(self, payload: Any) -> dict[str, Any]:
        """Create or replace a volume from an API payload; usable by the next message."""
        definition = parse_definition(payload)
        key = (definition.name, definition.account_id)
        async with self._changing:
            blocked = self._blocked(definition.name, definition.account_id)
            if blocked:
                raise InvalidInput(blocked)
            await self._check_reach(definition, look_up=True)
            current = self._mounted.get(key)
            try:
                source = self._mount(definition, from_api=True)
            except Exception as exc:
                raise InvalidInput(f"volume {definition.name!r}: {_reason(exc)}") from None
            now = time.time()
            record = VolumeRecord(
                name=definition.name,
                account_id=definition.account_id,
                backend=definition.backend,
                config=dict(definition.config),
                created_at=(current.created_at or now) if current else now,
                updated_at=now,
            )
            try:
                await self.store.put_volume(record)
            except BaseException:
                await source.close()
                raise
            self._install(definition, source, record)
        if current is not None:
            await current.source.close()
        log.info("volume %r (%s) set over the API", definition.name, definition.backend)
        return self._mounted[key].public()

    async def delete(self, name: str, account_id: str | None) -> bool:
        """Remove a volume set over the API. Messages still naming it fail when sent, with
        an error naming the attachment."""
        key = (name, account_id)
        async with self._changing:
            current = self._mounted.get(key)
            if current is None:
                return False
            if current.from_file:
                raise InvalidInput(f"volume {name!r} is defined in plugins.toml")
            await self.store.delete_volume(name, account_id)
            self._uninstall(key)
        await current.source.close()
        log.info("volume %r deleted over the API", name)
        return True

    async def close(self) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following
        for mounted in self._mounted.values():
            try:
                await mounted.source.close()
            except Exception:
                log.exception("closing volume %r failed", mounted.definition.name)

    def _install(self, definition: VolumeDefinition, source: Source, record: VolumeRecord) -> None:
        self._mounted[(definition.name, definition.account_id)] = Mounted(
            definition, source, False, record.created_at, record.updated_at
        )
        self.service.volumes.setdefault(definition.name, NamedVolume(self, definition.name))

    def _uninstall(self, key: Key) -> Mounted:
        mounted = self._mounted.pop(key)
        if not any(name == key[0] for name, _ in self._mounted):
            self.service.volumes.pop(key[0], None)
        return mounted

    def _mount(self, definition: VolumeDefinition, *, from_api: bool) -> Source:
        """The source of a definition. Network backends of volumes set over the API connect
        only through the address guard; http and webdav ones always do."""
        config = definition.backend_config()
        backend = definition.backend
        if backend in ("http", "webdav"):
            url = config.base_url if backend == "http" else config.url
            return WebSource(url, config, AddressGuard(config.allow_networks, self.resolver))
        if backend == "s3":
            networks = self.settings.api_allow_networks
            return S3Source(config, AddressGuard(networks, self.resolver) if from_api else None)
        if backend == "local":
            mount: dict[str, Any] = {"protocol": "local", "base_path": config.base_path}
        elif backend == "memory":
            # fsspec has one memory filesystem per process: give each volume its own corner
            owner = definition.account_id or "-"
            mount = {"protocol": "memory", "base_path": f"/gmp/{owner}/{definition.name}"}
        try:
            return StorageSource(self.storage, mount)
        except ImportError as exc:  # genro-storage (or fsspec) uninstalled since
            raise MissingLibrary(backend, exc, "genro-storage") from None


class RecentReads:
    """Shares reads of one path: callers arriving while a read runs wait for it, and its
    bytes stay ``keep_seconds`` for the rest of the dispatch batch (at most ``max_bytes``
    in all, oldest dropped first). Failures are not kept: the next caller tries again."""

    def __init__(self, keep_seconds: float, max_bytes: int) -> None:
        self.keep_seconds = keep_seconds
        self.max_bytes = max_bytes
        self._kept: OrderedDict[Any, tuple[float, bytes]] = OrderedDict()
        self._kept_bytes = 0
        self._running: dict[Any, asyncio.Future[bytes]] = {}

    async def get(self, key: Any, read: Callable[[], Awaitable[bytes]]) -> bytes:
        self._drop_expired()
        kept = self._kept.get(key)
        if kept is not None:
            return kept[1]
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            data = await read()
        except BaseException as exc:
            shared = exc if isinstance(exc, Exception) else _interrupted()
            future.set_exception(shared)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._running[key]
        future.set_result(data)
        self._keep(key, data)
        return data

    def _keep(self, key: Any, data: bytes) -> None:
        if self.keep_seconds <= 0 or len(data) > self.max_bytes:
            return
        self._kept[key] = (time.monotonic() + self.keep_seconds, data)
        self._kept_bytes += len(data)
        while self._kept_bytes > self.max_bytes:
            _, (_, dropped) = self._kept.popitem(last=False)
            self._kept_bytes -= len(dropped)

    def _drop_expired(self) -> None:
        now = time.monotonic()
        while self._kept:
            key, (expires, data) = next(iter(self._kept.items()))
            if expires > now:
                return
            del self._kept[key]
            self._kept_bytes -= len(data)


def parse_definition(payload: Any) -> VolumeDefinition:
    """An API payload as a definition; errors name the field."""
    if not isinstance(payload, dict):
        raise InvalidInput("body: expected a JSON object")
    try:
        definition = VolumeDefinition.model_validate(payload)
        definition.backend_config()
    except ValueError as exc:  # pydantic's ValidationError is one
        raise InvalidInput(describe(exc)) from None
    return definition


def _definition(record: VolumeRecord) -> VolumeDefinition:
    return VolumeDefinition(
        name=record.name,
        backend=record.backend,  # type: ignore[arg-type]
        config=record.config,
        account_id=record.account_id,
    )


def _reason(exc: Exception) -> str:
    """Why mounting failed, without echoing configuration values (they may be secrets)."""
    if isinstance(exc, ValueError | RuntimeError):  # InvalidInput is a ValueError
        return describe(exc)
    return type(exc).__name__


def _interrupted() -> AttachmentError:
    return AttachmentError("reading was interrupted", temporary=True)


def _sort_key(item: tuple[Key, Mounted]) -> tuple[str, str]:
    (name, owner), _ = item
    return (name, owner or "")
