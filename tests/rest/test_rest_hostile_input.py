"""Regressions of what fuzzing found over HTTP (tests/test_fuzz_api.py), and injection
refused end to end: each request once answered 500, or let a header through."""

from __future__ import annotations

import json
from urllib.parse import quote

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
            "invalid header: attachments[0].filename contains CR, LF, NUL or another control "
            "character"
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


POSTED = [
    "/commands/add-messages",
    "/commands/delete-messages",
    "/commands/cleanup-messages",
    "/account",
    "/volume",
]


@pytest.mark.parametrize("path", POSTED)
@pytest.mark.parametrize(
    ("depth", "error"),
    [
        (100_000, "invalid JSON body: nested too deep"),  # past what the parser can read
        (40, "invalid JSON body: nested deeper than 32 levels"),  # within, but no payload's
    ],
)
async def test_deeply_nested_json_is_400_on_every_endpoint(
    suspended: httpx.AsyncClient, path: str, depth: int, error: str
) -> None:
    # was: 500, RecursionError in the JSON parser
    body = '{"messages": ' + "[" * depth + "]" * depth + "}"
    response = await suspended.post(path, content=body)
    if path == "/commands/add-messages" and depth == 40:
        # messages are checked one by one: the list is not a list of messages
        assert response.status_code == 400
        assert response.json()["error"] == "all messages rejected"
        return
    assert response.status_code == 400
    assert response.json() == {"ok": False, "error": error}


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/account", '{"id": "a\\ud800", "host": "h"}', "id"),
        ("/volume", '{"name": "v", "backend": "memory", "config": {"x\\udc00": 1}}', "config"),
        ("/commands/delete-messages", '{"ids": ["ok", "\\udfff"]}', "ids[1]"),
    ],
)
async def test_a_lone_surrogate_is_400_naming_where(
    suspended: httpx.AsyncClient, path: str, body: str, where: str
) -> None:
    # was: 500, UnicodeEncodeError in the store; a pair (an emoji, "\ud83d\ude00") is text
    response = await suspended.post(path, content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("invalid JSON body: ") and where in error
    assert "lone surrogate" in error
    emoji = await suspended.post(
        "/account", content='{"id": "smile-\\ud83d\\ude00", "host": "127.0.0.1", "port": 9}'
    )
    assert emoji.status_code == 200


async def test_a_lone_surrogate_in_a_message_rejects_that_message_alone(
    suspended: httpx.AsyncClient,
) -> None:
    good = json.dumps(message("good"))
    bad = json.dumps(message("bad", subject="a\ud800b"))  # json.dumps escapes it: \ud800
    response = await suspended.post(
        "/commands/add-messages", content=f'{{"messages": [{good}, {bad}]}}'
    )
    assert response.status_code == 200
    assert response.json()["queued"] == 1
    [rejected] = response.json()["rejected"]
    assert rejected["id"] == "bad" and rejected["reason"].startswith("invalid subject: ")


@pytest.mark.parametrize(
    "to",
    [
        "user@bücher.de",
        "Zoë <zoe@bücher.de>",
        '"Doe, Jöhn" <用户@例え.テスト>',
        "x@[127.0.0.1]",
    ],
)
async def test_every_read_endpoint_renders_an_internationalised_message(
    suspended: httpx.AsyncClient, to: str
) -> None:
    # was: 500 on GET /messages/{id}, UnicodeEncodeError in email.utils.formataddr
    added = await suspended.post(
        "/commands/add-messages",
        json={"messages": [message("idn", to=to, reply_to=to, cc=[to], **{"from": "josé@ex.it"})]},
    )
    assert added.json()["queued"] == 1
    shown = await suspended.get("/messages/idn")
    assert shown.status_code == 200
    detail = shown.json()["message"]
    assert detail["from"] == "josé@ex.it"
    rendered = detail["to"][0]
    assert detail["cc"] == [rendered] and detail["reply_to"] == rendered
    again = await suspended.post(  # what the API shows reads back as the same address
        "/commands/add-messages", json={"messages": [message("again", to=rendered)]}
    )
    assert again.json()["queued"] == 1
    assert (await suspended.get("/messages/again")).json()["message"]["to"] == [rendered]
    listed = await suspended.get("/messages")
    assert listed.status_code == 200
    assert {m["id"] for m in listed.json()["messages"]} == {"idn", "again"}


ODD_IDS = ["/x", "a//b", "x/", "a/../b", "%2F", "a?b#c", "é/ü", "a b", "+"]


async def test_every_id_intake_accepts_can_be_named_in_a_url(suspended: httpx.AsyncClient) -> None:
    # was: "/x" got a redirect to /messages/x (werkzeug merges slashes), "." and ".." were
    # queued but no client can send them as a path segment (RFC 3986 drops them)
    messages = [message(i) for i in [*ODD_IDS, ".", ".."]]
    added = (await suspended.post("/commands/add-messages", json={"messages": messages})).json()
    assert added["queued"] == len(ODD_IDS)
    assert {(r["id"], r["reason"]) for r in added["rejected"]} == {
        (dots, "invalid id: '.' and '..' cannot be named in a URL") for dots in (".", "..")
    }
    for odd in ODD_IDS:
        shown = await suspended.get(f"/messages/{quote(odd, safe='')}")
        assert shown.status_code == 200 and shown.json()["message"]["id"] == odd
        assert (await suspended.post("/account", json=account(odd))).status_code == 200
        deleted = await suspended.delete(f"/account/{quote(odd, safe='')}")
        assert deleted.status_code == 200, odd
    for dots in (".", ".."):
        refused = await suspended.post("/account", json=account(dots))
        assert refused.json()["error"] == "invalid id: '.' and '..' cannot be named in a URL"
