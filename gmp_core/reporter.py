"""Delivery reports: each enabled reporter gets, on its own, the reports waiting for it.

One :class:`ReportLoop` per reporter: take the oldest reports it has not acknowledged (a
bounded batch), hand them over, and mark them acknowledged only when the reporter says so.
Anything else (an exception, a refusal) leaves them waiting, and that loop backs off
exponentially, with jitter, up to ``retry_max``. Reporters share nothing: each has its own
queue in the store, its own back-off and its own heartbeat, so one failing never holds back
another, and none of them ever slows dispatch (they only read and acknowledge reports).

Processes sharing a store share the reports too, so one of them at a time posts a given
reporter's: the one holding that reporter's lease in the store. It renews the lease while it
posts and while it waits (a back-off, a client's ``next_sync_after``), so nobody else posts
meanwhile; the others look again every half lease, and one takes over once the lease runs out
(the holder died) or is given back (the holder stopped). Without this every process would
post every report, and send its own heartbeats.

A post never takes longer than ``post_timeout``, whatever the reporter does (an endpoint that
trickles its answer a byte at a time, say): then it counts as failed. If the lease cannot be
renewed during a post (another process has it, or the store stopped answering for most of a
lease), the post is cancelled: two processes never post the same batch at once.

Each loop beats (``heartbeat``) at least every third of a lease, while it waits and while it
posts; one whose heartbeat is older than a lease is stuck (a store call or an observer that
never returns), and ``/health`` says so (:meth:`Reporting.stuck_tasks`).

Retention runs beside them: messages every reporter acknowledged are purged after
``delivery_report_retention_seconds`` (<= 0: never automatically, as at the original; only a
cleanup-messages call removes them then); nothing unacknowledged ever is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gmp_core.interfaces import DeliveryReport, Reporter, ReportReply
from gmp_core.models import Event

if TYPE_CHECKING:
    from gmp_core.service import Service

log = logging.getLogger("gmp.reporter")

# A client's "do not call before" is obeyed for at most this long: a client with a wrong
# clock must not stop its own reports for good.
LONGEST_CLIENT_PAUSE = 3600.0


class Reporting:
    """The report loops and the retention purge of one service."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.loops = [
            ReportLoop(service, name, reporter) for name, reporter in service.reporters.items()
        ]
        self._stopping = asyncio.Event()
        self._purge_task: asyncio.Task[None] | None = None

    async def prepare(self) -> None:
        """Tell the store who reports, before any outcome is recorded."""
        wants = {loop.name: loop.reporter.report_deferred for loop in self.loops}
        dropped = await self.service.store.set_reporters(wants)
        if dropped:
            log.warning("dropped %d reports that waited for reporters no longer enabled", dropped)

    def start(self) -> None:
        for loop in self.loops:
            loop.start()
        self._purge_task = asyncio.create_task(self._purge(), name="gmp-retention")
        if self.service.config.service.delivery_report_retention_seconds <= 0:
            log.info(
                "automatic retention purge off ([service] delivery_report_retention_seconds "
                "<= 0): reported messages stay until a cleanup-messages call"
            )

    def wake(self) -> None:
        """New reports may be waiting."""
        for loop in self.loops:
            loop.wake()

    def run_now(self) -> None:
        """Report at once, cutting short any wait or back-off."""
        for loop in self.loops:
            loop.run_now()

    async def stop(self) -> None:
        """Flush what is waiting (bounded by ``flush_timeout``), close the reporters."""
        self._stopping.set()
        timeout = self.service.config.reporting.flush_timeout
        await asyncio.gather(*(loop.stop(timeout) for loop in self.loops))
        if self._purge_task is not None:
            await asyncio.gather(self._purge_task, return_exceptions=True)

    @property
    def dead_tasks(self) -> list[str]:
        if self._stopping.is_set():
            return []
        tasks = [self._purge_task, *(loop.task for loop in self.loops)]
        return [task.get_name() for task in tasks if task is not None and task.done()]

    def stuck_tasks(self, now: float) -> dict[str, float]:
        """Report loops whose heartbeat is older than a lease: name -> seconds since."""
        if self._stopping.is_set():
            return {}
        bound = self.service.config.reporting.lease_seconds
        stuck = {}
        for loop in self.loops:
            if loop.task is None or loop.task.done():
                continue  # not started, or dead: dead_tasks tells
            since = now - max(loop.heartbeat, self.service.started_at or now)
            if since > bound:
                stuck[loop.task.get_name()] = since
        return stuck

    def status(self) -> dict[str, dict[str, float | int | None]]:
        return {loop.name: loop.status() for loop in self.loops}

    async def _purge(self) -> None:
        interval = self.service.config.reporting.purge_interval
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
            if self._stopping.is_set():
                return
            try:
                removed = await self.service.purge_expired()
            except Exception:
                log.exception("retention purge failed; trying again later")
                continue
            if removed:
                log.info("retention purged %d reported messages", removed)


