"""Prometheus metrics, scraped over HTTP from a real service while real mail flows."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gmp_core import Config, Service
from gmp_core.testing import SmtpSink
from tests.receiver import ReportReceiver
from tests.rest.rest_support import MemoryVolumes
from tests.support import EventLog, account, base_tables, merge, message

TOKEN = "metrics-test-token"
Start = Callable[..., Awaitable[Service]]


class Scrape:
    """One scrape of /metrics: ``scrape("gmp_sent_total", account_id="acc")`` is a value;
    a series that is not there raises KeyError."""

    def __init__(self, text: str) -> None:
        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]


@pytest.fixture
async def start(tmp_path: Path, events: EventLog) -> AsyncIterator[Start]:
    """``await start(metrics={...})``: a service with the REST API and metrics on."""
    started: list[Service] = []

    async def factory(*plugins: object, **tables: dict[str, Any]) -> Service:
        base = merge(
            base_tables(tmp_path),
            {
                "plugins": {"disable": []},
                "rest": {"port": 0},
                "token_auth": {"api_token": TOKEN},
                "sql": {"url": str(tmp_path / f"gmp{len(started)}.db")},
            },
        )
        service = Service(Config(merge(base, tables), environ={}), plugins=[events, *plugins])
        await service.start()
        started.append(service)
        return service

    yield factory
    for service in reversed(started):
        await service.stop()


def client(service: Service, token: str | None = TOKEN) -> httpx.AsyncClient:
    headers = {"X-API-Token": token} if token else {}
    return httpx.AsyncClient(base_url=service.state["rest"].url, headers=headers)


async def scrape(http: httpx.AsyncClient) -> Scrape:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.text)


async def test_every_series_exists_from_start_up_at_zero(start: Start, sink: SmtpSink) -> None:
    service = await start()
    await service.put_account(account(sink))
    async with client(service, token=None) as anonymous:  # public by default
        values = await scrape(anonymous)
    for name in (
        "gmp_sent_total",
        "gmp_errors_total",
        "gmp_deferred_total",
        "gmp_rate_limited_total",
        "gmp_queued_total",
        "gmp_pool_connections",
        "gmp_pool_connections_in_use",
        "gmp_send_duration_seconds_count",
    ):
        assert values(name, account_id="acc") == 0, name
    assert values("gmp_smtp_replies_total", account_id="acc", **{"class": "5xx"}) == 0
    assert values("gmp_pending_messages") == 0
    assert values("gmp_queue_messages", state="queued", priority="0") == 0
    assert values("gmp_oldest_due_message_age_seconds") == 0
    assert values("gmp_enqueue_duration_seconds_count") == 0
    assert values("gmp_attachment_fetched_bytes_total") == 0
    assert values("gmp_pool_connections_max", account_id="acc") == 4
    assert values("gmp_active") == 1 and values("gmp_healthy") == 1
    assert values("gmp_store_up") == 1
    assert values("process_resident_memory_bytes") > 0


async def test_values_move_as_messages_flow(start: Start, sink: SmtpSink, events: EventLog) -> None:
    service = await start()
    async with client(service) as http:
        assert (await http.post("/account", json=account(sink))).status_code == 200
        assert (await http.post("/commands/suspend")).status_code == 200
        batch = [message(f"m{i}") for i in range(3)] + [{"id": "bad", "from": "x"}]
        answer = (await http.post("/commands/add-messages", json={"messages": batch})).json()
        assert answer["queued"] == 3

        held = await scrape(http)
        assert held("gmp_pending_messages") == 3
        assert held("gmp_queue_messages", state="queued", priority="2") == 3
        assert held("gmp_queued_total", account_id="acc") == 3
        assert held("gmp_rejected_total") == 1
        assert held("gmp_enqueue_duration_seconds_count") == 1
        assert held("gmp_oldest_due_message_age_seconds") >= 0
        assert held("gmp_active") == 0

        await http.post("/commands/activate")
        await events.wait("sent", count=3)
        flowed = await scrape(http)
        assert flowed("gmp_sent_total", account_id="acc") == 3
        assert flowed("gmp_pending_messages") == 0
        assert flowed("gmp_queue_messages", state="queued", priority="2") == 0
        assert flowed("gmp_send_duration_seconds_count", account_id="acc") == 3
        assert flowed("gmp_smtp_replies_total", account_id="acc", **{"class": "2xx"}) == 3
        # the pool keeps its connection for the next message
        assert flowed("gmp_pool_connections", account_id="acc") >= 1
        assert flowed("gmp_pool_connections_in_use", account_id="acc") == 0


async def test_errors_deferrals_and_rate_limits_are_counted(
    start: Start, sink: SmtpSink, events: EventLog
) -> None:
    service = await start()
    await service.put_account(account(sink))
    await service.put_account(account(sink, id="limited", limit_per_minute=1))
    sink.rcpt_replies["unknown@example.com"] = "550 5.1.1 User unknown"
    replies = iter(["451 4.3.0 Try again later"])
    sink.data_reply = lambda envelope: next(replies, None)

    await service.add_messages([message("temp")])
    await events.wait("sent", "temp")
    await service.add_messages([message("perm", to=["unknown@example.com"])])
    await events.wait("error", "perm")
    await service.add_messages([message(f"l{i}", account_id="limited") for i in range(2)])
    await events.wait("deferred", count=2)  # the retry of "temp", then the rate limit
    await events.wait("sent", count=2)  # "temp", and the one the limit lets through

    async with client(service) as http:
        values = await scrape(http)
    assert values("gmp_deferred_total", account_id="acc") == 1
    assert values("gmp_smtp_replies_total", account_id="acc", **{"class": "4xx"}) == 1
    assert values("gmp_sent_total", account_id="acc") == 1
    assert values("gmp_errors_total", account_id="acc") == 1
    assert values("gmp_smtp_replies_total", account_id="acc", **{"class": "5xx"}) == 1
    assert values("gmp_rate_limited_total", account_id="acc") == 0
    assert values("gmp_rate_limited_total", account_id="limited") == 1
    assert values("gmp_deferred_total", account_id="limited") == 1
    assert values("gmp_pending_messages") == 1  # the rate-limited one waits its minute
    assert values("gmp_queue_messages", state="scheduled", priority="2") == 1
    # a wait for a rate limit is not a delivery attempt
    assert values("gmp_send_duration_seconds_count", account_id="limited") == 1


async def test_rate_limit_rejections_count_as_errors_and_rate_limited(
    start: Start, sink: SmtpSink, events: EventLog
) -> None:
    service = await start()
    await service.put_account(account(sink, limit_per_minute=1, limit_behavior="reject"))
    await service.add_messages([message("m0"), message("m1")])
    await events.wait("error")
    async with client(service) as http:
        values = await scrape(http)
    assert values("gmp_errors_total", account_id="acc") == 1
    assert values("gmp_rate_limited_total", account_id="acc") == 1


async def test_attachments_are_timed_and_counted(
    start: Start, sink: SmtpSink, events: EventLog
) -> None:
    service = await start(MemoryVolumes())  # "mem:<text>" reads as <text>
    await service.put_account(account(sink))
    attachment = {"filename": "a.txt", "storage_path": "mem:twelve bytes"}
    await service.add_messages([message("m1", attachments=[attachment])])
    await events.wait("sent", "m1")
    async with client(service) as http:
        values = await scrape(http)
    assert values("gmp_attachment_fetch_duration_seconds_count") == 1
    assert values("gmp_attachment_fetched_bytes_total") == len("twelve bytes")


async def test_report_round_trips_failures_and_backlog(
    start: Start, sink: SmtpSink, events: EventLog
) -> None:
    receiver = await ReportReceiver().start()
    receiver.mode = "error"  # the client application answers 500 for now
    try:
        service = await start(
            proxy_sync={"url": receiver.url},
            reporting={"interval": 0, "retry_initial": 0.02, "retry_max": 0.05},
        )
        await service.put_account(account(sink))
        async with client(service) as http:
            before = await scrape(http)
            assert before("gmp_report_failures_total", reporter="proxy_sync") == 0
            assert before("gmp_report_oldest_pending_age_seconds", reporter="proxy_sync") == 0
            started = before("gmp_report_last_success_timestamp_seconds", reporter="proxy_sync")
            assert started > 0  # start-up time, not 1970: no false "report lag" alert

            await service.add_messages([message("m1")])
            await events.wait("report_failed")
            failing = await scrape(http)
            assert failing("gmp_report_failures_total", reporter="proxy_sync") >= 1
            assert failing("gmp_report_oldest_pending_age_seconds", reporter="proxy_sync") > 0
            assert failing("gmp_reported_total", reporter="proxy_sync") == 0

            receiver.mode = "ok"
            service.run_now()
            await events.wait("report_posted")
            healed = await scrape(http)
            assert healed("gmp_reported_total", reporter="proxy_sync") == 1
            assert healed("gmp_report_oldest_pending_age_seconds", reporter="proxy_sync") == 0
            assert healed("gmp_report_last_success_timestamp_seconds", reporter="proxy_sync") > (
                started
            )
            round_trips = healed("gmp_report_duration_seconds_count", reporter="proxy_sync")
            assert round_trips == healed("gmp_report_failures_total", reporter="proxy_sync") + 1
    finally:
        await receiver.stop()


async def test_metrics_need_the_token_when_not_public(start: Start) -> None:
    service = await start(metrics={"public": False})
    async with client(service, token=None) as anonymous:
        response = await anonymous.get("/metrics")
        assert response.status_code == 401
        assert response.json()["error"] == "Invalid or missing API token"
    async with client(service) as http:
        assert "gmp_pending_messages" in (await http.get("/metrics")).text
        schema = (await http.get("/openapi.json")).json()
        assert "401" in schema["paths"]["/metrics"]["get"]["responses"]


async def test_each_service_has_its_own_registry(
    start: Start, sink: SmtpSink, events: EventLog
) -> None:
    first, second = await start(), await start()
    for service in (first, second):
        await service.put_account(account(sink))
    await first.add_messages([message("m1")])
    await events.wait("sent", "m1")
    async with client(first) as one, client(second) as two:
        assert (await scrape(one))("gmp_sent_total", account_id="acc") == 1
        assert (await scrape(two))("gmp_sent_total", account_id="acc") == 0


async def test_ready_and_metrics_while_the_store_does_not_answer(start: Start) -> None:
    service = await start(rest={"ready_timeout": 0.2}, metrics={"store_timeout": 0.2})
    async with client(service, token=None) as anonymous:
        assert (await anonymous.get("/ready")).json() == {"ok": True, "status": "ok"}
        # The store's database thread is stuck (a lock held elsewhere, a dead disk...).
        release = threading.Event()
        stuck = asyncio.ensure_future(service.store.runner.run(release.wait))
        try:
            response = await anonymous.get("/ready")
            assert response.status_code == 503
            assert response.json() == {
                "ok": False,
                "error": "store unreachable (TimeoutError)",
                "status": "error",
            }
            assert (await anonymous.get("/health")).status_code == 200  # alive all the same
            stale = await scrape(anonymous)  # answers, with what it knows
            assert stale("gmp_store_up") == 0 and stale("gmp_healthy") == 1
        finally:
            release.set()
            await stuck
        assert (await anonymous.get("/ready")).status_code == 200
        assert (await scrape(anonymous))("gmp_store_up") == 1


ACCOUNT_TOKEN = "account-token-of-shop-only"


@pytest.mark.parametrize("public", [True, False])
async def test_who_reads_the_metrics_is_what_the_docs_say(
    start: Start, sink: SmtpSink, events: EventLog, public: bool
) -> None:
    """docs/api.md, docs/monitoring.md: public (the default), anyone who reaches the port
    reads every account's counters, an account token's holder too; not public, the API token
    reads them and an account token gets 403. Either way they are counts and timings labelled
    with account ids: no message id, address, subject or host."""
    tokens = {
        "api_token": TOKEN,
        "account_tokens": [{"token": ACCOUNT_TOKEN, "accounts": ["shop"]}],
    }
    service = await start(metrics={"public": public}, token_auth=tokens)
    await service.put_account(account(sink, "shop"))
    await service.put_account(account(sink, "other-account"))
    secret_looking = message(
        "id-4711",
        account_id="other-account",
        to=["Ada Recipient <ada.recipient@example.org>"],
        subject="subject-words-0815",
    )
    await service.add_messages([secret_looking])
    await events.wait("sent", "id-4711")

    async with client(service, token=None) as anonymous, client(service, ACCOUNT_TOKEN) as shop:
        if public:
            for reader in (anonymous, shop):
                seen = await scrape(reader)
                assert seen("gmp_sent_total", account_id="other-account") == 1
            text = (await anonymous.get("/metrics")).text
            for never in ("id-4711", "ada.recipient", "subject-words", "127.0.0.1"):
                assert never not in text
        else:
            assert (await anonymous.get("/metrics")).status_code == 401
            refused = await shop.get("/metrics")
            assert refused.status_code == 403
            assert refused.json()["error"].startswith("this caller may act only on its own")
            async with client(service) as admin:
                assert (await scrape(admin))("gmp_sent_total", account_id="other-account") == 1
