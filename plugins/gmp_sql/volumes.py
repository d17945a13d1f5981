"""Volumes defined over the API, in the ``volumes`` table: the SQL side of
:class:`gmp_core.VolumeStore`, which the volumes plugin needs. A volume is keyed by name and
account (``owner``, empty for every account); the credentials of its ``config`` are sealed as
they are written and opened as they are read (``secrets.py``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from gmp_core import VolumeRecord
from gmp_sql.base import SqlBase, dicts, dumps
from gmp_sql.runner import on_db_thread
from gmp_sql.secrets import Place, secret_fields, volume_place


class VolumeMethods(SqlBase):
    """The :class:`gmp_core.VolumeStore` methods of the SQL store."""

    @on_db_thread
    def put_volume(self, volume: VolumeRecord) -> None:
        row = self.schema.Volume
        values = {
            "name": volume.name,
            "owner": volume.account_id or "",
            "backend": volume.backend,
            "config": dumps(self._seal_config(volume.config, volume.name, volume.account_id)),
            "created_at": volume.created_at,
            "updated_at": volume.updated_at,
        }
        update = {k: v for k, v in values.items() if k not in ("name", "owner", "created_at")}
        with self._write():
            row.insert(**values).on_conflict(
                conflict_target=[row.name, row.owner], update=update
            ).execute()

    @on_db_thread
    def list_volumes(self) -> list[VolumeRecord]:
        row = self.schema.Volume
        return [
            VolumeRecord(
                name=r["name"],
                account_id=r["owner"] or None,
                backend=r["backend"],
                config=self._open_config(json.loads(r["config"]), r["name"], r["owner"] or None),
                created_at=r["created_at"],
                updated_at=r["updated_at"],
            )
            for r in dicts(row.select().order_by(row.name, row.owner))
        ]

    @on_db_thread
    def delete_volume(self, name: str, account_id: str | None) -> bool:
        row = self.schema.Volume
        with self._write():
            deleted: int = (
                row.delete().where((row.name == name) & (row.owner == (account_id or ""))).execute()
            )
        return deleted > 0

    def _seal_config(
        self, config: Mapping[str, Any], name: str, owner: str | None
    ) -> dict[str, Any]:
        """The config as stored: credentials sealed, the rest readable as it is."""
        return _map_secrets(config, name, owner, self.keyring.seal)

    def _open_config(self, config: dict[str, Any], name: str, owner: str | None) -> dict[str, Any]:
        return _map_secrets(config, name, owner, self.keyring.open)


def _map_secrets(
    config: Mapping[str, Any], name: str, owner: str | None, change: Callable[[Any, Place], Any]
) -> dict[str, Any]:
    """``config`` with ``change(value, place)`` applied to its credential fields."""
    secret = secret_fields(config)
    return {
        field: change(value, volume_place(name, owner, field)) if field in secret else value
        for field, value in config.items()
    }
