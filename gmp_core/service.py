"""The service: wires plugins together, runs the loops, and offers the operations the API
exposes (the REST plugin is a thin HTTP layer over the public methods of :class:`Service`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pluggy

from gmp_core.config import Config, ConfigError
from gmp_core.dispatcher import Dispatcher
from gmp_core.intake import (
    InvalidInput,
    parse_account,
    parse_message,
    parse_priority,
    storable_id,
    unknown_fields,
)
from gmp_core.interfaces import RateLimitPolicy, Reporter, Transport, VolumeBackend
from gmp_core.models import IMMEDIATE, Account, Event, Message, Principal
from gmp_core.plugins import call_each, make_plugin_manager, notify_each
from gmp_core.reporter import Reporting
from gmp_core.store import DeleteResult, MessageRecord, Store, StoreCannotWrite

log = logging.getLogger("gmp.service")
config_log = logging.getLogger("gmp.config")

T = TypeVar("T")


# Refusals that say the message is already there: a client retrying a call that was stored
# gets them, and its call still succeeded.
ALREADY_THERE = frozenset({"already sent", "in flight"})

# "Reported before the epoch": no message is; what the retention purge removes when it is off.
NO_MESSAGE = 0.0


@dataclass(slots=True)
class Rejection:
    id: str | None
    reason: str

    @property
    def for_content(self) -> bool:
        """Refused for what the message says, not because it is already there."""
        return self.reason not in ALREADY_THERE


@dataclass(slots=True)
class FieldWarning:
    """A field of a message that was ignored (unknown to the proxy, usually a typo)."""

    id: str | None
    field: str
    warning: str = "unknown field ignored"


@dataclass(slots=True)
class AddResult:
    queued: int
    rejected: list[Rejection] = field(default_factory=list)
    warnings: list[FieldWarning] = field(default_factory=list)

    @property
    def all_rejected(self) -> bool:
        """Nothing queued, and every message refused for its content (a call whose messages
        are all already sent is a retry that succeeded)."""
        return not self.queued and bool(self.rejected) and all(r.for_content for r in self.rejected)


class AccountBusy(Exception):
    """The account still has unsent messages (delete with ``force`` to end them)."""

    def __init__(self, unsent: int) -> None:
        super().__init__(
            f"account has {unsent} unsent messages; use force=true to delete "
            "it anyway (they end as error 'account deleted')"
        )
        self.unsent = unsent


class NotFound(LookupError):
    pass


class Forbidden(PermissionError):
    """The caller is limited to some accounts (``Principal.accounts``), and this is not one
    of them; ``str(exc)`` is the reason given to the client."""


NOT_YOURS = "not allowed for this caller"


class Service:
    """One proxy instance. Build it, ``await start()``, ``await stop()``.

    ``plugins`` are extra plugin objects registered for this instance only (tests, embedding);
    ``load_entrypoints=False`` skips installed plugins altogether.
    """

    def __init__(
        self,
        config: Config,
        *,
        plugins: Iterable[object] = (),
        load_entrypoints: bool = True,
    ) -> None:
        self.config = config
        self.pm: pluggy.PluginManager = make_plugin_manager(
            config.disabled_plugins, load_entrypoints=load_entrypoints, extra_plugins=plugins
        )
        self.pm.hook.gmp_register_settings(register=config.register)
        self.state: dict[str, Any] = {}  # per-instance state of plugins, by plugin name
        self.transports: dict[str, Transport] = {}
        self.volumes: dict[str, VolumeBackend] = {}
        self.rate_limit_policies: dict[str, RateLimitPolicy] = {}
        self.reporters: dict[str, Reporter] = {}
        self.active = True
        self.started_at: float | None = None
        self._store: Store | None = None
        self._dispatcher: Dispatcher | None = None
        self._reporting: Reporting | None = None
        self._accounts: AccountDirectory | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the service is not started")
        return self._store

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            raise RuntimeError("the service is not started")
        return self._dispatcher

    @property
    def reporting(self) -> Reporting:
        if self._reporting is None:
            raise RuntimeError("the service is not started")
        return self._reporting

    @property
    def accounts(self) -> AccountDirectory:
        if self._accounts is None:
            raise RuntimeError("the service is not started")
        return self._accounts

    async def start(self) -> None:
        """Open the store, collect plugin objects, run ``gmp_startup``, start dispatching."""
        for level, text in self.config.startup_notices():
            config_log.log(level, "%s", text)
        self.check()
        store = self.pm.hook.gmp_make_store(config=self.config)
        if store is None:
            raise ConfigError("no enabled plugin provides a store (is 'sql' disabled?)")
        try:
            await store.open()
        except BaseException:
            await store.close()
            raise
        self._store = store
        self._accounts = AccountDirectory(store)
        hook = self.pm.hook
        try:
            self._collect_plugin_objects()
            self.active = await store.get_flag("active") != "false"
            self._dispatcher = Dispatcher(self)
            self._reporting = Reporting(self)
            await store.watch(self._dispatcher.wake, reports=self._reporting.wake)
            await self._reporting.prepare()
            await call_each(hook.gmp_startup, service=self)
        except BaseException:
            # Let plugins that did start (a listening HTTP server, say) release what they took.
            await notify_each(hook.gmp_shutdown, log, service=self)
            await self._close_plugins()
            raise
        self._dispatcher.start()
        self._reporting.start()
        self.started_at = time.time()
        sending = "active" if self.active else "suspended"
        if self.config.service.test_mode:
            sending += ", test mode: only when POST /commands/run-now asks"
        log.info(
            "genro-mail-proxy started (worker %s, sending %s)", self._dispatcher.worker, sending
        )

    def check(self) -> None:
        """Raise :class:`ConfigError` if a plugin refuses the configuration (hook
        ``gmp_check_config``): ``start()`` and ``gmp check-config`` both run it."""
        self.pm.hook.gmp_check_config(service=self)

    def _collect_plugin_objects(self) -> None:
        hook = self.pm.hook
        hook.gmp_register_transports(
            register=_registrar(self.transports, "transport"), service=self
        )
        hook.gmp_register_volume_backends(register=_registrar(self.volumes, "volume"), service=self)
        hook.gmp_register_rate_limit_policies(
            register=_registrar(self.rate_limit_policies, "rate-limit policy"), service=self
        )
        hook.gmp_register_reporters(register=_registrar(self.reporters, "reporter"), service=self)

    async def stop(self) -> None:
        """Graceful stop: no new claims, sends in flight finish (bounded by
        ``shutdown_timeout``), outcomes written, plugins shut down, connections closed.
        Stopping a service that is not running does nothing."""
        if self._dispatcher is None or self.started_at is None:
            return
        self.started_at = None
        await self._dispatcher.stop(self.config.service.shutdown_timeout)
        await self.reporting.stop()  # after the dispatcher: its last outcomes get reported
        await notify_each(self.pm.hook.gmp_shutdown, log, service=self)
        await self._close_plugins()
        log.info("genro-mail-proxy stopped")

    async def _close_plugins(self) -> None:
        for name, transport in self.transports.items():
            try:
                await transport.close()
            except Exception:
                log.exception("closing transport %r failed", name)
        if self._store is not None:
            await self._store.close()

    async def notify_events(self, events: Iterable[Event]) -> None:
        """Tell ``gmp_event`` observers; their failures are logged, never raised."""
        hook = self.pm.hook.gmp_event
        if hook.get_hookimpls():
            for event in events:
                await notify_each(hook, log, event=event, service=self)

    # ------------------------------------------------------------------ health

    def health_problems(self) -> list[str]:
        """Empty when healthy; else what is wrong: a background loop died, or is stuck (its
        heartbeat is older than its bound: a call that never returns)."""
        if self._dispatcher is None:
            return ["not started"]
        dead = self._dispatcher.dead_tasks
        now = time.time()
        stuck = self._dispatcher.stuck_tasks(now)
        if self._reporting is not None:
            dead += self._reporting.dead_tasks
            stuck |= self._reporting.stuck_tasks(now)
        return [f"background task {name} has stopped" for name in dead] + [
            f"background task {name} is stuck (no heartbeat for {since:.0f}s)"
            for name, since in stuck.items()
        ]

    async def readiness_problems(self, timeout: float) -> list[str]:
        """Empty when the service can take work: its loops live and its store answers
        within ``timeout`` seconds, and can write. (The error's text is not given: it may
        name a host.)"""
        problems = self.health_problems()
        if self._store is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self._store.ping()
            except StoreCannotWrite as exc:
                problems.append(str(exc))
            except Exception as exc:
                problems.append(f"store unreachable ({type(exc).__name__})")
        return problems

    async def status(self) -> dict[str, Any]:
        dispatcher = self.dispatcher
        return {
            "active": self.active,
            "queue": await self.store.queue_counts(),
            "in_hand": dispatcher.in_hand,
            "heartbeats": {
                "dispatcher": dispatcher.heartbeat,
                "recorder": dispatcher._recorder.heartbeat,
            },
            "reporters": self.reporting.status(),
            "started_at": self.started_at,
            "worker": dispatcher.worker,
        }

    def authenticate(self, headers: Mapping[str, str]) -> Principal | None:
        """Who is calling, as the auth plugins say; None refuses the request. Plugins get
        the header names lower-cased."""
        lowered = {name.lower(): value for name, value in headers.items()}
        principal: Principal | None = self.pm.hook.gmp_authenticate(
            headers=lowered, config=self.config
        )
        return principal

    # ------------------------------------------------------------------ messages

    async def add_messages(
        self, items: Any, default_priority: Any = None, principal: Principal | None = None
    ) -> AddResult:
        """Validate and queue a batch. Each bad message is rejected alone, with a reason;
        raises :class:`InvalidInput` only when the batch itself is unusable. A caller limited
        to some accounts (``principal``) queues only for those, and never replaces another
        account's message of the same id."""
        settings = self.config.service
        if not isinstance(items, list):
            raise InvalidInput("messages must be a list")
        if len(items) > settings.max_messages_per_call:
            raise InvalidInput(
                f"Cannot enqueue more than {settings.max_messages_per_call} messages at once"
            )
        priority = _batch_priority(default_priority, settings.default_priority)

        started = time.perf_counter()
        now = time.time()
        # By id, the last copy in the call decides: a later copy replaces an earlier one (and
        # takes its place in the call's order), and a later invalid copy is the answer for
        # that id, so no earlier copy is queued. Items without an id are answered each alone.
        decided: dict[str, Message | Rejection] = {}
        unnamed: list[Message | Rejection] = []
        warnings: list[FieldWarning] = []
        for item in items:
            item_id = _item_id(item)
            warnings.extend(FieldWarning(item_id, name) for name in unknown_fields(item))
            outcome = self._checked_message(item, item_id, priority, now, principal)
            if outcome.id is None:  # only a rejection can have no id
                unnamed.append(outcome)
                continue
            decided.pop(outcome.id, None)
            decided[outcome.id] = outcome

        outcomes = [*decided.values(), *unnamed]
        rejected = [o for o in outcomes if isinstance(o, Rejection)]
        parsed = [o for o in outcomes if isinstance(o, Message)]
        accounts = await self.accounts.get_many({m.account_id for m in parsed})
        valid = []
        for message in parsed:
            if message.account_id in accounts:
                valid.append(message)
            else:
                rejected.append(Rejection(message.id, "account not found"))

        events = [
            Event("queued", m.id, m.account_id, now, data={"priority": m.priority}) for m in valid
        ]
        result = await self.store.enqueue(
            valid,
            events,
            now,
            settings.idempotency_window_seconds,
            keep_other_accounts=principal is not None and principal.scoped,
        )
        rejected.extend(Rejection(id_, reason) for id_, reason in result.refused.items())
        if result.queued:
            urgent = any(m.priority == IMMEDIATE for m in valid if m.id not in result.refused)
            self.dispatcher.wake(urgent=urgent)
        queued = set(result.queued)
        enqueued = Event(
            "enqueued",
            "",
            None,
            now,
            data={"count": len(queued), "duration": time.perf_counter() - started},
        )
        await self.notify_events([enqueued])
        await self.notify_events(e for e in events if e.message_id in queued)
        rejections = [Event("rejected", r.id or "", None, now, detail=r.reason) for r in rejected]
        # Into the history only under an id that could be a message's (not a list, not 10 kB)
        await self._keep_rejections(
            [e for e in rejections if storable_id(e.message_id) is not None], principal
        )
        await self.notify_events(rejections)
        return AddResult(queued=len(result.queued), rejected=rejected, warnings=warnings)

    def _checked_message(
        self,
        item: Any,
        item_id: str | None,
        priority: int,
        now: float,
        principal: Principal | None,
    ) -> Message | Rejection:
        """One item of a call, as a message to queue or its rejection: nothing it contains
        can fail the rest of the call."""
        settings = self.config.service
        try:
            message = parse_message(
                item,
                default_priority=priority,
                default_account=settings.default_account,
                message_id_domain=settings.message_id_domain,
                max_defer_seconds=settings.max_defer_seconds,
                now=now,
            )
            self._check_volumes(message)
            if principal is not None and not principal.may_use(message.account_id):
                raise InvalidInput(f"account_id: {NOT_YOURS}")
        except InvalidInput as exc:
            return Rejection(item_id, str(exc))
        except Exception as exc:  # intake names the field of its own failures: the last net
            # Where it was raised, not its text: that may quote the client's.
            where = traceback.extract_tb(exc.__traceback__)[-1]
            log.error(
                "checking a message raised %s (%s:%s): it was rejected",
                type(exc).__name__,
                where.filename,
                where.lineno,
            )
            return Rejection(item_id, "invalid message: it could not be checked")
        return message

    async def _keep_rejections(self, events: list[Event], principal: Principal | None) -> None:
        """Into the history of the ids the client used; a caller limited to some accounts
        writes none into the history of another account's message."""
        if events and principal is not None and principal.scoped:
            owners = await self.store.accounts_of([e.message_id for e in events])
            events = [e for e in events if principal.may_use(owners.get(e.message_id, None))]
        if events:
            await self.store.add_events(events)

    def _check_volumes(self, message: Message) -> None:
        for attachment in message.attachments:
            volume = self.volumes.get(attachment.volume)
            if volume is None:
                raise InvalidInput(f"unknown volume in storage_path: {attachment.volume}")
            if not volume.accepts(message.account_id):
                raise InvalidInput(
                    f"volume not allowed for this account: {attachment.storage_path[:200]}"
                )

    async def list_messages(
        self,
        *,
        status: str | None = None,
        account_id: str | None = None,
        limit: int = 100,
        cursor: int | None = None,
        principal: Principal | None = None,
    ) -> tuple[list[MessageRecord], int | None]:
        """A page of messages; a caller limited to some accounts sees theirs only."""
        accounts = None
        if principal is not None and principal.accounts is not None:
            if account_id is not None and not principal.may_use(account_id):
                raise Forbidden(f"account_id: {NOT_YOURS}")
            accounts = sorted(principal.accounts)
        return await self.store.list_messages(
            status=status, account_id=account_id, limit=limit, cursor=cursor, accounts=accounts
        )

    async def get_message(
        self, message_id: str, principal: Principal | None = None
    ) -> tuple[MessageRecord, list[Event]]:
        found = await self.store.get_message(message_id)
        if found is None or (principal is not None and not principal.may_use(found[0].account_id)):
            raise NotFound(f"message {message_id!r} not found")
        return found

    async def delete_messages(
        self, ids: Sequence[str], principal: Principal | None = None
    ) -> DeleteResult:
        """Delete by id; another account's messages count as not found for a caller limited
        to some accounts."""
        ids = list(dict.fromkeys(ids))
        foreign: list[str] = []
        if principal is not None and principal.scoped:
            owners = await self.store.accounts_of(ids)
            foreign = [i for i in ids if i in owners and not principal.may_use(owners[i])]
            ids = [i for i in ids if i not in owners or principal.may_use(owners[i])]
        result = await self.store.delete_messages(ids)
        result.not_found.extend(foreign)
        return result

    async def cleanup_messages(self, older_than_seconds: float | None = None) -> int:
        """Remove final messages reported more than ``older_than_seconds`` ago (default: the
        retention; a retention <= 0 means every reported one, as the original's cleanup)."""
        if older_than_seconds is None:
            older_than_seconds = self.config.service.delivery_report_retention_seconds
        now = time.time()
        return await self._cleanup(now - max(0.0, older_than_seconds), now)

    async def purge_expired(self) -> int:
        """The automatic retention purge (every ``[reporting] purge_interval``): reported
        final messages older than the retention. A retention <= 0 turns it off, as it did at
        the original: then only :meth:`cleanup_messages` removes them. Tombstones older than
        the idempotency window go either way (their table would only grow)."""
        retention = self.config.service.delivery_report_retention_seconds
        now = time.time()
        return await self._cleanup(now - retention if retention > 0 else NO_MESSAGE, now)

    async def _cleanup(self, reported_before: float, now: float) -> int:
        window = self.config.service.idempotency_window_seconds
        return await self.store.cleanup(reported_before, now, window)

    # ------------------------------------------------------------------ control

    def run_now(self) -> None:
        """Wake the dispatcher and the reporters at once (in test mode, the only way messages
        are sent)."""
        self.dispatcher.run_now()
        self.reporting.run_now()

    async def set_active(self, active: bool) -> bool:
        """Suspend or resume sending; persisted across restarts, and followed within seconds
        by the other processes sharing the store."""
        await self.store.set_flag("active", "true" if active else "false")
        self.active = active
        self.dispatcher.active_changed()
        if active:
            self.dispatcher.wake()
        return active

    # ------------------------------------------------------------------ accounts

    async def put_account(self, payload: Any, principal: Principal | None = None) -> Account:
        account = parse_account(payload)
        if principal is not None and not principal.may_use(account.id):
            raise Forbidden(f"id: {NOT_YOURS}")
        previous = (await self.store.get_accounts([account.id])).get(account.id)
        await self.store.put_account(account, time.time())
        if previous is None or _settings(previous) != _settings(account):
            await self._forget_account(account.id)  # an unchanged one keeps its connections
        return account

    async def list_accounts(self, principal: Principal | None = None) -> list[Account]:
        accounts = await self.store.list_accounts()
        return [a for a in accounts if principal is None or principal.may_use(a.id)]

    async def delete_account(
        self, account_id: str, *, force: bool = False, principal: Principal | None = None
    ) -> None:
        """Refused while the account has unsent messages, unless ``force``: then they end as
        ``error`` "account deleted" (and are reported like any other failure)."""
        if principal is not None and not principal.may_use(account_id):
            raise NotFound(f"account {account_id!r} not found")
        deletion = await self.store.delete_account(account_id, force=force, now=time.time())
        if not deletion.found:
            raise NotFound(f"account {account_id!r} not found")
        if not deletion.deleted:
            raise AccountBusy(deletion.unsent)
        await self._forget_account(account_id)
        self.reporting.wake()
        await self.notify_events(deletion.events)

    async def _forget_account(self, account_id: str) -> None:
        self.accounts.forget(account_id)
        for transport in self.transports.values():
            await transport.forget_account(account_id)


