"""The Store protocol: everything the core keeps, behind one async interface.

A store plugin (``gmp_make_store``) implements it; the bundled ``gmp_sql`` does so on peewee for
SQLite and PostgreSQL. The contract, which the shared store tests check on every backend:

* every method is one transaction (one round trip where the database allows it);
* ``claim`` hands each due message to exactly one caller, under a lease: a message whose
  lease ran out is due again, so a crashed dispatcher's claims are taken by another;
* ``record`` writes outcomes and their events together, or nothing;
* work queries touch O(batch) rows, whatever the table size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from gmp_core.interfaces import DeliveryReport
from gmp_core.models import Account, Event, Message, Outcome


class StoreCannotWrite(Exception):
    """The store answers but cannot write: its disk, or its quota, is full. The text is
    ``store cannot write: <reason>``, safe to show a client (no path, no secret): the API
    answers 507 with it, and ``/ready`` 503 until a write succeeds again (``ping``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"store cannot write: {reason}")
        self.reason = reason


@dataclass(slots=True)
class Claim:
    """A message handed to a dispatcher until ``lease_until``."""

    message: Message
    attempts: int  # failed attempts before this claim
    lease_until: float
    seq: int  # arrival order (kept when a queued message is replaced)


@dataclass(slots=True)
class EnqueueResult:
    queued: list[str] = field(default_factory=list)
    # id -> reason: "in flight" (being sent now) or "already sent"
    refused: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class MessageRecord:
    """A message as ``GET /messages`` shows it: the original field names, no bytes."""

    id: str
    account_id: str
    priority: int
    status: str
    deferred_ts: float | None
    sent_ts: float | None
    error_ts: float | None
    error: str | None
    reported_ts: float | None
    created_at: float
    updated_at: float
    attempts: int = 0
    payload: dict[str, Any] | None = None  # only for a single message


@dataclass(slots=True)
class AccountDeletion:
    found: bool
    deleted: bool = False
    unsent: int = 0  # unsent messages (why a delete without force is refused)
    events: list[Event] = field(default_factory=list)  # "account deleted" errors, if forced


@dataclass(slots=True)
class DeleteResult:
    removed: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)


@dataclass(slots=True)
class QueueDepth:
    """Unsent messages, for monitoring: how many per (state, priority), and since when the
    longest-waiting due message has been due (None: nothing is due)."""

    counts: dict[tuple[str, int], int] = field(default_factory=dict)
    oldest_due: float | None = None


@dataclass(slots=True)
class VolumeRecord:
    """An attachment volume defined over the API, kept so it is mounted again at start-up.
    ``config`` is the backend's settings, credentials included: the API never shows it."""

    name: str
    account_id: str | None  # None: every account may use it
    backend: str
    config: dict[str, Any]
    created_at: float
    updated_at: float


