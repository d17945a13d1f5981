"""Moving messages out: claim -> rate-limit -> build -> transport -> record outcome.

The pipeline, in one process:

* the **claim loop** keeps up to ``2 * max_concurrent_sends`` messages in hand. It claims in
  batches (one store round trip for many messages), asks the rate-limit policies once per
  account per batch, and hands each account's allowed messages to that account's lane. When a
  priority-0 message arrives while the pipeline is full, it claims just the immediate ones:
  that is the immediate lane, which never waits behind a long lower-priority batch;
* each **account lane** is a priority heap drained by at most ``max_connections`` workers (the
  account's pool size), all sharing one global limit of concurrent sends;
* the **recorder** writes outcomes by group commit: whatever finished while the previous write
  ran (or within a few ms) goes in the next one: one transaction per batch, not per message;
* a **lease keeper** renews the leases of everything in hand, so claims of a live process never
  expire while those of a dead one do after ``lease_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import re
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from gmp_core.interfaces import AttachmentError, RateDecision, VolumeBackend
from gmp_core.mime import build_mime
from gmp_core.models import (
    IMMEDIATE,
    Account,
    Attachment,
    Event,
    Message,
    Outcome,
    OutgoingMessage,
    SendResult,
    State,
)
from gmp_core.plugins import blame, call_each, describe_failure
from gmp_core.store import Claim

if TYPE_CHECKING:
    from gmp_core.service import Service

log = logging.getLogger("gmp.dispatcher")

# After a failed store call, the loops wait this long before the next try.
STORE_RETRY_DELAY = 1.0

# How often the claim loop re-reads the suspend/activate flag another process may have set.
ACTIVE_FLAG_REFRESH = 2.0

# A claim this close to its lease end is not started: another process may take it any
# moment. (A tenth of the lease, at most two seconds.)
LEASE_SAFETY_MARGIN = 2.0


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Dispatcher:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.config.service
        self.worker = make_worker_id()
        self.capacity = 2 * self.settings.max_concurrent_sends
        self.heartbeat = 0.0
        self._held: dict[str, Claim] = {}  # claimed and not yet recorded
        self._lanes: dict[str, AccountLane] = {}
        self._send_slots = asyncio.Semaphore(self.settings.max_concurrent_sends)
        self._wake = asyncio.Event()
        self._urgent = False
        # Test mode: run-nows asked for, and the last one whose due messages are all claimed.
        self._runs_asked = self._runs_done = 0
        self._active_checked = time.monotonic()  # the service read the flag at start-up
        self._active_changes = 0
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._recorder = Recorder(self)
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="gmp-claim-loop"),
            asyncio.create_task(self._recorder.run(), name="gmp-recorder"),
            asyncio.create_task(self._keep_leases(), name="gmp-lease-keeper"),
        ]

    def wake(self, *, urgent: bool = False) -> None:
        """New work (``urgent``: some of it is priority 0), a run-now, or room in the pipeline."""
        self._urgent = self._urgent or urgent
        self._wake.set()

    def run_now(self) -> None:
        """``POST /commands/run-now``: send what is due now. In test mode the only trigger:
        claims go on until nothing due is left, then wait for the next run-now."""
        self._runs_asked += 1
        self.wake(urgent=True)

    @property
    def _claiming(self) -> bool:
        """Sending is active and, in test mode, a run-now asked for it."""
        asked = self._runs_asked > self._runs_done
        return self.service.active and (asked or not self.settings.test_mode)

    @property
    def dead_tasks(self) -> list[str]:
        """Names of background tasks that ended while they should be running."""
        return [t.get_name() for t in self._tasks if t.done() and not self._stopping]

    def stuck_tasks(self, now: float) -> dict[str, float]:
        """The claim loop, when its heartbeat is older than a claim lease (or three idle
        waits, if longer): name -> seconds since. It beats at every turn, failing or not,
        so only a call that never returns stops it."""
        claim_loop = self._tasks[0] if self._tasks else None
        if claim_loop is None or claim_loop.done() or self._stopping:
            return {}
        bound = max(self.settings.lease_seconds, 3 * self.settings.send_loop_interval)
        since = now - max(self.heartbeat, self.service.started_at or now)
        return {claim_loop.get_name(): since} if since > bound else {}

    @property
    def _stopping(self) -> bool:
        return self._stop_requested.is_set()

    @property
    def in_hand(self) -> int:
        return len(self._held)

    async def stop(self, timeout: float) -> None:
        """Stop claiming, give back what was not started, let sends in flight finish (within
        ``timeout``), and write every outcome."""
        self._stop_requested.set()
        self._wake.set()
        claim_loop, recorder, lease_keeper = self._tasks
        await asyncio.gather(claim_loop, return_exceptions=True)
        unstarted = [claim for lane in self._lanes.values() for claim in lane.take_all()]
        self._recorder.add(map(_release, unstarted))
        workers = [task for lane in self._lanes.values() for task in lane.workers]
        if workers:
            _, late = await asyncio.wait(workers, timeout=timeout)
            for task in late:  # left to their leases: the next claimant sends them
                task.cancel()
            if late:
                log.warning(
                    "%d sends did not finish within %.0fs; their leases will expire",
                    len(late),
                    timeout,
                )
        # The recorder and lease keeper end on their own rather than being cancelled, so that
        # neither is ever interrupted half-way through a store call.
        await self._recorder.close()
        self._stopped.set()
        await asyncio.gather(recorder, lease_keeper, return_exceptions=True)

    # ------------------------------------------------------------------ claiming

    async def _claim_loop(self) -> None:
        outage = Outage("claiming messages")
        while not self._stopping:
            self.heartbeat = time.time()
            try:
                await self._refresh_active()
                claimed = await self._claim_once()
            except Exception:  # the store is down, say: wait, then try again
                outage.failed()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), STORE_RETRY_DELAY)
                continue
            outage.recovered()
            if not claimed:
                await self._idle()

    async def _refresh_active(self) -> None:
        """Processes sharing a store share suspend/activate: re-read the flag now and then."""
        now = time.monotonic()
        if now - self._active_checked >= ACTIVE_FLAG_REFRESH:
            self._active_checked = now
            seen = self._active_changes
            active = await self.service.store.get_flag("active") != "false"
            if seen == self._active_changes:  # not changed here while we read
                self.service.active = active

    def active_changed(self) -> None:
        """This process just suspended or resumed sending (and wrote the flag)."""
        self._active_changes += 1
        self._active_checked = time.monotonic()

    async def _claim_once(self) -> bool:
        """Claim and admit one batch; False when there was nothing to do (or no room)."""
        if not self._claiming:
            return False
        urgent, self._urgent = self._urgent, False
        runs_asked = self._runs_asked
        if self._has_room():
            limit, max_priority = self.capacity - self._unsent(), 3
        elif urgent:  # the immediate lane: only priority 0, even with a full pipeline
            limit, max_priority = self.settings.max_concurrent_sends, IMMEDIATE
        else:
            return False  # wait for the pipeline to half-empty: claims stay batched
        now = time.time()
        claims = await self.service.store.claim(
            self.worker,
            now,
            limit=limit,
            max_priority=max_priority,
            lease_seconds=self.settings.lease_seconds,
            default_batch_size=self.settings.batch_size_per_account,
        )
        if not claims:
            self._runs_done = runs_asked  # all that was due is claimed: test mode waits again
            return False
        for claim in claims:
            self._held[claim.message.id] = claim
        await self._admit(claims, now)
        return True

    def _unsent(self) -> int:
        """Claims in hand not yet sent. Those sent and only waiting for the recorder do not
        count against the pipeline: they would starve the lanes."""
        return len(self._held) - self._recorder.backlog

    def _has_room(self) -> bool:
        """Claim again once the pipeline is half empty: claims stay batched."""
        return self._unsent() <= self.capacity // 2

    async def _idle(self) -> None:
        """Sleep until woken, until the next scheduled message is due, or at most
        ``send_loop_interval`` (other processes may add work we are not told about)."""
        timeout = self.settings.send_loop_interval
        if self._claiming and not self._stopping and self._has_room():
            with contextlib.suppress(Exception):  # the store may be down; just poll later
                due = await self.service.store.next_due(time.time())
                if due is not None:
                    timeout = min(timeout, max(0.0, due - time.time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _admit(self, claims: Sequence[Claim], now: float) -> None:
        """Sort claims into account lanes, after the rate-limit policies had their say."""
        by_account: dict[str, list[Claim]] = defaultdict(list)
        for claim in claims:
            by_account[claim.message.account_id].append(claim)
        accounts = await self.service.accounts.get_many(by_account)
        for account_id, group in by_account.items():
            account = accounts.get(account_id)
            if account is None:
                self._finish_all(group, SendResult.failed("account not found", temporary=False))
                continue
            if account.transport not in self.service.transports:
                self._finish_all(
                    group,
                    SendResult.failed(
                        f"no transport named {account.transport!r} is enabled", temporary=True
                    ),
                )
                continue
            allowed = await self._apply_rate_limits(account, group, now)
            if allowed:
                self._lane(account).push(allowed)

    async def _apply_rate_limits(
        self, account: Account, group: list[Claim], now: float
    ) -> list[Claim]:
        decision = RateDecision(allowed=len(group))
        for name, policy in self.service.rate_limit_policies.items():
            try:
                verdict = await policy.decide(account, len(group), now)
            except Exception:
                log.exception("rate-limit policy %r failed; deferring %s's batch", name, account.id)
                verdict = RateDecision(0, [now + self.settings.retry_delays[0]] * len(group))
            if verdict.allowed < decision.allowed or verdict.reject:
                decision = verdict
        held_back = group[decision.allowed :]
        for claim, retry_at in zip(
            held_back, _pad(decision.retry_at, len(held_back), now), strict=True
        ):
            message = claim.message
            if decision.reject:
                event = Event(
                    "error",
                    message.id,
                    message.account_id,
                    now,
                    code=429,
                    detail="rate_limit_exceeded",
                    data={"reason": "rate_limit"},
                )
                outcome = Outcome(
                    message.id,
                    State.ERROR,
                    event,
                    attempts=claim.attempts,
                    error="rate_limit_exceeded",
                )
            else:
                event = Event(
                    "deferred",
                    message.id,
                    message.account_id,
                    now,
                    detail="rate limited",
                    data={"reason": "rate_limit", "retry_at": retry_at},
                )
                outcome = Outcome(
                    message.id,
                    State.SCHEDULED,
                    event,
                    deferred_ts=retry_at,
                    attempts=claim.attempts,
                )
            self._recorder.add([outcome])
        return group[: decision.allowed]

    def _lane(self, account: Account) -> AccountLane:
        lane = self._lanes.get(account.id)
        if lane is None:
            lane = self._lanes[account.id] = AccountLane(self, account)
        lane.account = account  # the newest settings win
        return lane

    def _finish_all(self, claims: Iterable[Claim], result: SendResult) -> None:
        now = time.time()
        self._recorder.add(self.outcome_of(claim, result, now) for claim in claims)

    # ------------------------------------------------------------------ sending

    async def deliver(self, claim: Claim, account: Account) -> Outcome | None:
        """One attempt for one message; None when its lease ran out before it started."""
        margin = min(LEASE_SAFETY_MARGIN, self.settings.lease_seconds / 10)
        if time.time() > claim.lease_until - margin:
            log.warning(
                "lease of %s ran out before sending; leaving it to the next claim", claim.message.id
            )
            self._held.pop(claim.message.id, None)
            return None
        outgoing = OutgoingMessage(claim.message, attempt=claim.attempts + 1)
        started = time.perf_counter()
        try:
            result = await self._attempt(outgoing, account)
        except AttachmentError as exc:
            result = SendResult.failed(str(exc), temporary=exc.temporary)
        except Exception as exc:  # a bug in a plugin or in building: retry, never lose
            log.exception("sending %s failed unexpectedly", claim.message.id)
            result = SendResult.failed(f"internal error: {describe_failure(exc)}", temporary=True)
        outcome = self.outcome_of(claim, result, time.time())
        if outcome.event is not None:  # observers (metrics) time the attempts
            outcome.event.data["duration"] = round(time.perf_counter() - started, 6)
        return outcome

    async def _attempt(self, outgoing: OutgoingMessage, account: Account) -> SendResult:
        service = self.service
        await call_each(
            service.pm.hook.gmp_prepare_message, message=outgoing, account=account, service=service
        )
        if outgoing.data is None:
            # No name for the attachments' bytes: they are freed once built in, not held
            # for the whole SMTP conversation.
            outgoing.data = build_mime(
                outgoing, await self._read_attachments(outgoing.message, account)
            )
        try:
            return await service.transports[account.transport].send(outgoing, account)
        except Exception as exc:
            blame(exc, f"transport {account.transport!r}")
            raise

    async def _read_attachments(
        self, message: Message, account: Account
    ) -> list[tuple[Attachment, bytes]]:
        attachments = message.attachments
        if not attachments:
            return []
        for attachment in attachments:  # all available, before reading any
            self._volume_for(attachment, account)
        started = time.perf_counter()
        contents = await self._read_within_limit(attachments, account)
        fetched = Event(
            "attachments_fetched",
            message.id,
            account.id,
            time.time(),
            data={
                "duration": time.perf_counter() - started,
                "count": len(contents),
                "bytes": sum(len(data) for _, data in contents),
            },
        )
        await self.service.notify_events([fetched])
        return contents

    def _volume_for(self, attachment: Attachment, account: Account) -> VolumeBackend:
        volume = self.service.volumes.get(attachment.volume)
        if volume is None or not volume.accepts(account.id):
            raise AttachmentError(
                f"attachment {attachment.filename!r}: volume "
                f"{attachment.volume!r} is not available",
                temporary=False,
            )
        return volume

    async def _read_within_limit(
        self, attachments: Sequence[Attachment], account: Account
    ) -> list[tuple[Attachment, bytes]]:
        """Read one attachment after the other, stopping as soon as the message's total
        passes ``max_message_attachment_bytes``: one message never holds more than that plus
        one attachment in memory. Errors name the attachment."""
        limit = self.settings.max_message_attachment_bytes
        contents: list[tuple[Attachment, bytes]] = []
        total = 0
        for attachment in attachments:
            volume = self._volume_for(attachment, account)  # it may have gone meanwhile
            try:
                data = await volume.read(attachment.subpath, account.id)
            except AttachmentError as exc:
                raise AttachmentError(
                    f"attachment {attachment.filename!r}: {exc}", temporary=exc.temporary
                ) from exc
            total += len(data)
            if total > limit:
                raise AttachmentError(
                    f"attachment {attachment.filename!r}: the message's attachments are "
                    f"over the limit of {limit} bytes",
                    temporary=False,
                )
            contents.append((attachment, data))
        return contents

    def outcome_of(self, claim: Claim, result: SendResult, now: float) -> Outcome:
        """Sent, retried later with back-off, or failed for good."""
        message, attempts = claim.message, claim.attempts
        result = _storable(result)
        if result.accepted:
            data = {"refused": result.refused} if result.refused else {}
            event = Event(
                "sent",
                message.id,
                message.account_id,
                now,
                code=result.code,
                detail=result.detail,
                data=data,
            )
            return Outcome(message.id, State.SENT, event, attempts=attempts)
        attempts += 1
        text = f"{result.code} {result.detail}" if result.code else result.detail
        if result.temporary and attempts <= self.settings.retries_allowed:
            delays = self.settings.retry_delays
            retry_at = now + delays[min(attempts, len(delays)) - 1]
            event = Event(
                "deferred",
                message.id,
                message.account_id,
                now,
                code=result.code,
                detail=result.detail,
                data={"reason": "temporary failure", "retry_at": retry_at, "attempt": attempts},
            )
            return Outcome(
                message.id,
                State.SCHEDULED,
                event,
                deferred_ts=retry_at,
                attempts=attempts,
                error=text,
            )
        if result.temporary:
            text = f"gave up after {attempts} attempts: {text}"
        event = Event(
            "error",
            message.id,
            message.account_id,
            now,
            code=result.code,
            detail=text,
            data={"refused": result.refused} if result.refused else {},
        )
        return Outcome(message.id, State.ERROR, event, attempts=attempts, error=text)

    def recorded(self, outcomes: Sequence[Outcome]) -> None:
        """The recorder wrote these: they leave our hands."""
        for outcome in outcomes:
            self._held.pop(outcome.message_id, None)

    def finished(self) -> None:
        """Outcomes went to the recorder: room may have opened in the pipeline."""
        if not self._wake.is_set() and self._has_room():
            self._wake.set()

    async def _keep_leases(self) -> None:
        period = self.settings.lease_seconds / 3
        outage = Outage("renewing leases")
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), period)
            if not self._held or self._stopped.is_set():
                continue
            lease_until = time.time() + self.settings.lease_seconds
            try:
                await self.service.store.renew_leases(self.worker, list(self._held), lease_until)
            except Exception:
                outage.failed()
                continue
            outage.recovered()
            for claim in self._held.values():
                claim.lease_until = lease_until


class AccountLane:
    """One account's claimed messages, best priority first, sent by at most
    ``max_connections`` workers at once."""

    def __init__(self, dispatcher: Dispatcher, account: Account) -> None:
        self.dispatcher = dispatcher
        self.account = account
        self.workers: set[asyncio.Task[None]] = set()
        self._heap: list[tuple[int, int, Claim]] = []

    def push(self, claims: Iterable[Claim]) -> None:
        for claim in claims:
            heapq.heappush(self._heap, (claim.message.priority, claim.seq, claim))
        while len(self.workers) < min(self.account.max_connections, len(self._heap)):
            self.workers.add(asyncio.create_task(self._work(), name=f"gmp-send-{self.account.id}"))

    def take_all(self) -> list[Claim]:
        claims = [claim for _, _, claim in self._heap]
        self._heap.clear()
        return claims

    async def _work(self) -> None:
        dispatcher = self.dispatcher
        try:
            while self._heap and not dispatcher._stopping:  # stopping: no new sends
                _, _, claim = heapq.heappop(self._heap)
                async with dispatcher._send_slots:
                    outcome = await dispatcher.deliver(claim, self.account)
                if outcome is not None:
                    dispatcher._recorder.add([outcome])
        finally:
            # Leave the set the moment we stop looking at the heap, with no await between:
            # a done-callback would run later, and a push() in between would see a worker
            # that is gone and start none, leaving its messages stranded.
            self.workers.discard(asyncio.current_task())


class Recorder:
    """Group commit of outcomes: one store write for everything finished meanwhile.

    A write waits up to ``LINGER`` seconds for ``BATCH`` outcomes to gather: under load that
    turns many small transactions into few large ones (at 2,000 messages/s it cut the
    writes from one per 9 outcomes to one per 30 or so); when idle it costs a few ms of
    recording delay, never of sending.

    A failed write is retried with the same outcomes (the store may be briefly down): while
    the process lives nothing is lost, and if it dies the leases bring the messages back.
    """

    LINGER = 0.01
    BATCH = 128

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.heartbeat = 0.0
        self._pending: list[Outcome] = []
        self._writing = 0  # outcomes in the store write under way
        self._has_work = asyncio.Event()
        self._full = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    @property
    def backlog(self) -> int:
        """Outcomes not yet written."""
        return len(self._pending) + self._writing

    def add(self, outcomes: Iterable[Outcome]) -> None:
        self._pending.extend(outcomes)
        if self._pending:
            self._idle.clear()
            self._has_work.set()
        if len(self._pending) >= self.BATCH:
            self._full.set()
        self.dispatcher.finished()

    async def drain(self) -> None:
        """Return once everything added so far is written."""
        await self._idle.wait()

    async def close(self) -> None:
        """Write what is pending, then let :meth:`run` end."""
        self._full.set()  # no lingering now
        await self.drain()
        self._closing = True
        self._has_work.set()

    async def run(self) -> None:
        service = self.dispatcher.service
        outage = Outage("recording outcomes")
        while True:
            await self._has_work.wait()
            if self._closing and not self._pending:
                return
            if len(self._pending) < self.BATCH and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.LINGER)
            self._has_work.clear()
            self._full.clear()
            batch, self._pending = self._pending, []
            self._writing = len(batch)
            try:
                applied = set(
                    await service.store.record(self.dispatcher.worker, batch, time.time())
                )
            except Exception:  # kept in memory and written once the store is back
                outage.failed()
                self._pending[:0] = batch
                self._has_work.set()
                await asyncio.sleep(STORE_RETRY_DELAY)
                continue
            finally:
                self._writing = 0
            outage.recovered()
            self.heartbeat = time.time()
            self.dispatcher.recorded(batch)
            service.reporting.wake()
            await service.notify_events(
                o.event for o in batch if o.event is not None and o.message_id in applied
            )
            if not self._pending:
                self._idle.set()


def _release(claim: Claim) -> Outcome:
    """Give an unstarted claim back to the queue (at shutdown)."""
    return Outcome(claim.message.id, State.QUEUED, None, attempts=claim.attempts)


def _pad(times: Sequence[float], count: int, now: float) -> list[float]:
    """Policies should give one retry time per held-back message; be lenient if they don't."""
    fallback = times[-1] if times else now + 60
    return [*times[:count], *[fallback] * (count - len(times))]


