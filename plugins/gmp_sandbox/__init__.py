"""Bundled plugin: the sandbox, a transport that delivers nowhere and keeps what it is sent.

An account with ``"transport": "sandbox"`` (no host needed) goes through the real dispatcher,
retries, events and reports, but its mail is captured in the store instead of leaving:
recipients' local parts choose simulated outcomes (``outcomes.py``), and ``GET
/sandbox/messages`` shows what was captured (``routes.py``). ``[sandbox] account`` names an
account created at start-up, so the shipped ``plugins.toml`` can be tried with no SMTP server.
See docs/sandbox.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gmp_core import (
    CaptureStore,
    ConfigError,
    InvalidInput,
    Service,
    Settings,
    Transport,
    hookimpl,
    require_capability,
    setting,
)
from gmp_sandbox.capturing import CaptureWriter
from gmp_sandbox.routes import register_routes
from gmp_sandbox.transport import SandboxTransport

__all__ = ["SandboxSettings", "SandboxTransport", "purge_expired"]

log = logging.getLogger("gmp.sandbox")

TRANSPORT = "sandbox"
STATE_KEY = "sandbox"


class SandboxSettings(Settings):
    account: str = setting(
        "",
        description="an account of this id delivering through the sandbox is created at "
        "start-up when missing; empty: none",
    )
    max_messages: int = setting(
        10_000, ge=1, description="captured messages kept; beyond, the oldest go first"
    )
    slow_seconds: float = setting(
        2.0, ge=0, description="how long the sandbox takes to accept mail for slow@ recipients"
    )
    retention_seconds: float | None = setting(
        None,
        ge=0,
        description="how long captured messages are kept (seconds; default: [service] "
        "delivery_report_retention_seconds, whose <= 0 keeps them)",
    )


@dataclass
class SandboxState:
    """What the plugin runs for one service: its retention purge."""

    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    purge: asyncio.Task[None] | None = None


@hookimpl
def gmp_register_settings(register: Callable[[str, type[Settings]], None]) -> None:
    register("sandbox", SandboxSettings)


@hookimpl
def gmp_register_transports(register: Callable[[str, Transport], None], service: Service) -> None:
    settings: SandboxSettings = service.config.section("sandbox")
    store = require_capability(
        service.store, CaptureStore, plugin="sandbox", needs="keeps captured mail in the store"
    )
    writer = CaptureWriter(store, keep=settings.max_messages)
    register(TRANSPORT, SandboxTransport(writer, settings.slow_seconds))


@hookimpl
async def gmp_startup(service: Service) -> None:
    settings: SandboxSettings = service.config.section("sandbox")
    if settings.account:
        await ensure_account(service, settings.account)
    state = service.state[STATE_KEY] = SandboxState()
    state.purge = asyncio.create_task(_purge_loop(service, state), name="gmp-sandbox-retention")


@hookimpl
async def gmp_shutdown(service: Service) -> None:
    state: SandboxState | None = service.state.pop(STATE_KEY, None)
    if state is not None and state.purge is not None:
        state.stopping.set()
        await asyncio.gather(state.purge, return_exceptions=True)


@hookimpl
def gmp_register_routes(register: Callable[..., None], service: Service) -> None:
    register_routes(register, service)


async def ensure_account(service: Service, account_id: str) -> None:
    """Create the configured sandbox account when it is missing. One that exists is left as
    it is (its limits may have been set over the API); one of another transport stops
    start-up rather than being turned into a sandbox."""
    existing = (await service.accounts.get_many([account_id])).get(account_id)
    if existing is not None:
        if existing.transport != TRANSPORT:
            raise ConfigError(
                f"[sandbox] account: account {account_id!r} exists and delivers through "
                f'{existing.transport!r}; name another account, or none (account = "")'
            )
        return
    try:
        await service.put_account({"id": account_id, "transport": TRANSPORT})
    except InvalidInput as exc:
        raise ConfigError(f"[sandbox] account: {exc}") from None
    log.info("created account %r delivering to the sandbox", account_id)


async def purge_expired(service: Service, now: float) -> int:
    """Delete captures older than the retention; returns how many went. Following the core's
    retention (no ``retention_seconds`` of ours), a core retention <= 0 keeps every capture,
    as it keeps every reported message (``max_messages`` still bounds them)."""
    settings: SandboxSettings = service.config.section("sandbox")
    retention = settings.retention_seconds
    if retention is None:
        retention = service.config.service.delivery_report_retention_seconds
        if retention <= 0:  # the core's automatic purge is off: so is ours
            return 0
    store = service.store
    assert isinstance(store, CaptureStore)
    return await store.purge_captures(now - retention)


async def _purge_loop(service: Service, state: SandboxState) -> None:
    """Retention, as often as the core's own purge (``[reporting] purge_interval``)."""
    interval = service.config.reporting.purge_interval
    while not state.stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.stopping.wait(), interval)
        if state.stopping.is_set():
            return
        try:
            removed = await purge_expired(service, time.time())
        except Exception:
            log.exception("sandbox retention purge failed; trying again later")
            continue
        if removed:
            log.info("sandbox retention purged %d captured messages", removed)
