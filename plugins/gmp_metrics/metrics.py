"""The series and how events move them.

Cost per event is a dict lookup and an increment or two: ``gmp_event`` runs on the delivery
hot path. Anything that needs the store (queue depths) or other plugins (pool sizes) is read in
:meth:`Metrics.refresh`, once per scrape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from gmp_core import Event, Service, hookimpl

log = logging.getLogger("gmp.metrics")

UNSENT_STATES = ("queued", "scheduled", "sending")
PRIORITIES = (0, 1, 2, 3)
REPLY_CLASSES = ("2xx", "4xx", "5xx", "no_reply")

# SMTP sends can take tens of seconds; the library's default buckets stop at 10 s.
SEND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ENQUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
FETCH_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30)
REPORT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(slots=True)
class AccountSeries:
    """The per-account children of the labelled series."""

    sent: Counter
    errors: Counter
    deferred: Counter
    rate_limited: Counter
    queued: Counter
    send_duration: Histogram
    replies: dict[str, Counter]


class Metrics:
    """One service's registry. Registered with that service's plugin manager as an observer."""

    __name__ = "metrics-observer"

    def __init__(
        self, service: Service, *, process_metrics: bool = True, store_timeout: float = 5.0
    ) -> None:
        self.service = service
        self.store_timeout = store_timeout
        self.registry = registry = CollectorRegistry()
        if process_metrics:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ("account_id",)) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        # The original service's series, same names and label.
        self.sent = counter("gmp_sent_total", "Messages the server accepted")
        self.errors = counter("gmp_errors_total", "Messages that failed for good")
        self.deferred = counter(
            "gmp_deferred_total", "Deferrals: temporary failures to retry and rate-limit waits"
        )
        self.rate_limited = counter(
            "gmp_rate_limited_total", "Messages held back or refused by a rate limit"
        )
        self.pending = Gauge(
            "gmp_pending_messages",
            "Messages not sent yet (queued, scheduled, sending)",
            registry=registry,
        )
        # Intake.
        self.queued = counter("gmp_queued_total", "Messages accepted into the queue")
        self.rejected = Counter(
            "gmp_rejected_total", "Messages refused at intake", registry=registry
        )
        self.enqueue_duration = Histogram(
            "gmp_enqueue_duration_seconds",
            "Time to validate and store one add-messages batch",
            buckets=ENQUEUE_BUCKETS,
            registry=registry,
        )
        # Sending.
        self.send_duration = Histogram(
            "gmp_send_duration_seconds",
            "One delivery attempt, from start to the server's answer (attachments included)",
            ["account_id"],
            buckets=SEND_BUCKETS,
            registry=registry,
        )
        self.replies = counter(
            "gmp_smtp_replies_total",
            "Answers to delivery attempts by reply class (no_reply: connection or timeout)",
            ("account_id", "class"),
        )
        self.attachment_duration = Histogram(
            "gmp_attachment_fetch_duration_seconds",
            "Time to read the attachments of one message",
            buckets=FETCH_BUCKETS,
            registry=registry,
        )
        self.attachment_bytes = Counter(
            "gmp_attachment_fetched_bytes_total", "Attachment bytes read", registry=registry
        )
        # Queue, pools and loops: set on each scrape.
        self.queue = Gauge(
            "gmp_queue_messages",
            "Unsent messages by state and priority",
            ["state", "priority"],
            registry=registry,
        )
        self.oldest_due_age = Gauge(
            "gmp_oldest_due_message_age_seconds",
            "How long the longest-waiting due message has been due (0: none is due)",
            registry=registry,
        )
        self.pool_open = Gauge(
            "gmp_pool_connections",
            "Open connections per account",
            ["account_id"],
            registry=registry,
        )
        self.pool_in_use = Gauge(
            "gmp_pool_connections_in_use",
            "Connections carrying a message right now",
            ["account_id"],
            registry=registry,
        )
        self.pool_max = Gauge(
            "gmp_pool_connections_max",
            "Most connections an account may open (its max_connections)",
            ["account_id"],
            registry=registry,
        )
        self.active = Gauge(
            "gmp_active", "1 while sending is active, 0 while suspended", registry=registry
        )
        self.healthy = Gauge(
            "gmp_healthy", "1 while every background loop runs (as GET /health)", registry=registry
        )
        self.store_up = Gauge(
            "gmp_store_up",
            "1 when the store answered the last scrape's queries",
            registry=registry,
        )
        self.heartbeat = Gauge(
            "gmp_dispatcher_heartbeat_timestamp_seconds",
            "When the claim loop last went round (unix seconds)",
            registry=registry,
        )
        # Delivery reports (events the reporter loop emits).
        self.report_duration = Histogram(
            "gmp_report_duration_seconds",
            "Round trip of one report batch to a client",
            ["reporter"],
            buckets=REPORT_BUCKETS,
            registry=registry,
        )
        self.reported = counter(
            "gmp_reported_total", "Reports acknowledged by the client", ("reporter",)
        )
        self.report_failures = counter(
            "gmp_report_failures_total",
            "Report batches not acknowledged (error, refusal, timeout)",
            ("reporter",),
        )
        self.report_success = Gauge(
            "gmp_report_last_success_timestamp_seconds",
            "When a report batch (or heartbeat) was last acknowledged; start-up time until then",
            ["reporter"],
            registry=registry,
        )
        self.report_backlog_age = Gauge(
            "gmp_report_oldest_pending_age_seconds",
            "Age of the oldest report the client has not acknowledged (0: none waits)",
            ["reporter"],
            registry=registry,
        )
        self._accounts: dict[str, AccountSeries] = {}
        self._handlers: dict[str, Callable[[Event], None]] = {
            "queued": self._on_queued,
            "rejected": self._on_rejected,
            "enqueued": self._on_enqueued,
            "sent": self._on_sent,
            "deferred": self._on_deferred,
            "error": self._on_error,
            "attachments_fetched": self._on_attachments,
            "report_posted": self._on_report_posted,
            "report_failed": self._on_report_failed,
        }
        for priority in PRIORITIES:
            for state in UNSENT_STATES:
                self.queue.labels(state, str(priority))
        for name in service.reporters:
            self._declare_reporter(name)

    # ------------------------------------------------------------------ events

    @hookimpl
    def gmp_event(self, event: Event) -> None:
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(event)

    def _on_queued(self, event: Event) -> None:
        self._account(event.account_id).queued.inc()

    def _on_rejected(self, event: Event) -> None:
        self.rejected.inc()

    def _on_enqueued(self, event: Event) -> None:
        self.enqueue_duration.observe(event.data["duration"])

    def _on_sent(self, event: Event) -> None:
        series = self._account(event.account_id)
        series.sent.inc()
        self._attempted(series, event)

    def _on_deferred(self, event: Event) -> None:
        series = self._account(event.account_id)
        series.deferred.inc()
        if event.data.get("reason") == "rate_limit":
            series.rate_limited.inc()
        self._attempted(series, event)

    def _on_error(self, event: Event) -> None:
        series = self._account(event.account_id)
        series.errors.inc()
        if event.data.get("reason") == "rate_limit":
            series.rate_limited.inc()
        self._attempted(series, event)

    def _attempted(self, series: AccountSeries, event: Event) -> None:
        """Outcomes of a delivery attempt carry its duration; rate-limit waits do not."""
        duration = event.data.get("duration")
        if duration is None:
            return
        series.send_duration.observe(duration)
        series.replies[reply_class(event.code)].inc()

    def _on_attachments(self, event: Event) -> None:
        self.attachment_duration.observe(event.data["duration"])
        self.attachment_bytes.inc(event.data["bytes"])

    def _on_report_posted(self, event: Event) -> None:
        reporter = event.data["reporter"]
        self.report_duration.labels(reporter).observe(event.data["duration"])
        self.reported.labels(reporter).inc(event.data.get("count", 0))
        self.report_success.labels(reporter).set(event.ts)

    def _on_report_failed(self, event: Event) -> None:
        reporter = event.data["reporter"]
        if "duration" in event.data:
            self.report_duration.labels(reporter).observe(event.data["duration"])
        self.report_failures.labels(reporter).inc()

    # ------------------------------------------------------------------ scrape

    async def refresh(self) -> None:
        """Read what events do not carry: queue depths, accounts, pools, loop state."""
        service = self.service
        self.active.set(1 if service.active else 0)
        self.healthy.set(0 if service.health_problems() else 1)
        self.heartbeat.set(service.dispatcher.heartbeat)
        try:
            async with asyncio.timeout(self.store_timeout):
                await self._read_store()
        except Exception as exc:  # the scrape still answers, with the counters
            log.warning("metrics: the store did not answer (%s)", type(exc).__name__)
            self.store_up.set(0)
        else:
            self.store_up.set(1)
        self._read_pools()

    async def _read_store(self) -> None:
        service = self.service
        now = time.time()
        depth = await service.store.queue_depth(now)
        for priority in PRIORITIES:
            for state in UNSENT_STATES:
                count = depth.counts.get((state, priority), 0)
                self.queue.labels(state, str(priority)).set(count)
        self.pending.set(sum(depth.counts.values()))
        oldest = depth.oldest_due
        self.oldest_due_age.set(max(0.0, now - oldest) if oldest is not None else 0.0)
        for reporter in service.reporters:
            waiting = await service.store.pending_reports(reporter, 1)
            age = max(0.0, now - waiting[0].ts) if waiting else 0.0
            self.report_backlog_age.labels(reporter).set(age)
        for account in await service.list_accounts():
            self._account(account.id)
            self.pool_max.labels(account.id).set(account.max_connections)

    def _read_pools(self) -> None:
        """Transports may offer ``pool_sizes() -> {account_id: (open, in_use)}``."""
        sizes: dict[str, tuple[int, int]] = {}
        for transport in self.service.transports.values():
            pool_sizes = getattr(transport, "pool_sizes", None)
            if callable(pool_sizes):
                sizes.update(pool_sizes())
        for account in self._accounts.keys() | sizes.keys():
            opened, in_use = sizes.get(account, (0, 0))
            self.pool_open.labels(account).set(opened)
            self.pool_in_use.labels(account).set(in_use)

    def _account(self, account: str | None) -> AccountSeries:
        """The account's series, created at 0 the first time (so rates and alerts work from
        the start) and kept: ``labels()`` takes a lock and builds a key on every call."""
        account = account or "unknown"
        series = self._accounts.get(account)
        if series is None:
            series = self._accounts[account] = AccountSeries(
                sent=self.sent.labels(account),
                errors=self.errors.labels(account),
                deferred=self.deferred.labels(account),
                rate_limited=self.rate_limited.labels(account),
                queued=self.queued.labels(account),
                send_duration=self.send_duration.labels(account),
                replies={reply: self.replies.labels(account, reply) for reply in REPLY_CLASSES},
            )
        return series

    def _declare_reporter(self, reporter: str) -> None:
        self.report_duration.labels(reporter)
        self.reported.labels(reporter)
        self.report_failures.labels(reporter)
        # Not 0 before the first acknowledgement: "no report for 56 years" would page someone.
        self.report_success.labels(reporter).set(time.time())
        self.report_backlog_age.labels(reporter)

    def exposition(self) -> tuple[bytes, int, dict[str, str]]:
        # The original service's content type: every Prometheus version reads it.
        return generate_latest(self.registry), 200, {"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}


def reply_class(code: int | None) -> str:
    if code is None or not 200 <= code < 600:
        return "no_reply"
    return f"{code // 100}xx"