class Outage:
    """Logs a failure that repeats on every retry once when it starts (with the traceback)
    and once when it ends, so a database restart reads as two lines, not a flood."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None

    def failed(self) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.exception("%s failed; retrying every %.0fs", self.what, STORE_RETRY_DELAY)
        else:
            log.debug("%s failed again", self.what, exc_info=True)

    def recovered(self) -> None:
        if self.since is not None:
            log.warning("%s works again after %.0fs", self.what, time.monotonic() - self.since)
            self.since = None


def _storable(result: SendResult) -> SendResult:
    """The result with the server's text as text any store can keep and any report can
    carry. aiosmtplib keeps reply bytes that are not UTF-8 as lone surrogates (a relay
    answering ``550 caf\xe9``): written as they are, the outcome could never be stored and the
    message stayed ``sending``."""
    texts = [result.detail, *result.refused.values()]
    if all(text.isascii() for text in texts):
        return result
    return replace(
        result,
        detail=_readable(result.detail),
        refused={addr: _readable(reply) for addr, reply in result.refused.items()},
    )


_SURROGATE = re.compile("[\ud800-\udfff]")


def _readable(text: str) -> str:
    """``text`` as valid Unicode: bytes that were not UTF-8 (kept as surrogate escapes) read
    as U+FFFD, as any other lone surrogate does."""
    if text.isascii():
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that escapes no byte
        return _SURROGATE.sub("\ufffd", text)
