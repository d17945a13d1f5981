"""Intake: every bad message is rejected alone, with a reason naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from gmp_core import Service
from gmp_core.intake import InvalidInput, parse_account, parse_message, unknown_fields
from tests.support import message


def parse(item: Any, **kwargs: Any) -> Any:
    return parse_message(
        item,
        default_priority=kwargs.pop("default_priority", 2),
        default_account=kwargs.pop("default_account", None),
        **kwargs,
    )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"id": ""}, "invalid id: String should have at least 1 character"),
        ({"to": []}, "missing to"),
        ({"to": "not an address"}, "invalid address: to: not an address"),
        ({"to": ["ok@example.com", "bad@"]}, "invalid address: to: bad@"),
        ({"cc": "a@example.com\r\nBcc: victim@example.com"}, "invalid address: cc contains CR"),
        ({"from": "a@example.com, b@example.com"}, "invalid address: from must be one address"),
        ({"subject": "hi\r\nBcc: victim@example.com"}, "invalid header: Subject contains CR"),
        ({"headers": {"X-Ok": "v\nInjected: 1"}}, "invalid header: X-Ok contains CR"),
        ({"headers": {"Bad Name": "v"}}, "invalid header: 'Bad Name' is not a valid header name"),
        ({"headers": {"From": "boss@example.com"}}, "invalid header: From may not be set"),
        ({"headers": {"message-id": "<x@y>"}}, "invalid header: message-id may not be set"),
        ({"priority": 7}, "invalid priority: 7"),
        ({"priority": "urgent"}, "invalid priority: 'urgent'"),
        ({"content_type": "markdown"}, "invalid content_type"),
        ({"deferred_ts": -5}, "invalid deferred_ts"),
        ({"message_id": "no-at-sign"}, "invalid message_id"),
        ({"html": ["<p>"]}, "invalid html"),
        ({"html": True, "content_type": "plain"}, "invalid html: true contradicts content_type"),
        ({"html": False, "content_type": "html"}, "invalid html: false contradicts content_type"),
        ({"from_name": "Shop\r\nBcc: x@example.com"}, "invalid address: from_name contains CR"),
        ({"from_name": "=?utf-8?q?x?="}, "invalid address: from_name display name contains '=?'"),
        ({"from_name": ["Shop"]}, "invalid from_name"),
        ({"attachments": [{"filename": "a.pdf"}]}, "missing attachments[0].storage_path"),
        (
            {"attachments": [{"filename": "a.pdf", "storage_path": "nocolon"}]},
            "invalid attachments[0].storage_path",
        ),
        (
            {"attachments": [{"filename": "a\r\n.pdf", "storage_path": "v:x"}]},
            "invalid header: attachments[0].filename contains CR",
        ),
    ],
)
def test_rejections(changes: dict[str, Any], reason: str) -> None:
    item = {**message("m1"), **changes}
    item = {k: v for k, v in item.items() if v is not None}
    with pytest.raises(InvalidInput) as error:
        parse(item)
    assert str(error.value).startswith(reason)


def test_missing_fields_say_missing() -> None:
    for field in ("id", "from", "to"):
        item = message("m1")
        del item[field]
        with pytest.raises(InvalidInput, match=f"^missing {field}$"):
            parse(item)


def test_not_an_object() -> None:
    with pytest.raises(InvalidInput, match="invalid payload"):
        parse(["a list"])


def test_normalisation() -> None:
    parsed = parse(
        {
            **message("m1"),
            "to": '"Doe, John" <j@example.com>, k@example.com',
            "priority": "HIGH",
            "message_id": "abc@client",
            "headers": {"X-N": 5},
        }
    )
    assert parsed.to == [("Doe, John", "j@example.com"), ("", "k@example.com")]
    assert parsed.priority == 1
    assert parsed.message_id == "<abc@client>"
    assert parsed.headers == {"X-N": "5"}


@pytest.mark.parametrize(
    ("fields", "content_type", "html"),
    [
        ({"html": True}, "html", None),  # the original's example client sends this
        ({"html": True, "content_type": "html"}, "html", None),
        ({"html": False}, "plain", None),
        ({"html": None}, "plain", None),
        ({}, "plain", None),
        ({"content_type": "html"}, "html", None),
        ({"html": "<p>hi</p>"}, "plain", "<p>hi</p>"),  # an alternative of a plain body
    ],
)
def test_html_as_a_flag_or_an_alternative(
    fields: dict[str, Any], content_type: str, html: str | None
) -> None:
    parsed = parse({**message("m1"), **fields})
    assert (parsed.content_type, parsed.html) == (content_type, html)


def test_from_name_names_a_bare_sender() -> None:
    named = parse({**message("m1"), "from": "info@example.com", "from_name": "  Example  Shop "})
    assert named.sender == ("Example Shop", "info@example.com")
    # a display name in `from` itself wins
    kept = parse({**message("m1"), "from": "Shop <info@example.com>", "from_name": "Other"})
    assert kept.sender == ("Shop", "info@example.com")


def test_unknown_fields_are_named() -> None:
    item = {
        **message("m1"),
        "tenant_id": "t1",
        "subjet": "typo",
        "attachments": [{"filename": "a.txt", "storage_path": "base64:eA==", "fetch_mode": "x"}],
    }
    assert unknown_fields(item) == ["tenant_id", "subjet", "attachments[0].fetch_mode"]
    assert unknown_fields({**message("m1"), "from_name": "A", "html": True}) == []
    assert unknown_fields("not an object") == []
    assert unknown_fields({**message("m1"), "attachments": True}) == []  # refused later


def test_priority_defaults_and_default_account() -> None:
    item = message("m1")
    del item["account_id"]
    with pytest.raises(InvalidInput, match="missing account_id"):
        parse(item)
    parsed = parse(item, default_priority=3, default_account="main")
    assert (parsed.priority, parsed.account_id) == (3, "main")


def test_generated_message_id_uses_the_sender_domain() -> None:
    assert parse(message("m1")).message_id.endswith("@example.com>")
    assert parse(message("m1"), message_id_domain="mail.test").message_id.endswith("@mail.test>")


def test_account_validation() -> None:
    with pytest.raises(InvalidInput, match=r"^missing host$"):
        parse_account({"id": "a"})
    with pytest.raises(InvalidInput, match=r"^invalid port"):
        parse_account({"id": "a", "host": "h", "port": 70000})
    with pytest.raises(InvalidInput, match=r"^invalid tls"):
        parse_account({"id": "a", "host": "h", "tls": "maybe"})
    with pytest.raises(InvalidInput, match=r"^invalid limit_behavior"):
        parse_account({"id": "a", "host": "h", "limit_behavior": "error"})
    account = parse_account({"id": "a", "host": "h", "limit_per_minute": 0})
    assert account.limit_per_minute is None and account.rate_limits == []


def test_only_smtp_accounts_need_a_host() -> None:
    for payload in ({"id": "a", "host": ""}, {"id": "a", "transport": "smtp", "host": None}):
        with pytest.raises(InvalidInput, match=r"^missing host$"):
            parse_account(payload)
    sandbox = parse_account({"id": "a", "transport": "sandbox"})
    assert (sandbox.host, sandbox.transport) == ("", "sandbox")
    with pytest.raises(InvalidInput, match=r"^invalid host"):
        parse_account({"id": "a", "transport": "sandbox", "host": "bad host"})


async def test_batch_keeps_valid_messages_and_rejects_the_rest(service: Service) -> None:
    result = await service.add_messages(
        [
            message("good1"),
            {"id": "bad1", "from": "x@example.com"},
            message("bad2", account_id="nobody"),
            "not an object",
            message("good2", to="Doe <d@example.com>"),
        ]
    )
    assert result.queued == 2
    assert [(r.id, r.reason) for r in result.rejected] == [
        ("bad1", "missing to"),
        (None, "invalid payload: each message must be a JSON object"),
        ("bad2", "account not found"),
    ]
    listed, _ = await service.list_messages()
    assert sorted(r.id for r in listed) == ["good1", "good2"]


async def test_batch_level_errors(service: Service) -> None:
    with pytest.raises(InvalidInput, match="messages must be a list"):
        await service.add_messages({"id": "x"})
    with pytest.raises(InvalidInput, match="Cannot enqueue more than 1000 messages at once"):
        await service.add_messages([message(f"m{i}") for i in range(1001)])
    with pytest.raises(InvalidInput, match="invalid default_priority"):
        await service.add_messages([message("m1")], default_priority="soon")


async def test_batch_default_priority_applies(service: Service) -> None:
    await service.set_active(False)
    await service.add_messages([message("a"), message("b", priority=3)], default_priority=1)
    records = {r.id: r.priority for r in (await service.list_messages())[0]}
    assert records == {"a": 1, "b": 3}


async def test_attachments_need_a_known_volume(service: Service) -> None:
    result = await service.add_messages(
        [message("m1", attachments=[{"filename": "a.pdf", "storage_path": "nowhere:a.pdf"}])]
    )
    assert [r.reason for r in result.rejected] == ["unknown volume in storage_path: nowhere"]


@pytest.mark.parametrize(
    "text",
    [
        "a@example.com",
        "  a@example.com ",
        "Ann <a@example.com>",
        "Ann Lee<a@example.com>",
        "J. R. Doe <j@example.com>",
        "Zoë <z@example.com>",
        '"Doe, John" <j@example.com>',
        "<bare@example.com>",
        "x@mailhost",
        "a@[127.0.0.1]",
    ],
)
def test_address_fast_paths_agree_with_the_stdlib(text: str) -> None:
    import email.utils

    from gmp_core.intake import _split_addresses

    assert _split_addresses(text) == email.utils.getaddresses([text])


@pytest.mark.parametrize(
    ("addr", "valid"),
    [
        ("a@example.com", True),
        ("first.last+tag@sub.example.co.uk", True),
        ("x@mailhost", True),
        ("ü@exämple.com", True),
        ("a@[127.0.0.1]", True),
        ("a..b@example.com", False),
        (".a@example.com", False),
        ("a@-example.com", False),
        ("a@example..com", False),
        ("a@b@example.com", False),
        ("a b@example.com", False),
    ],
)
def test_addr_spec_syntax(addr: str, valid: bool) -> None:
    from gmp_core.intake import _valid_addr_spec

    assert _valid_addr_spec(addr) is valid
