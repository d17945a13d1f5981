"""Leases and flags: what the processes sharing a store agree on. A lease lets one process
at a time do a job (post a reporter's queue); a flag is a stored switch (``active``: sending
is suspended or not), which every process follows."""

from __future__ import annotations

from gmp_sql.base import SqlBase
from gmp_sql.runner import on_db_thread

# Takes a lease that is free or has run out, or renews one's own: a row comes back only then.
_LEASE_SQL = """
INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
WHERE leases.holder = excluded.holder OR leases.expires < ?
RETURNING holder
"""


class LeaseAndFlagMethods(SqlBase):
    """The leases and flags of :class:`gmp_core.Store`."""

    @on_db_thread
    def get_flag(self, name: str) -> str | None:
        row = self._sql("SELECT value FROM flags WHERE name = ?", (name,))
        return row[0][0] if row else None

    @on_db_thread
    def set_flag(self, name: str, value: str) -> None:
        flag = self.schema.Flag
        with self._write():
            flag.insert(name=name, value=value).on_conflict(
                conflict_target=[flag.name], update={flag.value: value}
            ).execute()

    @on_db_thread
    def hold_lease(self, name: str, holder: str, now: float, seconds: float) -> bool:
        with self._write():
            taken = self._sql(_LEASE_SQL, (name, holder, now + seconds, now))
        return bool(taken)

    @on_db_thread
    def release_lease(self, name: str, holder: str) -> None:
        with self._write():
            self._sql("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))
