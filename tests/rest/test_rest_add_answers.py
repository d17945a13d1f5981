"""What add-messages answers: warnings for ignored fields, and 400 when every message of a call
was refused for its content (the original's status and body), but 200 for a retried call."""

from __future__ import annotations

import httpx

from gmp_core.testing import SmtpSink
from tests.rest.rest_support import message
from tests.support import wait_until

ADD = "/commands/add-messages"


async def test_unknown_fields_are_ignored_and_named_per_message(
    suspended: httpx.AsyncClient,
) -> None:
    messages = [
        {**message("m1"), "subjet": "a typo", "tenant_id": "t1"},
        message("m2"),
        {**message("m3"), "to": [], "too": ["rcpt@example.com"]},
    ]
    response = await suspended.post(ADD, json={"messages": messages})
    assert response.status_code == 200
    assert response.json() == {
        "ok": True,
        "queued": 2,
        "rejected": [{"id": "m3", "reason": "missing to"}],
        "warnings": [
            {"id": "m1", "field": "subjet", "warning": "unknown field ignored"},
            {"id": "m1", "field": "tenant_id", "warning": "unknown field ignored"},
            {"id": "m3", "field": "too", "warning": "unknown field ignored"},
        ],
    }


async def test_every_message_refused_for_its_content_is_400(
    suspended: httpx.AsyncClient,
) -> None:
    messages = [{**message("m1"), "to": []}, {**message("m2"), "account_id": "nobody"}]
    response = await suspended.post(ADD, json={"messages": messages})
    assert response.status_code == 400
    rejected = [
        {"id": "m1", "reason": "missing to"},
        {"id": "m2", "reason": "account not found"},
    ]
    assert response.json() == {
        "ok": False,
        "error": "all messages rejected",
        "queued": 0,
        "rejected": rejected,
        "warnings": [],
        "detail": {"error": "all messages rejected", "rejected": rejected},
    }
    assert (await suspended.get("/messages")).json()["messages"] == []


async def test_an_empty_call_is_200(suspended: httpx.AsyncClient) -> None:
    response = await suspended.post(ADD, json={"messages": []})
    assert response.status_code == 200
    assert response.json() == {"ok": True, "queued": 0, "rejected": [], "warnings": []}


async def test_a_retried_call_of_sent_messages_is_200(
    client: httpx.AsyncClient, gmp_smtp_sink: SmtpSink
) -> None:
    sink = gmp_smtp_sink
    account = {"id": "acc", "host": sink.host, "port": sink.port, "tls": "none"}
    assert (await client.post("/account", json=account)).status_code == 200
    batch = {"messages": [message("m1"), message("m2")]}
    assert (await client.post(ADD, json=batch)).json()["queued"] == 2
    await sink.wait_for(2)

    async def both_sent() -> bool:
        listed = (await client.get("/messages")).json()["messages"]
        return [m["status"] for m in listed] == ["sent", "sent"]

    await wait_until(both_sent)
    retried = await client.post(ADD, json=batch)  # the client lost our first answer
    assert retried.status_code == 200
    assert retried.json() == {
        "ok": True,
        "queued": 0,
        "rejected": [
            {"id": "m1", "reason": "already sent"},
            {"id": "m2", "reason": "already sent"},
        ],
        "warnings": [],
    }
    # one already there and one refused for its content: not all refused for content
    mixed = await client.post(ADD, json={"messages": [message("m1"), {**message("m3"), "to": []}]})
    assert mixed.status_code == 200
    assert mixed.json()["rejected"] == [
        {"id": "m3", "reason": "missing to"},
        {"id": "m1", "reason": "already sent"},
    ]
    assert len(sink.mails) == 2
