"""The objects plugins hand the core through registration hooks.

Each is a small protocol with ``async`` methods; a plugin may implement it with any class.
The store, larger, has its own module (``store.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gmp_core.models import Account, Event, OutgoingMessage, SendResult


@runtime_checkable
class Transport(Protocol):
    """Delivers messages for the accounts whose ``transport`` names it."""

    async def send(self, message: OutgoingMessage, account: Account) -> SendResult:
        """Try once. Return the result; raise only for a bug (the core then retries)."""
        ...

    async def forget_account(self, account_id: str) -> None:
        """The account changed or was deleted: drop what is cached for it (connections)."""
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


@runtime_checkable
class Reporter(Protocol):
    async def report(self, events: Sequence[Event]) -> Sequence[str]:
        """Deliver events to the client; return the message ids acknowledged."""
        ...