@runtime_checkable
class Store(Protocol):
    # lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect and create or migrate the schema."""
        ...

    async def close(self) -> None: ...

    async def watch(
        self, wake: Callable[[], None], reports: Callable[[], None] | None = None
    ) -> None:
        """From now on call ``wake()`` whenever another process queues messages, and
        ``reports()`` whenever another records reports (a store that only one process uses
        may do nothing: the service wakes its own loops)."""
        ...

    async def ping(self) -> None:
        """Raise when the database cannot be reached (readiness); raise
        :class:`StoreCannotWrite` while the last write failed for lack of space and a write
        tried now fails too."""
        ...

    # intake ------------------------------------------------------------------------------
    async def enqueue(
        self,
        messages: Sequence[Message],
        events: Sequence[Event],
        now: float,
        idempotency_window: float,
        *,
        keep_other_accounts: bool = False,
    ) -> EnqueueResult:
        """Insert new ids; replace unsent ones in place (they keep their queue position);
        refuse ids being sent ("in flight") or sent within the window ("already sent"). With
        ``keep_other_accounts``, an unsent message of another account under the same id is
        left alone and the new one refused ("id in use by another account").
        ``events`` are written for the ids that were queued."""
        ...

    async def accounts_of(self, message_ids: Sequence[str]) -> dict[str, str]:
        """The account of each of these messages that exists (message id -> account id)."""
        ...

    # dispatch ----------------------------------------------------------------------------
    async def claim(
        self,
        worker: str,
        now: float,
        *,
        limit: int,
        lease_seconds: float,
        default_batch_size: int,
        max_priority: int = 3,
    ) -> list[Claim]:
        """Take up to ``limit`` due messages, priority first then arrival, at most an account's
        ``batch_size`` of each account. Due means: queued, scheduled with ``deferred_ts`` in the
        past, or sending with an expired lease."""
        ...

    async def renew_leases(self, worker: str, ids: Sequence[str], lease_until: float) -> None: ...

    async def record(self, worker: str, outcomes: Sequence[Outcome], now: float) -> list[str]:
        """Write outcomes and their events in one transaction; return the ids applied. An
        outcome is applied only while ``worker`` still holds the claim (a claim taken over
        after its lease ran out stays with its new owner)."""
        ...

    async def next_due(self, now: float) -> float | None:
        """When the earliest scheduled message or lease falls due (None: nothing pending)."""
        ...

    # rate limits -------------------------------------------------------------------------
    async def reserve_sends(
        self, account_id: str, limits: Sequence[tuple[int, int]], wanted: int, now: float
    ) -> tuple[int, list[float]]:
        """Atomically reserve up to ``wanted`` sends within every ``(window_seconds, limit)``
        sliding window. Return how many were granted and, for each one refused, when a slot
        frees up."""
        ...

    # accounts ----------------------------------------------------------------------------
    async def put_account(self, account: Account, now: float) -> None: ...

    async def get_accounts(self, ids: Sequence[str]) -> dict[str, Account]: ...

    async def list_accounts(self) -> list[Account]: ...

    async def delete_account(self, account_id: str, *, force: bool, now: float) -> AccountDeletion:
        """Delete the account. Without ``force``, refuse while it has unsent messages; with
        it, end those not being sent as ``error`` "account deleted" (events written too)."""
        ...

    # admin -------------------------------------------------------------------------------
    async def list_messages(
        self,
        *,
        status: str | None,
        account_id: str | None,
        limit: int,
        cursor: int | None,
        accounts: Sequence[str] | None = None,
    ) -> tuple[list[MessageRecord], int | None]:
        """A page of messages in arrival order, and the cursor of the next page; with
        ``accounts``, only messages of those."""
        ...

    async def get_message(self, message_id: str) -> tuple[MessageRecord, list[Event]] | None: ...

    async def delete_messages(self, ids: Sequence[str]) -> DeleteResult: ...

    async def cleanup(self, reported_before: float, now: float, idempotency_window: float) -> int:
        """Remove reported final messages reported before the given time; sent ids are kept
        as tombstones for the idempotency window. Returns how many rows went."""
        ...

    async def queue_counts(self) -> dict[str, int]:
        """Messages per state."""
        ...

    # delivery reports ----------------------------------------------------------------------
    async def set_reporters(self, reporters: Mapping[str, bool]) -> int:
        """The enabled reporters (name -> also wants deferrals). From now on each final event,
        and each deferral for those that want them, waits for each of them. Reports waiting
        for a reporter no longer enabled are dropped: returns how many. With no reporter at
        all, a final message counts as reported when it ends (so retention still applies)."""
        ...

    async def add_events(self, events: Sequence[Event]) -> None:
        """Write events that change no message (rejections at intake): history only."""
        ...

    async def pending_reports(self, reporter: str, limit: int) -> list[DeliveryReport]:
        """The oldest reports ``reporter`` has not acknowledged, oldest first."""
        ...

    async def acknowledge_reports(
        self, reporter: str, event_ids: Sequence[int], now: float
    ) -> None:
        """``reporter`` acknowledged these reports. A final message that no reporter still
        waits for gets ``reported_ts = now`` (retention counts from then)."""
        ...

    async def queue_depth(self, now: float) -> QueueDepth:
        """Unsent messages (queued, scheduled, sending) per state and priority, and when the
        oldest due one became due (its ``deferred_ts``, else its arrival). Called on each
        metrics scrape, so it must read the indexes of unsent states, never the whole table."""
        ...

    async def get_flag(self, name: str) -> str | None: ...

    async def hold_lease(self, name: str, holder: str, now: float, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``holder`` until ``now + seconds``; True when
        ``holder`` has it: it was free, had run out, or was ``holder``'s already. Processes
        sharing a store use it for jobs that one of them at a time should do."""
        ...

    async def release_lease(self, name: str, holder: str) -> None:
        """Give up the lease ``name`` if ``holder`` has it, for another to take at once."""
        ...

    async def set_flag(self, name: str, value: str) -> None: ...

    # volumes -----------------------------------------------------------------------------
    async def put_volume(self, volume: VolumeRecord) -> None:
        """Create or replace the volume with this ``(name, account_id)``."""
        ...

    async def list_volumes(self) -> list[VolumeRecord]: ...

    async def delete_volume(self, name: str, account_id: str | None) -> bool:
        """Delete the volume with exactly this ``(name, account_id)``; False when absent."""
        ...
