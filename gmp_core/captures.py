"""Captured mail: what a transport that delivers nowhere (the sandbox) keeps to be looked at.

The store capability that keeps it is :class:`CaptureStore`: a store plugin offers it by
implementing these methods on its store (the bundled ``gmp_sql`` does, on SQLite and
PostgreSQL); the sandbox plugin checks at start-up that the configured store does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(slots=True)
class Capture:
    """One captured message: its envelope, what a listing shows, and its bytes.

    ``id`` is given by the store (0 before it is stored). ``data`` is the exact RFC 5322
    bytes the transport was handed; listings leave it out (``None``)."""

    id: int
    account_id: str
    gmp_id: str  # the client's message id (its X-GMP-ID header)
    mail_from: str  # envelope sender
    rcpt_to: list[str]  # envelope recipients that were accepted
    subject: str
    date: str  # the Date header, as written
    size: int  # bytes
    captured_at: float  # unix seconds
    data: bytes | None = None


@runtime_checkable
class CaptureStore(Protocol):
    """A store that keeps captured mail, each method one transaction."""

    async def add_captures(self, captures: Sequence[Capture], keep: int) -> list[int]:
        """Store these captures (their ``id`` is ignored), then drop the oldest so that at
        most ``keep`` remain. Returns the new ids, in order."""
        ...

    async def list_captures(
        self,
        *,
        limit: int,
        cursor: int | None = None,
        account_id: str | None = None,
        gmp_id: str | None = None,
        accounts: Sequence[str] | None = None,
    ) -> tuple[list[Capture], int | None]:
        """A page of captures, newest first, without their bytes, and the cursor of the next
        page (None: this was the last). ``cursor`` continues after a previous page; the
        filters narrow to one account, one client message id, or some accounts."""
        ...

    async def get_capture(self, capture_id: int) -> Capture | None:
        """One capture with its bytes, or None."""
        ...

    async def delete_captures(
        self, *, account_id: str | None = None, accounts: Sequence[str] | None = None
    ) -> int:
        """Delete every capture (of one account, or of some accounts); returns how many."""
        ...

    async def purge_captures(self, captured_before: float) -> int:
        """Delete the captures taken before this time; returns how many."""
        ...
