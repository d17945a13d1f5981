"""Regressions of what fuzzing found over HTTP (tests/test_fuzz_api.py), and injection
refused end to end: each request once answered 500, or let a header through."""

from __future__ import annotations

import httpx
import pytest

from tests.rest.rest_support import account, message

HUGE = 2**63  # one past what an SQLite INTEGER or a PostgreSQL BIGINT holds


async def test_a_default_priority_that_is_no_priority_is_400(suspended: httpx.AsyncClient) -> None:
    # was: 500, TypeError comparing a list with 0
    for bad in ([1], {"p": 1}, True, 1.5):
        body = {"messages": [message("m1")], "default_priority": bad}
        response = await suspended.post("/commands/add-messages", json=body)
        assert response.status_code == 400, bad
        assert response.json()["error"].startswith("invalid default_priority")


async def test_a_cursor_beyond_64_bits_is_422(client: httpx.AsyncClient) -> None:
    # was: 500, OverflowError in SQLite
    response = await client.get("/messages", params={"cursor": str(HUGE)})
    assert response.status_code == 422
    assert response.json()["error"].startswith("invalid cursor")


@pytest.mark.parametrize("field", ["batch_size", "limit_per_minute", "limit_per_day"])
async def test_account_numbers_beyond_64_bits_are_422(
    client: httpx.AsyncClient, field: str
) -> None:
    # was: 500, OverflowError in SQLite
    response = await client.post("/account", json=account(**{field: HUGE}))
    assert response.status_code == 422
    assert response.json()["error"].startswith(f"invalid {field}")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_not_json(suspended: httpx.AsyncClient, constant: str) -> None:
    # Python's json module accepts them; a deferral "until Infinity" broke listing later.
    raw = '{"messages": [{"id": "m1", "account_id": "acc", "from": "a@example.com", '
    raw += f'"to": "b@example.com", "deferred_ts": {constant}}}]}}'
    response = await suspended.post(
        "/commands/add-messages", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "ok": False,
        "error": f"invalid JSON body: {constant} is not a JSON value",
    }
    listed = await suspended.get("/messages")
    assert listed.status_code == 200 and listed.json()["messages"] == []


async def test_injected_messages_are_rejected_alone(suspended: httpx.AsyncClient) -> None:
    batch = [
        message("good"),
        message("subject", subject="hi\r\nBcc: victim@example.com"),
        message("to", to="a@example.com\nBcc: victim@example.com"),
        message("name", to='"Eve\x00" <a@example.com>'),
        message("header", headers={"X-Tag": "v\r\nBcc: victim@example.com"}),
        message("override", headers={"bcc": "victim@example.com"}),
        message("file", attachments=[{"filename": "a\r\n.pdf", "storage_path": "mem:x"}]),
    ]
    response = await suspended.post("/commands/add-messages", json={"messages": batch})
    assert response.status_code == 200
    body = response.json()
    assert body["queued"] == 1
    reasons = {r["id"]: r["reason"] for r in body["rejected"]}
    assert reasons == {
        "subject": "invalid header: Subject contains CR, LF, NUL or another control character",
        "to": "invalid address: to contains CR, LF, NUL or another control character",
        "name": "invalid address: to contains CR, LF, NUL or another control character",
        "header": "invalid header: X-Tag contains CR, LF, NUL or another control character",
        "override": "invalid header: bcc may not be set through headers",
        "file": (
            "invalid header: attachment filename contains CR, LF, NUL or another control character"
        ),
    }


@pytest.mark.parametrize("host", ["x..y", "a" * 70, "\u00e9" * 70 + ".com"])
async def test_an_s3_endpoint_that_is_no_host_name_is_422(
    client: httpx.AsyncClient, host: str
) -> None:
    # was: 500, UnicodeError from the IDNA codec before any lookup (nothing is resolved here)
    volume = {
        "name": "v",
        "backend": "s3",
        "config": {"bucket": "bkt", "endpoint_url": f"http://{host}/"},
    }
    response = await client.post("/volume", json=volume)
    assert response.status_code == 422
    assert response.json()["error"].startswith("config.endpoint_url: ")
