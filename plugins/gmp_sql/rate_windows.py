"""Rate-limit windows in the ``send_slots`` table: the SQL side of
:class:`gmp_core.RateWindowStore`, which the rate-limit plugin needs (rate limits are read
from ``plugins/gmp_ratelimit/``, which says where every part of them lives).

Each reserved send is a row ``(account_id, ts)``; a window's count is the rows of the account
newer than ``now - window``. PostgreSQL serialises the reservations of one account, across
processes, with a row lock on the account.
"""

from __future__ import annotations

from collections.abc import Sequence

from gmp_sql.base import SqlBase, chunks, value_rows
from gmp_sql.runner import on_db_thread

SLOT_PRUNE_INTERVAL = 600.0  # seconds between deletions of slots older than the longest window
LONGEST_WINDOW = 86400  # a day: limit_per_day


class RateWindowMethods(SqlBase):
    """The :class:`gmp_core.RateWindowStore` methods of the SQL store."""

    _last_slot_prune = 0.0

    @on_db_thread
    def reserve_sends(
        self, account_id: str, limits: Sequence[tuple[int, int]], wanted: int, now: float
    ) -> tuple[int, list[float]]:
        with self._write():
            if self.postgres:  # one reservation per account at a time, across processes
                self._sql("SELECT 1 FROM accounts WHERE id = ? FOR UPDATE", [account_id])
            self._prune_slots(now)
            counts = {}
            for window, _ in limits:
                rows = self._sql(
                    "SELECT COUNT(*) FROM send_slots WHERE account_id = ? AND ts > ?",
                    (account_id, now - window),
                )
                counts[window] = rows[0][0]
            granted = max(0, min(wanted, *(limit - counts[w] for w, limit in limits)))
            for chunk in chunks([now] * granted):
                self._sql(
                    f"INSERT INTO send_slots (account_id, ts) VALUES {value_rows(len(chunk), 2)}",
                    [v for ts in chunk for v in (account_id, ts)],
                )
            refused = wanted - granted
            retry_at = [now] * refused
            for window, limit in limits:
                if refused == 0 or counts[window] + granted < limit:
                    continue
                # The j-th refused message may go when the j-th oldest slot leaves the window.
                rows = self._sql(
                    "SELECT ts FROM send_slots WHERE account_id = ? AND ts > ? ORDER BY ts LIMIT ?",
                    (account_id, now - window, refused),
                )
                frees = [ts + window for (ts,) in rows]
                frees += [now + window] * (refused - len(frees))
                retry_at = [max(a, b) for a, b in zip(retry_at, frees, strict=True)]
        return granted, retry_at

    def _prune_slots(self, now: float) -> None:
        if now - self._last_slot_prune > SLOT_PRUNE_INTERVAL:
            self._last_slot_prune = now
            self._sql("DELETE FROM send_slots WHERE ts < ?", (now - LONGEST_WINDOW,))
