"""The Store protocol: the queue the core keeps, behind one async interface.

A store plugin (``gmp_make_store``) implements it; the bundled ``gmp_sql`` does so on peewee for
SQLite and PostgreSQL. The contract, which the shared store tests check on every backend:

* every method is one transaction (one round trip where the database allows it);
* ``claim`` hands each due message to exactly one caller, under a lease: a message whose
  lease ran out is due again, so a crashed dispatcher's claims are taken by another;
* ``record`` writes outcomes and their events together, or nothing;
* work queries touch O(batch) rows, whatever the table size.

``Store`` holds what the core itself needs, and only that: a method is here when the core
calls it, or when it reads nothing but the core's own data (messages, their events, accounts,
the report queue, leases and flags), so that every store can answer it. Data that belongs to a
plugin sits behind a *capability* of its own, an optional protocol that the plugin needing it
checks for at start-up (:func:`require_capability`): ``RateWindowStore`` (``rate_windows.py``,
for gmp_ratelimit), ``VolumeStore`` (``volume_records.py``, for gmp_volumes), ``CaptureStore``
(``captures.py``, for gmp_sandbox). docs/plugins.md, "Store capabilities", says how a plugin
declares one and how a store implements it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from gmp_core.config import ConfigError
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


@runtime_checkable
class Store(Protocol):
    """The core's queue. Each group below says why the core, and not a plugin, needs it."""

    # lifecycle: the service opens and closes the store, is woken by it when other processes
    # queue work, and asks it for readiness (/ready) ---------------------------------------
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

    # intake: Service.add_messages queues messages, and checks whose ids they are -----------
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

    # dispatch: the dispatcher claims due messages, keeps its leases and records outcomes ---
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

    # accounts: every claimed batch is sent for an account, and the API manages them --------
    async def put_account(self, account: Account, now: float) -> None: ...

    async def get_accounts(self, ids: Sequence[str]) -> dict[str, Account]: ...

    async def list_accounts(self) -> list[Account]: ...

    async def delete_account(self, account_id: str, *, force: bool, now: float) -> AccountDeletion:
        """Delete the account. Without ``force``, refuse while it has unsent messages; with
        it, end those not being sent as ``error`` "account deleted" (events written too)."""
        ...

    # admin: what the service's operations show and remove (GET/DELETE /messages, status,
    # retention), and the queue's depth for monitoring: reads of the core's own tables, which
    # any store keeping the queue can answer ------------------------------------------------
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

    async def queue_depth(self, now: float) -> QueueDepth:
        """Unsent messages (queued, scheduled, sending) per state and priority, and when the
        oldest due one became due (its ``deferred_ts``, else its arrival). Called on each
        metrics scrape, so it must read the indexes of unsent states, never the whole table."""
        ...

    # delivery reports: each reporter loop posts its queue and acknowledges it; events that
    # change no message join the same history -----------------------------------------------
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

    # leases and flags: the suspend switch (flag "active"), which every process sharing the
    # store follows, and the lease that lets one process at a time post a reporter's queue --
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


C = TypeVar("C")


def require_capability(
    store: object, capability: Callable[..., C], *, plugin: str, needs: str
) -> C:
    """``store``, if it implements ``capability`` (a ``runtime_checkable`` protocol); else a
    :class:`ConfigError` naming the plugin, the protocol and the two ways on. A plugin calls it
    from a registration hook, where the store is already open, so that start-up stops before
    any work is taken::

        windows = require_capability(
            service.store, RateWindowStore, plugin="ratelimit", needs="counts sends in the store"
        )

    ``needs`` says what the plugin keeps in the store, to complete "the <plugin> plugin ...".
    """
    # ``Callable[..., C]`` and not ``type[C]``: mypy accepts no protocol class for ``type[C]``.
    if not isinstance(capability, type):
        raise TypeError(f"require_capability: {capability!r} is not a protocol class")
    if isinstance(store, capability):
        return store  # type: ignore[return-value]  # narrowed by isinstance, which mypy misses
    package = capability.__module__.split(".")[0]
    raise ConfigError(
        f"the {plugin} plugin {needs}, and the configured store ({type(store).__name__}) "
        f"cannot: it does not implement {package}.{capability.__qualname__}. Use a store "
        f"that does (the bundled 'sql'), or disable the plugin: "
        f'[plugins] disable = ["{plugin}"]'
    )
