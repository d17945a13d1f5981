"""Bundled rate-limit policy: an account's ``limit_per_minute/hour/day`` as sliding windows.

Rate limits start here. Where each of their parts lives:

* **the policy**, this file: for each claimed batch of an account, reserve as many sends as
  every window allows, and say when each of the others may go (or that they are rejected,
  with ``limit_behavior = "reject"``);
* **what it needs of the store**, :class:`gmp_core.RateWindowStore`
  (``gmp_core/rate_windows.py``), checked at start-up: a store without it stops the start,
  saying so. It is defined in the core, not here, because the store implementing it is
  another plugin and plugins never import each other;
* **the SQL** that keeps the windows, ``plugins/gmp_sql/rate_windows.py`` (the ``send_slots``
  table: one row per reserved send);
* **where the core applies the decision**, the core's rate-limit step (gmp_core, see
  docs/delivery.md, "Rate limits"): it asks every registered policy, the strictest answer
  wins, and the messages held back are scheduled (a ``deferred`` event "rate limited") or end
  as ``error`` ``rate_limit_exceeded``.

The counters live in the store, never in process memory, so the limits hold across restarts
and across every process that shares the store. Sends are reserved before they happen: a
temporary failure still used its slot, so a provider's limit is never exceeded by retries.
"""

from __future__ import annotations

from collections.abc import Callable

from gmp_core import (
    Account,
    RateDecision,
    RateLimitPolicy,
    RateWindowStore,
    Service,
    hookimpl,
    require_capability,
)

__all__ = ["WindowPolicy"]


class WindowPolicy:
    """Each account's limits as sliding windows of sends, counted by the store."""

    def __init__(self, windows: RateWindowStore) -> None:
        self.windows = windows

    async def decide(self, account: Account, wanted: int, now: float) -> RateDecision:
        limits = account.rate_limits
        if not limits:
            return RateDecision(allowed=wanted)
        granted, retry_at = await self.windows.reserve_sends(account.id, limits, wanted, now)
        return RateDecision(
            allowed=granted,
            retry_at=retry_at,
            reject=granted < wanted and account.limit_behavior == "reject",
        )


@hookimpl
def gmp_register_rate_limit_policies(
    register: Callable[[str, RateLimitPolicy], None], service: Service
) -> None:
    windows = require_capability(
        service.store,
        RateWindowStore,
        plugin="ratelimit",
        needs="counts each account's sends in the store (its rate-limit windows)",
    )
    register("windows", WindowPolicy(windows))
