"""The sandbox transport in a running service: what it captures is what SMTP would carry,
captures are bounded, purged, paged, scoped to the caller's accounts, and readable."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gmp_sandbox import SandboxTransport, purge_expired
from gmp_sandbox.capturing import CaptureWriter
from gmp_smtp import SmtpSettings, SmtpTransport
from gmp_sql import SqlStore

from gmp_core import (
    Attachment,
    Capture,
    CaptureStore,
    Config,
    ConfigError,
    OutgoingMessage,
    Service,
    Store,
    hookimpl,
)
from gmp_core.intake import parse_account, parse_message
from gmp_core.mime import build_mime
from gmp_core.testing import SmtpSink, fast_tables, merge
from tests.support import EventLog, ServiceFactory, account, message, wait_until
from tests.test_store import make_store

TOKEN = "sandbox-admin-token-0123"
SHOP = "sandbox-shop-token-0123"


@pytest.fixture
async def with_api(tmp_path: Path, events: EventLog) -> AsyncIterator[ServiceFactory]:
    """``await with_api(plugins=[...], **tables)``: a started service with the REST API on a
    free port (the test services of ``make_service`` have none), stopped at the end."""
    started: list[Service] = []

    async def start(plugins: list[object] | None = None, **tables: dict[str, Any]) -> Service:
        db = tables.pop("sql", {"url": str(tmp_path / "api.db")})
        base = merge(fast_tables(tmp_path), {"plugins": {"disable": []}, "rest": {"port": 0}})
        config = Config(merge(base, {"sql": db, **tables}), environ={})
        service = Service(config, plugins=[events, *(plugins or [])])
        await service.start()
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        await service.stop()


def url(service: Service) -> str:
    return str(service.state["rest"].url)


def rich_message(id: str, account_id: str) -> dict[str, Any]:
    """A message with everything that shapes the bytes: names that need encoding, an HTML
    alternative, attachments, Cc and Bcc, a header of the client's, a line that SMTP must
    dot-stuff and a line too long to stay as it is."""
    return message(
        id,
        account_id=account_id,
        **{
            "from": "Zoë Müller <zoe@example.com>",
            "to": ['"Doe, John" <john@example.com>', "success@example.org"],
            "cc": "Ann <ann@example.com>",
            "bcc": ["hidden@example.net"],
            "reply_to": "replies@example.com",
            "subject": "Prénom — 東京 " + "long " * 40,
            "body": "Hello,\n.a line starting with a dot\n..two\n" + "x" * 1200 + "\nbye\n",
            "html": "<p>Hello <b>world</b></p>",
            "headers": {"X-Campaign": "spring"},
            "message_id": "<fixed-id@example.com>",
            "attachments": [
                {
                    "filename": "résumé.pdf",
                    "storage_path": "base64:" + base64.b64encode(bytes(range(256))).decode(),
                },
                {"filename": "notes.txt", "storage_path": "base64:aGVsbG8K"},
            ],
        },
    )


def built_at_random(data: bytes) -> bytes:
    """The bytes with what each build of a message chooses afresh blanked out: the Date (the
    time it was built) and the multipart boundaries (random, so that no text can contain
    them). Two sends of the same message may differ in these and nothing else."""
    blanked, dates = re.subn(rb"\r\nDate: [^\r\n]+\r\n", b"\r\nDate: -\r\n", data)
    assert dates == 1
    boundaries = re.findall(rb'boundary="([^"]+)"', blanked)
    assert len(boundaries) == 2  # mixed, and alternative inside it
    for n, boundary in enumerate(boundaries):
        blanked = blanked.replace(boundary, b"boundary-%d" % n)
    return blanked


async def test_the_captured_bytes_are_those_smtp_carries(
    make_service: ServiceFactory,
    with_api: ServiceFactory,
    sink: SmtpSink,
    events: EventLog,
    tmp_path: Path,
) -> None:
    """The same message through the sandbox and through SMTP to a real server: the raw
    source served equals what the server received (but for what every build draws anew),
    and so does the envelope."""
    smtp = await make_service(sql={"url": str(tmp_path / "smtp.db")})
    await smtp.put_account(account(sink))
    assert (await smtp.add_messages([rich_message("m1", "acc")])).queued == 1
    [received] = await sink.wait_for(1)

    sandbox = await with_api(sql={"url": str(tmp_path / "sandbox.db")}, sandbox={"account": "acc"})
    assert (await sandbox.add_messages([rich_message("m1", "acc")])).queued == 1
    [sent] = [e for e in await events.wait("sent", "m1", count=2) if "sandbox" in e.detail]
    async with httpx.AsyncClient(base_url=url(sandbox)) as client:
        [listed] = (await client.get("/sandbox/messages")).json()["messages"]
        raw = await client.get(f"/sandbox/messages/{listed['id']}/raw")
    assert f"captured as sandbox message {listed['id']}" in sent.detail

    assert built_at_random(raw.content) == built_at_random(received.data)
    assert listed["envelope"] == {"from": received.mail_from, "to": received.rcpt_tos}
    assert received.rcpt_tos == [
        "john@example.com",
        "success@example.org",
        "ann@example.com",
        "hidden@example.net",
    ]
    assert b"hidden@example.net" not in raw.content  # Bcc: in the envelope only
    assert listed["size"] == len(raw.content)
    assert listed["subject"] == "Prénom — 東京 " + " ".join(["long"] * 40)


async def test_one_build_through_smtp_and_through_the_sandbox_is_the_same_bytes(
    sink: SmtpSink, sql_store: SqlStore
) -> None:
    """Built once by the core, then handed to the SMTP transport (to a real server) and to
    the sandbox: the server receives exactly what the sandbox keeps, byte for byte."""
    parsed = parse_message(
        {k: v for k, v in rich_message("m1", "acc").items() if k != "attachments"},
        default_priority=2,
        default_account=None,
    )
    built = OutgoingMessage(parsed, attempt=1)
    built.data = build_mime(built, [(Attachment("a.bin", "base64:x"), bytes(range(256)) * 8)])
    smtp = SmtpTransport(SmtpSettings())
    sandbox = SandboxTransport(CaptureWriter(sql_store, keep=10), slow_seconds=0)
    try:
        assert (await smtp.send(built, parse_account(account(sink)))).accepted
        result = await sandbox.send(built, parse_account({"id": "acc", "transport": "sandbox"}))
    finally:
        await smtp.close()
        await sandbox.close()
    [received] = sink.mails
    kept = await sql_store.get_capture(int(result.detail.rsplit(" ", 1)[1]))
    assert kept is not None
    assert kept.data == received.data == built.data
    assert (kept.mail_from, kept.rcpt_to) == (received.mail_from, received.rcpt_tos)


async def test_details_show_headers_texts_and_attachments(
    with_api: ServiceFactory, events: EventLog
) -> None:
    service = await with_api(sandbox={"account": "sb"})
    await service.add_messages([rich_message("m1", "sb")])
    await events.wait("sent", "m1")
    async with httpx.AsyncClient(base_url=url(service)) as client:
        [listed] = (await client.get("/sandbox/messages")).json()["messages"]
        answer = (await client.get(f"/sandbox/messages/{listed['id']}")).json()
    assert answer["ok"] is True
    detail = answer["message"]
    assert {k: detail[k] for k in listed} == listed  # the listing's fields, and more
    headers = {h["name"]: h["value"] for h in detail["headers"]}
    assert headers["From"] == "Zoë Müller <zoe@example.com>"
    assert headers["To"] == '"Doe, John" <john@example.com>, success@example.org'
    assert headers["X-Campaign"] == "spring"
    assert headers["X-GMP-ID"] == "m1"
    assert "Bcc" not in headers
    assert [(t["content_type"], t["text"]) for t in detail["text"]] == [
        ("text/plain", "Hello,\n.a line starting with a dot\n..two\n" + "x" * 1200 + "\nbye\n"),
        ("text/html", "<p>Hello <b>world</b></p>"),
    ]
    assert detail["attachments"] == [
        {"filename": "résumé.pdf", "content_type": "application/pdf", "size": 256},
        {"filename": "notes.txt", "content_type": "text/plain", "size": 6},
    ]


class OwnBytes:
    """A plugin that builds the bytes itself (as a signing plugin might), oddly."""

    __name__ = "own-bytes"
    DATA = (
        b"Subject: =?x-unknown?q?abc?=\r\nContent-Type: text/plain; charset=x-unknown\r\n"
        b"\r\nbody \xff\r\n"
    )

    @hookimpl
    def gmp_prepare_message(self, message: OutgoingMessage) -> None:
        message.data = self.DATA


async def test_bytes_a_plugin_built_are_kept_and_read_as_well_as_they_can_be(
    with_api: ServiceFactory, events: EventLog
) -> None:
    service = await with_api(plugins=[OwnBytes()], sandbox={"account": "sb"})
    await service.add_messages([message("m1", account_id="sb")])
    await events.wait("sent", "m1")
    async with httpx.AsyncClient(base_url=url(service)) as client:
        [listed] = (await client.get("/sandbox/messages")).json()["messages"]
        assert (listed["subject"], listed["date"]) == ("=?x-unknown?q?abc?=", "")
        raw = await client.get(f"/sandbox/messages/{listed['id']}/raw")
        assert raw.content == OwnBytes.DATA
        detail = (await client.get(f"/sandbox/messages/{listed['id']}")).json()["message"]
    assert detail["text"] == [{"content_type": "text/plain", "text": "body \ufffd\n"}]


async def test_a_message_partly_refused_is_sent_to_the_others_and_captured_for_them(
    make_service: ServiceFactory, events: EventLog
) -> None:
    service = await make_service(sandbox={"account": "sb"})
    await service.add_messages(
        [
            message(
                "m1",
                account_id="sb",
                to=["success@example.com", "Bounce+Tag@Example.COM"],
                cc=["defer+1@example.com"],
            )
        ]
    )
    [sent] = await events.wait("sent", "m1")
    assert sent.data["refused"] == {
        "Bounce+Tag@Example.COM": "550 5.1.1 User unknown (simulated by the sandbox)",
        "defer+1@example.com": (
            "451 4.3.0 Try again later (simulated by the sandbox: accepted on the next attempt)"
        ),
    }
    assert isinstance(service.store, CaptureStore)
    [captured], _ = await service.store.list_captures(limit=10)
    assert captured.rcpt_to == ["success@example.com"]


async def test_only_the_newest_captures_are_kept(
    make_service: ServiceFactory, events: EventLog
) -> None:
    service = await make_service(sandbox={"account": "sb", "max_messages": 3})
    for i in range(5):  # one after the other: the order of capture is known
        await service.add_messages([message(f"m{i}", account_id="sb")])
        await events.wait("sent", f"m{i}")
    assert isinstance(service.store, CaptureStore)
    kept, _ = await service.store.list_captures(limit=10)
    assert [c.gmp_id for c in kept] == ["m4", "m3", "m2"]


async def test_retention_purges_old_captures(make_service: ServiceFactory) -> None:
    service = await make_service(sandbox={"retention_seconds": 3600})
    store = service.store
    assert isinstance(store, CaptureStore)
    now = time.time()
    await store.add_captures(
        [capture("old", captured_at=now - 3601), capture("recent", captured_at=now - 3599)], 100
    )
    assert await purge_expired(service, now) == 1
    assert [c.gmp_id for c in (await store.list_captures(limit=10))[0]] == ["recent"]


async def test_retention_follows_the_core_by_default_and_runs_on_its_own(
    make_service: ServiceFactory, events: EventLog
) -> None:
    service = await make_service(
        service={"delivery_report_retention_seconds": 1},
        reporting={"purge_interval": 0.05},
        sandbox={"account": "sb"},
    )
    await service.add_messages([message("m1", account_id="sb")])
    await events.wait("sent", "m1")
    store = service.store
    assert isinstance(store, CaptureStore)

    async def purged() -> bool:
        return not (await store.list_captures(limit=10))[0]

    await wait_until(purged)


@pytest.mark.parametrize("core_retention", [0, -1])
async def test_following_a_core_retention_of_zero_or_less_keeps_every_capture(
    make_service: ServiceFactory, core_retention: int
) -> None:
    """As the core's automatic purge is off then, so is ours (max_messages still bounds)."""
    service = await make_service(service={"delivery_report_retention_seconds": core_retention})
    store = service.store
    assert isinstance(store, CaptureStore)
    now = time.time()
    await store.add_captures([capture("old", captured_at=now - 10 * 86400)], 100)
    assert await purge_expired(service, now) == 0
    assert [c.gmp_id for c in (await store.list_captures(limit=10))[0]] == ["old"]


