"""Bundled rate-limit policy: an account's ``limit_per_minute/hour/day`` as sliding windows.

The counters live in the store (``reserve_sends``), never in process memory, so the limits
hold across restarts and across every process that shares the store. Sends are reserved
before they happen: a temporary failure still used its slot, so a provider's limit is never
exceeded by retries.
"""

from __future__ import annotations

from collections.abc import Callable

from gmp_core import Account, RateDecision, RateLimitPolicy, Service, hookimpl


class WindowPolicy:
    def __init__(self, service: Service) -> None:
        self.service = service

    async def decide(self, account: Account, wanted: int, now: float) -> RateDecision:
        limits = account.rate_limits
        if not limits:
            return RateDecision(allowed=wanted)
        granted, retry_at = await self.service.store.reserve_sends(account.id, limits, wanted, now)
        return RateDecision(
            allowed=granted,
            retry_at=retry_at,
            reject=granted < wanted and account.limit_behavior == "reject",
        )


@hookimpl
def gmp_register_rate_limit_policies(
    register: Callable[[str, RateLimitPolicy], None], service: Service
) -> None:
    register("windows", WindowPolicy(service))