class AccountDirectory:
    """Accounts by id, cached for a few seconds: one store query per batch, and changes made
    by other processes sharing the store show up quickly."""

    def __init__(self, store: Store, max_age: float = 5.0) -> None:
        self.store = store
        self.max_age = max_age
        self._cache: dict[str, tuple[float, Account]] = {}

    async def get_many(self, ids: Iterable[str]) -> dict[str, Account]:
        now = time.monotonic()
        found = {}
        missing = []
        for account_id in ids:
            cached = self._cache.get(account_id)
            if cached is not None and now - cached[0] < self.max_age:
                found[account_id] = cached[1]
            else:
                missing.append(account_id)
        if missing:
            for account_id, account in (await self.store.get_accounts(missing)).items():
                self._cache[account_id] = (now, account)
                found[account_id] = account
        return found

    def forget(self, account_id: str) -> None:
        self._cache.pop(account_id, None)


def _registrar(registry: dict[str, T], kind: str) -> Callable[[str, T], None]:
    def register(name: str, obj: T) -> None:
        if name in registry:
            raise ConfigError(f"two plugins register a {kind} named {name!r}")
        registry[name] = obj

    return register


def _settings(account: Account) -> Account:
    """The account without its timestamps: what a change of it changes."""
    return replace(account, created_at=None, updated_at=None)


def _item_id(item: Any) -> str | None:
    """The id a client gave an item, to name it in the answer: a string or a number (as
    intake reads them); anything else (a list, an object) names nothing."""
    value = item.get("id") if isinstance(item, dict) else None
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return str(value)
    except ValueError:  # an integer of more than 4,300 digits is no id either
        return None


def _batch_priority(value: Any, configured: int) -> int:
    """The call's ``default_priority``, else the configured one; a bad one refuses the call
    with a reason naming it."""
    try:
        priority = parse_priority(value)
    except InvalidInput as exc:
        raise InvalidInput(str(exc).replace("priority", "default_priority", 1)) from None
    return configured if priority is None else priority