async def test_a_retention_of_its_own_applies_whatever_the_core_s(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(
        service={"delivery_report_retention_seconds": 0}, sandbox={"retention_seconds": 0}
    )
    store = service.store
    assert isinstance(store, CaptureStore)
    now = time.time()
    await store.add_captures([capture("old", captured_at=now - 1)], 100)
    assert await purge_expired(service, now) == 1


def capture(gmp_id: str, **fields: Any) -> Capture:
    values: dict[str, Any] = {
        "id": 0,
        "account_id": "sb",
        "gmp_id": gmp_id,
        "mail_from": "a@example.com",
        "rcpt_to": ["b@example.com"],
        "subject": gmp_id,
        "date": "",
        "size": 3,
        "captured_at": time.time(),
        "data": b"x\r\n",
    }
    values.update(fields)
    return Capture(**values)


# ---------------------------------------------------------------------------- the API


@pytest.fixture
async def api(with_api: ServiceFactory, events: EventLog) -> Service:
    """A service with the REST API, an admin token and one limited to account ``shop``;
    accounts ``sandbox`` (from the configuration) and ``shop``, each with captures."""
    service = await with_api(
        token_auth={"api_token": TOKEN, "account_tokens": [{"token": SHOP, "accounts": ["shop"]}]},
        sandbox={"account": "sandbox"},
    )
    await service.put_account({"id": "shop", "transport": "sandbox"})
    batch = [message(f"s{i}", account_id="shop") for i in range(3)]
    batch += [message(f"x{i}", account_id="sandbox") for i in range(2)]
    await service.add_messages(batch)
    await events.wait("sent", count=5)
    return service


@pytest.fixture
async def admin(api: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url(api), headers={"X-API-Token": TOKEN}) as client:
        yield client


@pytest.fixture
async def shop(api: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url(api), headers={"X-API-Token": SHOP}) as client:
        yield client


async def listing(client: httpx.AsyncClient, **query: Any) -> list[str]:
    answer = await client.get("/sandbox/messages", params=query)
    assert answer.status_code == 200, answer.text
    return sorted(m["gmp_id"] for m in answer.json()["messages"])


async def test_a_caller_limited_to_some_accounts_sees_and_deletes_only_theirs(
    admin: httpx.AsyncClient, shop: httpx.AsyncClient
) -> None:
    assert await listing(admin) == ["s0", "s1", "s2", "x0", "x1"]
    assert await listing(shop) == ["s0", "s1", "s2"]
    assert await listing(shop, account_id="shop") == ["s0", "s1", "s2"]
    assert await listing(shop, gmp_id="x0") == []
    refused = await shop.get("/sandbox/messages", params={"account_id": "sandbox"})
    assert refused.status_code == 403
    assert refused.json() == {"ok": False, "error": "account_id: not allowed for this caller"}

    others = (await admin.get("/sandbox/messages", params={"account_id": "sandbox"})).json()
    other_id = others["messages"][0]["id"]
    for path in (f"/sandbox/messages/{other_id}", f"/sandbox/messages/{other_id}/raw"):
        hidden = await shop.get(path)
        assert hidden.status_code == 404
        assert hidden.json() == {"ok": False, "error": "captured message not found"}
        assert (await admin.get(path)).status_code == 200

    forbidden = await shop.delete("/sandbox/messages", params={"account_id": "sandbox"})
    assert forbidden.status_code == 403
    removed = await shop.delete("/sandbox/messages")
    assert removed.json() == {"ok": True, "removed": 3}
    assert await listing(admin) == ["x0", "x1"]
    # What acts on the whole proxy stays refused to it.
    assert (await shop.get("/status")).status_code == 403


async def test_the_admin_deletes_by_account_or_everything(admin: httpx.AsyncClient) -> None:
    assert (await admin.delete("/sandbox/messages?account_id=shop")).json()["removed"] == 3
    assert await listing(admin) == ["x0", "x1"]
    assert (await admin.delete("/sandbox/messages")).json() == {"ok": True, "removed": 2}
    assert await listing(admin) == []


async def test_listing_is_paged_newest_first(admin: httpx.AsyncClient) -> None:
    first = (await admin.get("/sandbox/messages", params={"limit": 2})).json()
    assert len(first["messages"]) == 2 and first["next_cursor"] == first["messages"][-1]["id"]
    ids = [m["id"] for m in first["messages"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = (await admin.get("/sandbox/messages", params={"limit": 2, "cursor": cursor})).json()
        ids += [m["id"] for m in page["messages"]]
        cursor = page["next_cursor"]
    assert len(ids) == 5 and ids == sorted(ids, reverse=True)
    [one] = (await admin.get("/sandbox/messages", params={"gmp_id": "s1"})).json()["messages"]
    assert (one["account_id"], one["gmp_id"]) == ("shop", "s1")


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        (
            "/sandbox/messages?limit=0",
            422,
            "invalid limit: Input should be greater than or equal to 1",
        ),
        (
            "/sandbox/messages?limit=5000",
            422,
            "invalid limit: Input should be less than or equal to 1000",
        ),
        (
            "/sandbox/messages?cursor=abc",
            422,
            "invalid cursor: Input should be a valid integer, unable to parse string as an integer",
        ),
        ("/sandbox/messages/abc", 404, "captured message not found"),
        ("/sandbox/messages/99999999999999999999", 404, "captured message not found"),
        ("/sandbox/messages/12345", 404, "captured message not found"),
        ("/sandbox/messages/1/raw/more", 404, "not found"),
    ],
)
async def test_bad_requests_are_answered_clearly(
    admin: httpx.AsyncClient, path: str, status: int, error: str
) -> None:
    answer = await admin.get(path)
    assert (answer.status_code, answer.json()) == (status, {"ok": False, "error": error})


# ---------------------------------------------------------------------------- start-up


async def test_the_configured_account_is_created_once_and_then_left_alone(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(sandbox={"account": "try-me"})
    [created] = await service.list_accounts()
    assert (created.id, created.transport, created.host) == ("try-me", "sandbox", "")
    await service.put_account({"id": "try-me", "transport": "sandbox", "limit_per_minute": 5})
    await service.stop()
    restarted = await make_service(sandbox={"account": "try-me"})
    [kept] = await restarted.list_accounts()
    assert kept.limit_per_minute == 5


async def test_a_configured_account_that_cannot_be_the_sandbox_stops_start_up(
    make_service: ServiceFactory, sink: SmtpSink
) -> None:
    service = await make_service()
    await service.put_account(account(sink, id="main"))
    await service.stop()
    with pytest.raises(
        ConfigError,
        match=r"^\[sandbox\] account: account 'main' exists and delivers through 'smtp'",
    ):
        await make_service(sandbox={"account": "main"})
    with pytest.raises(ConfigError, match=r"^\[sandbox\] account: invalid id"):
        await make_service(sandbox={"account": "two\nlines"})


class PlainStore:
    """A store of another plugin, one that keeps no captured mail: the bundled one, with the
    capture methods out of reach."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name in {
            "add_captures",
            "list_captures",
            "get_capture",
            "delete_captures",
            "purge_captures",
        }:
            raise AttributeError(name)
        return getattr(self.inner, name)


class PlainStorePlugin:
    __name__ = "plain-store"

    @hookimpl(tryfirst=True)
    def gmp_make_store(self, config: Config) -> PlainStore:
        return PlainStore(make_store(config.section("sql").url))


async def test_a_store_that_cannot_keep_captures_stops_start_up_saying_so(
    make_service: ServiceFactory, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"the configured store \(PlainStore\) cannot") as raised:
        await make_service(plugins=[PlainStorePlugin()])
    assert 'disable = ["sandbox"]' in str(raised.value)
    service = Service(
        Config(
            {
                "sql": {"url": str(tmp_path / "plain.db")},
                "plugins": {"disable": ["rest", "sandbox"]},
            },
            environ={},
        ),
        plugins=[PlainStorePlugin()],
    )
    await service.start()
    assert "sandbox" not in service.transports and "smtp" in service.transports
    await service.stop()


# ---------------------------------------------------------------------------- the parts


def outgoing(id: str, to: list[str], attempt: int = 1) -> OutgoingMessage:
    parsed = parse_message(message(id, to=to), default_priority=2, default_account=None)
    return OutgoingMessage(parsed, attempt=attempt, data=b"Subject: x\r\n\r\nbody\r\n")


@pytest.fixture
async def sql_store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    store = make_store(str(tmp_path / "parts.db"))
    assert isinstance(store, SqlStore)
    await store.open()
    yield store
    await store.close()


class CountingCaptures:
    """The real store, with a count of its capture writes."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.writes: list[int] = []

    async def add_captures(self, captures: list[Capture], keep: int) -> list[int]:
        self.writes.append(len(captures))
        return await self.store.add_captures(captures, keep)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_concurrent_sends_are_captured_in_one_write(sql_store: SqlStore) -> None:
    counting = CountingCaptures(sql_store)
    writer = CaptureWriter(counting, keep=100)  # type: ignore[arg-type]
    transport = SandboxTransport(writer, slow_seconds=0)
    acc = parse_account({"id": "acc", "transport": "sandbox"})
    results = await asyncio.gather(
        *(transport.send(outgoing(f"m{i}", ["a@example.com"]), acc) for i in range(50))
    )
    assert all(r.accepted for r in results)
    assert counting.writes == [50]
    ids = [int(r.detail.rsplit(" ", 1)[1]) for r in results]
    assert sorted(ids) == ids and len(set(ids)) == 50  # each its own capture, in order
    await transport.close()


async def test_a_capture_that_cannot_be_stored_is_a_temporary_failure(
    tmp_path: Path,
) -> None:
    store = make_store(str(tmp_path / "closed.db"))
    assert isinstance(store, SqlStore)
    await store.open()
    await store.close()  # the database is gone from under the sandbox
    transport = SandboxTransport(CaptureWriter(store, keep=10), slow_seconds=0)
    acc = parse_account({"id": "acc", "transport": "sandbox"})
    result = await transport.send(outgoing("m1", ["a@example.com"]), acc)
    assert (result.accepted, result.temporary, result.code) == (False, True, 451)
    assert result.detail.startswith("4.3.0 the sandbox could not keep the message")


@pytest.mark.parametrize(
    ("to", "attempt", "accepted", "temporary", "code"),
    [
        (["success@example.com"], 1, True, False, 250),
        (["BOUNCE@example.com"], 1, False, False, 550),
        (["bounce@example.com"], 2, False, False, 550),  # a bounce never turns into success
        (["defer@example.com"], 1, False, True, 451),
        (["defer+x@example.com"], 2, True, False, 250),
        (["defer@example.com", "bounce@example.com"], 1, False, True, 451),
        (["success-not@example.com"], 1, True, False, 250),
    ],
)
async def test_outcomes_by_local_part_and_attempt(
    sql_store: SqlStore,
    to: list[str],
    attempt: int,
    accepted: bool,
    temporary: bool,
    code: int,
) -> None:
    transport = SandboxTransport(CaptureWriter(sql_store, keep=10), slow_seconds=0)
    acc = parse_account({"id": "acc", "transport": "sandbox"})
    result = await transport.send(outgoing("m1", to, attempt), acc)
    assert (result.accepted, result.temporary, result.code) == (accepted, temporary, code)
    await transport.close()
