"""The original service's own integration, replayed as a new user coming from it would.

`gmp serve` starts as the seed README's Docker quick start starts the original: no
configuration file, only its environment variables. The account is created exactly as the
original's setup script creates it, the messages are posted exactly as its example client
(`example_client.py`) posts them, and the report endpoint answers as that client's does:
``200 {"status": "ok", "processed": N}`` behind Basic auth. The mail must arrive as the client
meant it, and each report must be posted once and acknowledged.
"""

from __future__ import annotations

import base64
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gmp_core.testing import ReceivedRequest, ReportReceiver, SmtpSink, wait_until
from tests.processes import ServeProcess

TOKEN = "your-secret-token"
SYNC_USER, SYNC_PASSWORD = "syncuser", "syncpass"


def example_client_message(id: str, **changes: Any) -> dict[str, Any]:
    """What the original's example client posts for one test email."""
    return {
        "id": id,
        "to": "rcpt@example.com",
        "from": "info@example.com",
        "from_name": "Example Client Test",
        "subject": f"Test email {id}",
        "body": f"<html><body><h1>Test</h1><p>Message {id}</p></body></html>",
        "html": True,
        "account_id": "fake-smtp-test",
        **changes,
    }


def answer_like_the_example_client(request: ReceivedRequest) -> tuple[int, Any]:
    expected = "Basic " + base64.b64encode(f"{SYNC_USER}:{SYNC_PASSWORD}".encode()).decode()
    if request.headers.get("authorization") != expected:
        return 401, {"detail": "Unauthorized"}
    reports = request.json()["delivery_report"]
    return 200, {"status": "ok", "processed": len(reports)}


@pytest.fixture
async def application() -> AsyncIterator[ReportReceiver]:
    """The client application's proxy_sync endpoint."""
    endpoint = await ReportReceiver().start()
    endpoint.respond = answer_like_the_example_client
    yield endpoint
    await endpoint.stop()


@pytest.fixture
async def proxy(tmp_path: Path, application: ReportReceiver) -> AsyncIterator[ServeProcess]:
    """`gmp serve` with the Quick start's environment (and a free port on loopback)."""
    environment = {
        "GMP_CLIENT_SYNC_URL": f"{application.url}email/mailproxy/mp_endpoint/proxy_sync",
        "GMP_CLIENT_SYNC_USER": SYNC_USER,
        "GMP_CLIENT_SYNC_PASSWORD": SYNC_PASSWORD,
        "GMP_API_TOKEN": TOKEN,
        "GMP_DB_PATH": str(tmp_path / "mail_service.db"),
        "GMP_HOST": "127.0.0.1",
        "GMP_PORT": "0",
    }
    process = await ServeProcess(None, cwd=tmp_path, env=environment).start()
    yield process
    await process.stop(signal.SIGKILL)


@pytest.fixture
async def api(proxy: ServeProcess, sink: SmtpSink) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=proxy.url, headers={"X-API-Token": TOKEN}, timeout=30
    ) as client:
        setup = {
            "id": "fake-smtp-test",
            "host": sink.host,
            "port": sink.port,
            "user": None,
            "password": None,
            "use_tls": False,
        }
        response = await client.post("/account", json=setup)
        assert response.status_code == 200, response.text
        yield client


def reported_ids(application: ReportReceiver) -> list[str]:
    return [item["id"] for body in application.json_bodies() for item in body["delivery_report"]]


async def test_the_example_client_end_to_end(
    api: httpx.AsyncClient, sink: SmtpSink, application: ReportReceiver
) -> None:
    answer = await api.post(
        "/commands/add-messages", json={"messages": [example_client_message("test_1")]}
    )
    assert answer.status_code == 200  # the example client treats anything else as a failure
    assert answer.json() == {"ok": True, "queued": 1, "rejected": [], "warnings": []}
    assert (await api.post("/commands/run-now")).status_code == 200

    [mail] = await sink.wait_for(1)
    assert mail.mail_from == "info@example.com" and mail.rcpt_tos == ["rcpt@example.com"]
    assert str(mail.message["From"]) == "Example Client Test <info@example.com>"
    assert mail.message.get_content_type() == "text/html"
    assert "<h1>Test</h1>" in mail.message.get_content()

    record = (await api.get("/messages/test_1")).json()["message"]
    assert record["content_type"] == "html"
    assert record["from"] == "Example Client Test <info@example.com>"

    await application.wait(lambda endpoint: "test_1" in reported_ids(endpoint))
    [report] = [i for b in application.json_bodies() for i in b["delivery_report"]]
    assert report["id"] == "test_1" and report["account_id"] == "fake-smtp-test"
    assert report["sent_ts"] > 0 and report["error_ts"] is None

    async def acknowledged(message_id: str) -> bool:
        record = (await api.get(f"/messages/{message_id}")).json()["message"]
        return record["reported_ts"] is not None

    await wait_until(lambda: acknowledged("test_1"))

    # A second message: its report comes alone, so the first was acknowledged for good.
    second = await api.post(
        "/commands/add-messages", json={"messages": [example_client_message("test_2")]}
    )
    assert second.status_code == 200
    await api.post("/commands/run-now")
    await application.wait(lambda endpoint: "test_2" in reported_ids(endpoint))
    await wait_until(lambda: acknowledged("test_2"))
    assert reported_ids(application) == ["test_1", "test_2"]


async def test_a_batch_the_proxy_refuses_is_a_failure_the_client_sees(
    api: httpx.AsyncClient, sink: SmtpSink
) -> None:
    bad = [
        example_client_message("bad_1", to="not an address"),
        example_client_message("bad_2", account_id="no-such-account"),
    ]
    answer = await api.post("/commands/add-messages", json={"messages": bad})
    assert answer.status_code == 400
    body = answer.json()
    assert body["ok"] is False and body["queued"] == 0
    assert body["detail"]["error"] == "all messages rejected"
    assert [r["id"] for r in body["detail"]["rejected"]] == ["bad_1", "bad_2"]
    assert (await api.get("/messages")).json()["messages"] == []
    assert sink.mails == []
