"""The REST API over real HTTP: auth, commands, messages, accounts, errors (SPEC §2)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from gmp_core import Principal, Service, hookimpl
from tests.rest.rest_support import TOKEN, ServiceFactory, account, base_url, message

# ---------------------------------------------------------------- auth and health


async def test_health_needs_no_token(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/health")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "status": "ok"}  # the original's body was status: ok


async def test_health_is_503_when_a_loop_died(suspended: httpx.AsyncClient) -> None:
    [claim_loop] = [t for t in asyncio.all_tasks() if t.get_name() == "gmp-claim-loop"]
    claim_loop.cancel()  # as if it had crashed
    await asyncio.wait({claim_loop})
    response = await suspended.get("/health", headers={"X-API-Token": ""})
    assert response.status_code == 503
    body = response.json()
    assert body["ok"] is False and "gmp-claim-loop" in body["error"]
    assert body["status"] == "error"


@pytest.mark.parametrize("headers", [{}, {"X-API-Token": "wrong"}, {"X-API-Token": ""}])
async def test_missing_or_wrong_token_is_401(
    anonymous: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for method, path in [
        ("GET", "/status"),
        ("POST", "/commands/add-messages"),
        ("GET", "/messages"),
        ("GET", "/accounts"),
        ("DELETE", "/account/acc"),
        ("GET", "/no-such-path"),
    ]:
        response = await anonymous.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json() == {"ok": False, "error": "Invalid or missing API token"}


async def test_right_token_is_accepted_in_any_case(anonymous: httpx.AsyncClient) -> None:
    for name in ("X-API-Token", "x-api-token"):
        response = await anonymous.get("/status", headers={name: TOKEN})
        assert response.status_code == 200


async def test_status(client: httpx.AsyncClient) -> None:
    body = (await client.get("/status")).json()
    assert body["ok"] is True and body["active"] is True
    assert set(body["queue"]) == {"queued", "scheduled", "sending", "sent", "error"}
    assert "dispatcher" in body["heartbeats"]


async def test_suspend_and_activate(client: httpx.AsyncClient) -> None:
    assert (await client.post("/commands/suspend")).json() == {"ok": True, "active": False}
    assert (await client.get("/status")).json()["active"] is False
    assert (await client.post("/commands/activate")).json() == {"ok": True, "active": True}
    assert (await client.get("/status")).json()["active"] is True


async def test_run_now(client: httpx.AsyncClient) -> None:
    assert (await client.post("/commands/run-now")).json() == {"ok": True}


async def test_openapi_lists_the_paths_without_a_token(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    assert {
        "/health",
        "/status",
        "/commands/add-messages",
        "/commands/run-now",
        "/commands/suspend",
        "/commands/activate",
        "/commands/delete-messages",
        "/commands/cleanup-messages",
        "/messages",
        "/messages/{message_id}",
        "/account",
        "/accounts",
        "/account/{account_id}",
    } <= set(spec["paths"])
    add = spec["paths"]["/commands/add-messages"]["post"]
    assert "MessageIn" in json.dumps(add["requestBody"])
    assert spec["paths"]["/health"]["get"]["security"] == []
    assert spec["components"]["securitySchemes"]["token"]["name"] == "X-API-Token"


# ---------------------------------------------------------------- add-messages


async def test_add_messages_queues(suspended: httpx.AsyncClient) -> None:
    response = await suspended.post(
        "/commands/add-messages", json={"messages": [message("m1"), message("m2", priority="high")]}
    )
    assert response.status_code == 200
    assert response.json() == {"ok": True, "queued": 2, "rejected": [], "warnings": []}
    counts = (await suspended.get("/status")).json()["queue"]
    assert counts["queued"] == 2


async def test_one_bad_message_never_fails_the_batch(suspended: httpx.AsyncClient) -> None:
    response = await suspended.post(
        "/commands/add-messages",
        json={
            "messages": [
                message("good1"),
                message("no-to", to=""),
                message("bad-addr", to="not an address"),
                message("crlf", subject="Hello\r\nBcc: victim@example.com"),
                message("crlf-header", headers={"X-Tag": "a\nb"}),
                message("no-account", account_id="ghost"),
                "not an object",
                message("good2"),
            ]
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and body["queued"] == 2
    reasons = {r["id"]: r["reason"] for r in body["rejected"]}
    assert reasons["no-to"] == "missing to"
    assert reasons["bad-addr"].startswith("invalid address")
    assert reasons["crlf"].startswith("invalid header")
    assert reasons["crlf-header"].startswith("invalid header")
    assert reasons["no-account"] == "account not found"
    assert reasons[None].startswith("invalid payload")
    listed = (await suspended.get("/messages")).json()["messages"]
    assert [m["id"] for m in listed] == ["good1", "good2"]


async def test_missing_to_is_named(suspended: httpx.AsyncClient) -> None:
    item = message("m1")
    del item["to"]
    body = (await suspended.post("/commands/add-messages", json={"messages": [item]})).json()
    assert body["rejected"] == [{"id": "m1", "reason": "missing to"}]


async def test_default_priority_of_the_batch(suspended: httpx.AsyncClient) -> None:
    await suspended.post(
        "/commands/add-messages",
        json={
            "messages": [message("m1"), message("m2", priority=3)],
            "default_priority": "immediate",
        },
    )
    priorities = {
        m["id"]: m["priority"] for m in (await suspended.get("/messages")).json()["messages"]
    }
    assert priorities == {"m1": 0, "m2": 3}


async def test_bad_default_priority_is_400(suspended: httpx.AsyncClient) -> None:
    response = await suspended.post(
        "/commands/add-messages",
        json={"messages": [message("m1")], "default_priority": "urgentissimo"},
    )
    assert response.status_code == 400
    assert response.json()["ok"] is False
    assert "default_priority" in response.json()["error"]


async def test_too_many_messages_is_400(suspended: httpx.AsyncClient) -> None:
    messages = [message(f"m{i}") for i in range(1001)]
    response = await suspended.post("/commands/add-messages", json={"messages": messages})
    assert response.status_code == 400
    error = "Cannot enqueue more than 1000 messages at once"
    assert response.json() == {
        "ok": False,
        "error": error,
        "queued": 0,
        "rejected": [],
        "warnings": [],
        "detail": {"error": error, "rejected": []},
    }
    assert (await suspended.get("/messages")).json()["messages"] == []


async def test_duplicate_id_replaced_while_queued(suspended: httpx.AsyncClient) -> None:
    first = await suspended.post(
        "/commands/add-messages", json={"messages": [message("dup", subject="first")]}
    )
    second = await suspended.post(
        "/commands/add-messages", json={"messages": [message("dup", subject="second")]}
    )
    assert first.json()["queued"] == 1 and second.json()["queued"] == 1
    listed = (await suspended.get("/messages")).json()["messages"]
    assert [m["id"] for m in listed] == ["dup"]
    detail = (await suspended.get("/messages/dup")).json()["message"]
    assert detail["subject"] == "second"


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/commands/add-messages",
        content=b'{"messages": [',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    body = response.json()
    assert body["ok"] is False and body["error"].startswith("invalid JSON body")


async def test_body_not_utf8_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/commands/delete-messages", content=b'{"ids": ["\xff"]}')
    assert response.status_code == 400
    assert response.json()["error"].startswith("invalid JSON body: not UTF-8")


async def test_json_without_content_type_is_accepted(suspended: httpx.AsyncClient) -> None:
    response = await suspended.post(
        "/commands/add-messages", content=json.dumps({"messages": [message("m1")]})
    )
    assert response.json() == {"ok": True, "queued": 1, "rejected": [], "warnings": []}


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/commands/add-messages", {"messages": "m1"}, "messages"),
        ("/commands/add-messages", {}, "messages"),
        ("/commands/add-messages", [], "body"),
        ("/commands/delete-messages", {"ids": "m1"}, "ids"),
        ("/commands/delete-messages", {"ids": [["nested"]]}, "ids[0]"),
        ("/commands/cleanup-messages", {"older_than_seconds": "soon"}, "older_than_seconds"),
    ],
)
async def test_schema_errors_are_422_naming_the_field(
    client: httpx.AsyncClient, path: str, payload: object, field: str
) -> None:
    response = await client.post(path, json=payload)
    assert response.status_code == 422
    body = response.json()
    assert body["ok"] is False
    assert re.match(rf"(missing|invalid) {re.escape(field)}(:|$)", body["error"]), body["error"]


# ---------------------------------------------------------------- body size


@pytest.fixture
async def small_limit(start_service: ServiceFactory) -> Service:
    return await start_service(rest={"max_body_bytes": 2048})


async def test_body_over_the_limit_is_413(small_limit: Service) -> None:
    async with httpx.AsyncClient(
        base_url=base_url(small_limit), headers={"X-API-Token": TOKEN}
    ) as http:
        big = {"messages": [message("m1", body="x" * 4096)]}
        response = await http.post("/commands/add-messages", json=big)
        assert response.status_code == 413
        assert response.json() == {
            "ok": False,
            "error": "request body too large (limit 2048 bytes)",
        }
        small = await http.post("/commands/add-messages", json={"messages": []})
        assert small.json() == {"ok": True, "queued": 0, "rejected": [], "warnings": []}


async def test_chunked_body_over_the_limit_is_413(small_limit: Service) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: checked while reading
        for _ in range(4):
            yield b" " * 1024

    async with httpx.AsyncClient(
        base_url=base_url(small_limit), headers={"X-API-Token": TOKEN}
    ) as http:
        response = await http.post("/commands/add-messages", content=chunks())
        assert response.status_code == 413


async def test_413_comes_before_the_body_is_read(small_limit: Service) -> None:
    """A client announcing 10 MB gets its 413 after sending only the headers."""
    server = small_limit.state["rest"]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST /commands/add-messages HTTP/1.1\r\nHost: test\r\n"
            b"X-API-Token: " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b'Content-Length: 10485760\r\n\r\n{"messages": ['
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 413 ")
    finally:
        writer.close()


# ---------------------------------------------------------------- messages


async def test_delete_messages(suspended: httpx.AsyncClient) -> None:
    await suspended.post(
        "/commands/add-messages", json={"messages": [message("m1"), message("m2")]}
    )
    response = await suspended.post("/commands/delete-messages", json={"ids": ["m1", "ghost"]})
    assert response.json() == {"ok": True, "removed": 1, "not_found": ["ghost"], "skipped": []}
    listed = (await suspended.get("/messages")).json()["messages"]
    assert [m["id"] for m in listed] == ["m2"]


async def test_cleanup_messages_with_and_without_a_body(client: httpx.AsyncClient) -> None:
    assert (await client.post("/commands/cleanup-messages")).json() == {"ok": True, "removed": 0}
    response = await client.post("/commands/cleanup-messages", json={"older_than_seconds": 3600})
    assert response.json() == {"ok": True, "removed": 0}


async def test_list_messages_pages_and_filters(suspended: httpx.AsyncClient) -> None:
    await suspended.post("/account", json=account("other"))
    ids = [f"m{i}" for i in range(5)]
    far_ahead = int(time.time()) + 300 * 86400  # within [service] max_defer_seconds
    await suspended.post(
        "/commands/add-messages",
        json={
            "messages": [
                *(message(i) for i in ids),
                message("far", deferred_ts=far_ahead),
                message("o1", account_id="other"),
            ]
        },
    )

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2, "status": "queued", "account_id": "acc"}
        if cursor is not None:
            params["cursor"] = cursor
        body = (await suspended.get("/messages", params=params)).json()
        seen += [m["id"] for m in body["messages"]]
        cursor = body["next_cursor"]
        pages += 1
        if cursor is None:
            break
    assert seen == ids and pages == 3

    scheduled = (await suspended.get("/messages", params={"status": "scheduled"})).json()
    [far] = scheduled["messages"]
    assert far["id"] == "far" and far["deferred_ts"] == far_ahead
    assert set(far) == {
        "id",
        "account_id",
        "priority",
        "status",
        "deferred_ts",
        "sent_ts",
        "error_ts",
        "error",
        "reported_ts",
        "attempts",
        "created_at",
        "updated_at",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", far["created_at"])
    assert far["sent_ts"] is None and far["status"] == "scheduled"

    # empty values count as absent (legacy clients send ?status=&account_id=)
    everything = (await suspended.get("/messages?status=&account_id=&cursor=")).json()
    assert len(everything["messages"]) == 7


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=bogus", "status"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("cursor=abc", "cursor"),
    ],
)
async def test_list_messages_bad_query(client: httpx.AsyncClient, query: str, field: str) -> None:
    response = await client.get(f"/messages?{query}")
    assert response.status_code == 422
    assert response.json()["error"].startswith(f"invalid {field}")


async def test_get_message_with_events(suspended: httpx.AsyncClient) -> None:
    await suspended.post(
        "/commands/add-messages",
        json={
            "messages": [
                message(
                    "m1",
                    to='"Doe, John" <john@example.com>, jane@example.com',
                    cc=["Carl <c@example.com>"],
                    html="<p>hi</p>",
                    headers={"X-Campaign": "autumn"},
                    attachments=[
                        {"filename": "a.txt", "storage_path": "mem:reports/a.txt?sig=SECRET"}
                    ],
                )
            ]
        },
    )
    response = await suspended.get("/messages/m1")
    assert response.status_code == 200
    body = response.json()
    msg = body["message"]
    assert msg["id"] == "m1" and msg["status"] == "queued"
    assert msg["from"] == "sender@example.com"
    assert msg["to"] == ['"Doe, John" <john@example.com>', "jane@example.com"]
    assert msg["cc"] == ["Carl <c@example.com>"]
    assert msg["headers"] == {"X-Campaign": "autumn"}
    assert msg["message_id"].startswith("<") and msg["message_id"].endswith(">")
    assert msg["body_size"] == len("hello") + len("<p>hi</p>")
    assert "body" not in msg and "html" not in msg
    [attachment] = msg["attachments"]
    assert attachment["filename"] == "a.txt"
    assert attachment["storage_path"].startswith("mem:reports/a.txt")
    assert "SECRET" not in response.text
    [event] = body["events"]
    assert event["kind"] == "queued" and isinstance(event["ts"], int)
    assert set(event) == {"kind", "ts", "code", "detail", "data"}


async def test_get_message_with_a_slash_in_its_id(suspended: httpx.AsyncClient) -> None:
    await suspended.post("/commands/add-messages", json={"messages": [message("order/42")]})
    assert (await suspended.get("/messages/order/42")).json()["message"]["id"] == "order/42"


async def test_get_unknown_message_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/messages/ghost")
    assert response.status_code == 404
    assert response.json() == {"ok": False, "error": "message not found"}


# ---------------------------------------------------------------- accounts


async def test_accounts_upsert_and_list_without_password(client: httpx.AsyncClient) -> None:
    assert (
        await client.post(
            "/account", json=account(user="u", password="hunter2-password", limit_per_minute=10)
        )
    ).json() == {"ok": True}
    assert (await client.post("/account", json=account(port=2525))).json() == {"ok": True}
    response = await client.get("/accounts")
    assert "hunter2" not in response.text
    [acc] = response.json()["accounts"]
    assert acc["id"] == "acc" and acc["port"] == 2525 and acc["tls"] == "none"
    assert "password" not in acc


async def test_invalid_account_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/account", json={"id": "acc", "port": 25})
    assert response.status_code == 422
    assert response.json() == {"ok": False, "error": "missing host"}
    response = await client.post("/account", json=account(tls="sometimes"))
    assert response.status_code == 422 and response.json()["error"].startswith("invalid tls")


async def test_delete_account(suspended: httpx.AsyncClient) -> None:
    unknown = await suspended.delete("/account/ghost")
    assert unknown.status_code == 404
    assert unknown.json() == {"ok": False, "error": "account not found"}

    await suspended.post("/commands/add-messages", json={"messages": [message("m1")]})
    busy = await suspended.delete("/account/acc")
    assert busy.status_code == 409
    assert busy.json()["ok"] is False and "unsent" in busy.json()["error"]

    forced = await suspended.delete("/account/acc", params={"force": "true"})
    assert forced.json() == {"ok": True}
    assert (await suspended.get("/accounts")).json()["accounts"] == []
    msg = (await suspended.get("/messages/m1")).json()["message"]
    assert msg["status"] == "error" and msg["error"] == "account deleted"
    assert isinstance(msg["error_ts"], int)


async def test_delete_account_without_messages(client: httpx.AsyncClient) -> None:
    await client.post("/account", json=account("lonely"))
    assert (await client.delete("/account/lonely")).json() == {"ok": True}
    assert (await client.delete("/account/lonely")).status_code == 404


# ---------------------------------------------------------------- errors


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nothing-here")
    assert missing.status_code == 404
    assert missing.json() == {"ok": False, "error": "not found"}
    wrong = await client.get("/commands/add-messages")
    assert wrong.status_code == 405
    assert wrong.json() == {"ok": False, "error": "method not allowed"}
    assert "POST" in wrong.headers["Allow"]


class ClientCertificate:
    """An auth plugin that limits each caller to the account named by its certificate."""

    __name__ = "test-client-certificate"

    @hookimpl(tryfirst=True)
    def gmp_authenticate(self, headers: dict[str, str], config: object) -> Principal | None:
        subject = headers.get("x-client-subject")
        return None if subject is None else Principal(subject, accounts=frozenset({subject}))


async def test_an_auth_plugins_account_limit_is_enforced(start_service: ServiceFactory) -> None:
    """Any auth plugin's ``Principal.accounts`` binds, not only token_auth's account tokens."""
    service = await start_service(ClientCertificate())
    async with httpx.AsyncClient(base_url=base_url(service)) as http:
        limited = {"X-Client-Subject": "acc"}
        assert (await http.get("/status", headers=limited)).status_code == 403
        assert (await http.post("/account", json=account(), headers=limited)).is_success
        add = await http.post(
            "/commands/add-messages",
            json={"messages": [message("m1"), message("m2", account_id="other")]},
            headers=limited,
        )
        assert add.json()["rejected"] == [
            {"id": "m2", "reason": "account_id: not allowed for this caller"}
        ]
        listed = await http.get("/messages", headers=limited)
        assert [m["id"] for m in listed.json()["messages"]] == ["m1"]
        elsewhere = await http.get("/messages", params={"account_id": "x"}, headers=limited)
        assert elsewhere.status_code == 403


class ExplodingAuth:
    """An auth plugin with a bug: it raises on a given header."""

    __name__ = "test-exploding-auth"

    @hookimpl
    def gmp_authenticate(self, headers: dict[str, str], config: object) -> Principal | None:
        if headers.get("x-explode"):
            raise RuntimeError("boom: internal detail db-password=hunter2")
        return None


async def test_unexpected_error_is_500_without_details(
    start_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    service = await start_service(ExplodingAuth())
    async with httpx.AsyncClient(
        base_url=base_url(service), headers={"X-API-Token": TOKEN}
    ) as http:
        with caplog.at_level(logging.ERROR, logger="gmp.rest"):
            response = await http.get("/status", headers={"X-Explode": "1"})
        assert response.status_code == 500
        assert response.json() == {"ok": False, "error": "internal error"}
        assert "hunter2" not in response.text
        assert "RuntimeError" in caplog.text  # the traceback is logged
        assert (await http.get("/status")).status_code == 200


async def test_tokens_and_bodies_are_not_logged(
    suspended: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        await suspended.post("/account", json=account(password="pw-hunter2"))
        await suspended.post(
            "/commands/add-messages", json={"messages": [message("m1", body="very-private-body")]}
        )
        await suspended.post("/commands/add-messages", content=b"{broken very-private")
    # ours and the web stack's at any level; the database drivers' SQL traces only above DEBUG
    web = ("gmp", "quart", "hypercorn", "httpx", "httpcore")
    logged = "\n".join(
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(web) or r.levelno > logging.DEBUG
    )
    assert logged
    for secret in (TOKEN, "hunter2", "very-private"):
        assert secret not in logged