class ReportLoop:
    """Posts one reporter's reports: batch, acknowledge, back off, heartbeat."""

    def __init__(self, service: Service, name: str, reporter: Reporter) -> None:
        self.service = service
        self.name = name
        self.reporter = reporter
        self.settings = service.config.reporting
        self.holder = service.dispatcher.worker  # this process, as its claims name it
        self.leading = False  # holds the reporter's lease: posts for every process
        self.task: asyncio.Task[None] | None = None
        self.heartbeat = 0.0  # when the loop last turned (for /status)
        self.failures = 0  # failed posts in a row
        self.last_acknowledged: float | None = None
        self._last_post = time.monotonic()  # the heartbeat counts from start-up
        self._lease_confirmed = 0.0  # when the store last said the lease is ours (monotonic)
        self._wake = asyncio.Event()  # new reports may be waiting
        self._hurry = asyncio.Event()  # run-now or stop: cut any wait short
        self._stopping = False

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"gmp-reporter-{self.name}")

    def wake(self) -> None:
        self._wake.set()

    def run_now(self) -> None:
        self._wake.set()
        self._hurry.set()

    async def stop(self, timeout: float) -> None:
        self._stopping = True
        self.run_now()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, timeout)
            except TimeoutError:
                log.warning("reporter %r did not flush within %.0fs", self.name, timeout)
            except Exception:
                log.exception("reporter loop %r failed", self.name)
        try:
            await self.reporter.close()
        except Exception:
            log.exception("closing reporter %r failed", self.name)

    def status(self) -> dict[str, float | int | None]:
        return {
            "heartbeat": self.heartbeat,
            "leading": self.leading,
            "failures": self.failures,
            "last_acknowledged": self.last_acknowledged,
        }

    async def _run(self) -> None:
        while not self._stopping:
            self.heartbeat = time.time()
            if await self._lead():
                at_least, at_most = await self._turn()
            else:  # another process reports: look again in half a lease
                at_least, at_most = self.settings.lease_seconds / 2, self.settings.lease_seconds / 2
            await self._pause(at_least, at_most)
        if self.failures == 0 and await self._lead():
            await self._turn()  # the flush: what the last sends produced
        await self._resign()

    async def _lead(self) -> bool:
        """Take or renew this reporter's lease; True while this process holds it."""
        self.leading = await self._renew() is True
        return self.leading

    async def _renew(self) -> bool | None:
        """Take or renew the lease: True held, False another process has it, None the
        store did not answer."""
        try:
            held = await self.service.store.hold_lease(
                self._lease_name, self.holder, time.time(), self.settings.lease_seconds
            )
        except Exception:
            log.exception("taking the report lease of %r failed", self.name)
            return None
        if held:
            self._lease_confirmed = time.monotonic()
        return held

    async def _resign(self) -> None:
        """Give the lease back at shutdown, so that another process reports at once."""
        if self.leading:
            try:
                await self.service.store.release_lease(self._lease_name, self.holder)
            except Exception:
                log.exception("giving back the report lease of %r failed", self.name)
            self.leading = False

    @property
    def _lease_name(self) -> str:
        return f"reporter:{self.name}"

    async def _pause(self, at_least: float, at_most: float) -> None:
        """Wait ``at_least`` (cut short only by run-now or stop), then until new reports
        arrive, for at most ``at_most`` in all."""
        if at_least > 0 and not self._stopping:
            await self._wait(self._hurry, at_least)
        self._hurry.clear()
        if at_most > at_least and not self._stopping:
            await self._wait(self._wake, at_most - at_least)

    async def _wait(self, event: asyncio.Event, timeout: float) -> None:
        """Until ``event`` is set, for at most ``timeout``, beating every third of a lease;
        the lease holder renews its lease as often, so that no other process posts during
        its pause."""
        deadline = time.monotonic() + timeout
        beat = self.settings.lease_seconds / 3
        while not event.is_set() and (left := deadline - time.monotonic()) > 0:
            await _wait_for(event, min(left, beat))
            self.heartbeat = time.time()
            if self.leading and not event.is_set() and deadline > time.monotonic():
                await self._lead()

    async def _turn(self) -> tuple[float, float]:
        """One exchange, if there is anything to say; returns the pause before the next."""
        settings = self.settings
        self._wake.clear()  # before reading: a wake from now on means newer reports
        try:
            reports = await self.service.store.pending_reports(self.name, settings.batch_size)
        except Exception:
            log.exception("reading the reports of %r failed", self.name)
            return self._back_off()
        if not reports and not self._heartbeat_due():
            return 0.0, self._idle_wait()
        reply = await self._post(reports)
        if reply is None or not reply.acknowledged:
            return self._back_off()
        self.failures = 0
        if reports:
            try:
                ids = [report.event_id for report in reports]
                await self.service.store.acknowledge_reports(self.name, ids, time.time())
            except Exception:  # they will be posted again: clients deduplicate by id
                log.exception("marking %d reports of %r failed", len(reports), self.name)
                return self._back_off()
            self.last_acknowledged = time.time()
        more = reply.more_now or len(reports) >= settings.batch_size
        at_least, at_most = (0.0, 0.0) if more else (settings.interval, self._idle_wait())
        if reply.not_before is not None:
            asked = min(reply.not_before - time.time(), LONGEST_CLIENT_PAUSE)
            at_least = max(at_least, asked)
        return at_least, max(at_least, at_most)

    async def _post(self, reports: Sequence[DeliveryReport]) -> ReportReply | None:
        started = time.perf_counter()
        reply: ReportReply | None
        try:
            reply = await self._post_while_leading(reports)
        except Exception:
            log.exception("reporter %r failed on %d reports", self.name, len(reports))
            reply = None
        acknowledged = reply is not None and reply.acknowledged
        if acknowledged:
            self._last_post = time.monotonic()
        data = {
            "reporter": self.name,
            "count": len(reports),
            "duration": time.perf_counter() - started,
        }
        kind = "report_posted" if acknowledged else "report_failed"
        await self.service.notify_events([Event(kind, "", None, time.time(), data=data)])
        return reply

    async def _post_while_leading(self, reports: Sequence[DeliveryReport]) -> ReportReply | None:
        """The reporter's answer; None when it took longer than ``post_timeout``, or when
        the lease could not be kept meanwhile (the post is cancelled then). Beats and renews
        the lease every third of a lease while the post is under way."""
        settings = self.settings
        post = asyncio.ensure_future(self.reporter.report(reports))
        deadline = time.monotonic() + settings.post_timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                done, _ = await asyncio.wait({post}, timeout=min(left, settings.lease_seconds / 3))
                if done:
                    return post.result()
                self.heartbeat = time.time()
                if not await self._keep_lease_while_posting():
                    log.warning(
                        "reporter %r: the report lease could not be kept; post cancelled",
                        self.name,
                    )
                    return None
            log.warning(
                "reporter %r did not answer within %gs (post_timeout); post cancelled",
                self.name,
                settings.post_timeout,
            )
            return None
        finally:
            if not post.done():
                post.cancel()
                await asyncio.gather(post, return_exceptions=True)

    async def _keep_lease_while_posting(self) -> bool:
        """Renew the lease; False once another process may hold it: it said so, or the
        store has not confirmed it for two thirds of a lease (one renewal before it runs
        out)."""
        held = await self._renew()
        if held is None:  # the store did not answer: the lease is ours until it runs out
            since = time.monotonic() - self._lease_confirmed
            held = since < self.settings.lease_seconds * 2 / 3
        self.leading = held
        return held

    def _back_off(self) -> tuple[float, float]:
        self.failures += 1
        settings = self.settings
        delay = min(settings.retry_max, settings.retry_initial * 2 ** min(self.failures - 1, 20))
        delay *= random.uniform(0.5, 1.0)  # jitter: proxies that failed together retry apart
        return delay, delay

    def _heartbeat_due(self) -> bool:
        every = self.settings.heartbeat_seconds
        return every > 0 and time.monotonic() - self._last_post >= every

    def _idle_wait(self) -> float:
        wait = self.settings.poll_interval
        every = self.settings.heartbeat_seconds
        if every > 0:
            wait = min(wait, max(0.0, every - (time.monotonic() - self._last_post)))
        return wait


async def _wait_for(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
