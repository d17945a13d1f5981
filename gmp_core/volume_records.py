"""Volumes defined over the API: the store capability that keeps them.

The volumes plugin (``plugins/gmp_volumes/``) needs it to mount again, at every start and in
every process sharing the store, the volumes that ``POST /volume`` defined; it checks at
start-up that the configured store implements it. The protocol is in the core because the
store that implements it is another plugin (``gmp_sql``, in ``gmp_sql/volumes.py``), and
plugins never import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(slots=True)
class VolumeRecord:
    """An attachment volume defined over the API, kept so it is mounted again at start-up.
    ``config`` is the backend's settings, credentials included: the API never shows it."""

    name: str
    account_id: str | None  # None: every account may use it
    backend: str
    config: dict[str, Any]
    created_at: float
    updated_at: float


@runtime_checkable
class VolumeStore(Protocol):
    """A store that keeps volume definitions, each method one transaction. A store that
    encrypts secrets at rest seals the credentials of ``config`` as it writes them."""

    async def put_volume(self, volume: VolumeRecord) -> None:
        """Create or replace the volume with this ``(name, account_id)``."""
        ...

    async def list_volumes(self) -> list[VolumeRecord]: ...

    async def delete_volume(self, name: str, account_id: str | None) -> bool:
        """Delete the volume with exactly this ``(name, account_id)``; False when absent."""
        ...
