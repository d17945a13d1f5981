"""Rate-limit windows: the store capability that counts each account's sends.

The bundled rate-limit policy (``plugins/gmp_ratelimit/``, where a reader of rate limits
starts) needs it, and checks at start-up that the configured store implements it. The
protocol is here, in the core, and not with that plugin, because the store that implements
it is another plugin (``gmp_sql``, in ``gmp_sql/rate_windows.py``) and plugins never import
each other: a third-party store implements it knowing only ``gmp_core``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class RateWindowStore(Protocol):
    """A store that keeps sliding windows of sends per account, shared by every process that
    uses the store, so that limits hold across restarts and processes."""

    async def reserve_sends(
        self, account_id: str, limits: Sequence[tuple[int, int]], wanted: int, now: float
    ) -> tuple[int, list[float]]:
        """Atomically reserve up to ``wanted`` sends within every ``(window_seconds, limit)``
        sliding window. Return how many were granted and, for each one refused, when a slot
        frees up."""
        ...
