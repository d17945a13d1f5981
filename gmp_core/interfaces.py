"""The objects plugins hand the core through registration hooks.

Each is a small protocol with ``async`` methods; a plugin may implement it with any class.
The store, larger, has its own module (``store.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from gmp_core.models import Account, OutgoingMessage, Principal, SendResult


@runtime_checkable
class Transport(Protocol):
    """Delivers messages for the accounts whose ``transport`` names it.

    A transport that pools connections may also offer ``pool_sizes() -> {account_id: (open,
    in_use)}``, which the metrics plugin reads on each scrape."""

    async def send(self, message: OutgoingMessage, account: Account) -> SendResult:
        """Try once. Return the result; raise only for a bug (the core then retries)."""
        ...

    async def forget_account(self, account_id: str) -> None:
        """The account changed or was deleted: close what is cached for it (connections;
        busy ones when their send ends). Not called when an update changes nothing."""
        ...

    async def close(self) -> None:
        """Shut down cleanly (SMTP: QUIT every pooled connection)."""
        ...


class AttachmentError(Exception):
    """An attachment cannot be read. ``temporary`` errors are retried with back-off."""

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


@runtime_checkable
class VolumeBackend(Protocol):
    """A named source of attachment bytes (``volume:subpath``)."""

    def accepts(self, account_id: str) -> bool:
        """May messages of this account use the volume? (Checked at intake and send time.)"""
        ...

    async def read(self, subpath: str, account_id: str) -> bytes:
        """Return the bytes, or raise :class:`AttachmentError`."""
        ...


@dataclass(slots=True)
class RateDecision:
    """How many of the wanted sends may happen now.

    ``retry_at`` gives, for each message beyond ``allowed``, when to try it again (the time
    its slot frees up). With ``reject`` those messages end as ``error`` instead.
    """

    allowed: int
    retry_at: list[float] = field(default_factory=list)
    reject: bool = False


@runtime_checkable
class RateLimitPolicy(Protocol):
    async def decide(self, account: Account, wanted: int, now: float) -> RateDecision:
        """Reserve up to ``wanted`` sends for ``account`` at ``now``."""
        ...


@dataclass(slots=True)
class DeliveryReport:
    """One reported event: a final outcome (``sent``, ``error``) or a deferral.

    ``as_item()`` gives the ``proxy_sync`` wire shape (SPEC §4), keeping the original field names.
    ``event_id`` orders reports; clients deduplicate by ``id`` (delivery is at least once).
    """

    event_id: int
    id: str
    account_id: str | None
    priority: int | None
    status: str  # sent | error | deferred
    ts: float
    error: str | None = None
    error_code: int | None = None
    deferred_ts: float | None = None
    refused: list[dict[str, Any]] = field(default_factory=list)

    def as_item(self) -> dict[str, Any]:
        """The wire shape; ``*_ts`` are unix seconds as integers, as in the API's answers."""
        ts = int(self.ts)
        item: dict[str, Any] = {
            "id": self.id,
            "account_id": self.account_id,
            "priority": self.priority,
            "status": self.status,
            "sent_ts": ts if self.status == "sent" else None,
            "error_ts": ts if self.status == "error" else None,
            "error": self.error,
            "error_code": self.error_code,
            "deferred_ts": None if self.deferred_ts is None else int(self.deferred_ts),
        }
        if self.refused:
            item["refused"] = self.refused
        return item


@dataclass(slots=True)
class ReportReply:
    """The client's answer to one batch of reports.

    Only ``acknowledged`` batches are marked reported; anything else is sent again later, with
    back-off. ``more_now`` asks for the next batch at once (proxy_sync ``queued``);
    ``not_before`` (unix seconds) asks not to be called before then (``next_sync_after``).
    """

    acknowledged: bool
    more_now: bool = False
    not_before: float | None = None


@runtime_checkable
class Reporter(Protocol):
    """Delivers reports to a client. Each reporter acknowledges independently of the others."""

    report_deferred: bool  # also receive deferrals, not only final outcomes

    async def report(self, reports: Sequence[DeliveryReport]) -> ReportReply:
        """Deliver one batch (empty: a heartbeat). Raising counts as not acknowledged."""
        ...

    async def close(self) -> None:
        """Shut down (close HTTP clients)."""
        ...


@dataclass(slots=True, frozen=True)
class RouteRequest:
    """A request to an endpoint a plugin added (``gmp_register_routes``), free of the web
    framework that serves it."""

    method: str  # "GET", "DELETE", ...
    path: str
    path_params: dict[str, str]  # the {name} parts of the registered path
    query: dict[str, str]  # the first value of each query parameter
    json: Any  # the parsed JSON body: {} when empty; None for GET and HEAD
    principal: Principal | None  # who is calling; None on public endpoints


# What a route's view returns: the body (bytes, text, or a dict or list sent as JSON), the
# status and the headers.
RouteAnswer = tuple[bytes | str | dict[str, Any] | list[Any], int, dict[str, str]]
