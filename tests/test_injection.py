"""Header injection is refused at intake, with a reason naming the field (issue #9).

A CR or LF in any text that ends up in a header would let a client add headers of its own
choosing (``Bcc: everyone@...``) or start the body early; a NUL cuts the header in some
readers; and Python's email package, like other readers, also breaks lines at \\x0b, \\x0c,
\\x1c-\\x1e, \\x85, U+2028 and U+2029. Every one of them is rejected in every field that
becomes a header: addresses and their display names, the subject, custom header names and
values, attachment filenames, the message id and the client's id (sent as X-GMP-ID).
"""

from __future__ import annotations

from typing import Any

import pytest

from gmp_core.intake import InvalidInput, parse_message
from tests.support import message

BREAKS = ["\r", "\n", "\r\n", "\x00", "\x0b", "\x0c", "\x1c", "\x1e", "\x85", "\u2028", "\u2029"]
INJECTED = "Bcc: victim@example.com"


def rejection(**changes: Any) -> str:
    with pytest.raises(InvalidInput) as error:
        parse_message({**message("m1"), **changes}, default_priority=2, default_account=None)
    return str(error.value)


@pytest.mark.parametrize("brk", BREAKS, ids=repr)
@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("from", "a@example.com{}", "invalid address: from contains"),
        ("to", "a@example.com{}", "invalid address: to contains"),
        ("to", ["ok@example.com", "b@example.com{}"], "invalid address: to contains"),
        ("cc", "a@example.com{}", "invalid address: cc contains"),
        ("bcc", "a@example.com{}", "invalid address: bcc contains"),
        ("reply_to", "a@example.com{}", "invalid address: reply_to contains"),
        ("return_path", "a@example.com{}", "invalid address: return_path contains"),
        ("to", '"Name{}" <a@example.com>', "invalid address: to contains"),
        ("from", "Name{} <a@example.com>", "invalid address: from contains"),
        ("subject", "hello{}", "invalid header: Subject contains"),
        ("message_id", "<x{}@example.com>", "invalid message_id: contains"),
        ("id", "m1{}", "invalid id: contains"),
    ],
)
def test_line_breaks_and_nul_are_rejected(brk: str, field: str, value: Any, reason: str) -> None:
    def inject(text: str) -> str:
        return text.format(brk + INJECTED)

    injected = [inject(v) for v in value] if isinstance(value, list) else inject(value)
    assert rejection(**{field: injected}).startswith(reason)


@pytest.mark.parametrize("brk", BREAKS, ids=repr)
def test_line_breaks_in_custom_headers_and_filenames_are_rejected(brk: str) -> None:
    assert rejection(headers={"X-Tag": f"v{brk}{INJECTED}"}).startswith(
        "invalid header: X-Tag contains"
    )
    assert rejection(headers={f"X-Tag{brk}Bcc": "v"}).startswith("invalid header: 'X-Tag")
    attachment = {"filename": f"a{brk}.pdf", "storage_path": "base64:SGk="}
    assert rejection(attachments=[attachment]).startswith(
        "invalid header: attachments[0].filename contains"
    )


@pytest.mark.parametrize(
    "encoded", ["=?utf-8?q?Eve=0D=0ABcc=3A_x?=", "=?utf-8?b?RXZlDQpCY2M6IHg=?="]
)
def test_an_encoded_line_break_in_a_display_name_is_rejected(encoded: str) -> None:
    """CR LF hidden in an RFC 2047 encoded word decodes to a line break: not an address."""
    item = f"{encoded} <a@example.com>"
    assert rejection(to=item) == f"invalid address: to: {item}"


def test_the_reason_names_the_field_without_echoing_the_value() -> None:
    reason = rejection(subject="secret-subject\r\nBcc: x@example.com")
    assert reason == "invalid header: Subject contains CR, LF, NUL or another control character"


@pytest.mark.parametrize(
    "name",
    [
        "From", "from", "FROM", "To", "to", "Cc", "CC", "Bcc", "bcc", "BCC",
        "Message-ID", "message-id", "Message-Id", "Date", "date", "DATE",
        "Reply-To", "Subject", "Sender", "Return-Path", "X-GMP-ID",
        "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
    ],
)  # fmt: skip
def test_custom_headers_cannot_override_what_the_proxy_writes(name: str) -> None:
    assert rejection(headers={name: "x@example.com"}) == (
        f"invalid header: {name} may not be set through headers"
    )


@pytest.mark.parametrize("name", ["From:", "From ", " From", "Fr om", "Bcc\t", "", "Dâte"])
def test_header_names_that_only_look_like_others_are_not_names(name: str) -> None:
    assert rejection(headers={name: "x@example.com"}).startswith("invalid header: ")


def test_tab_and_ordinary_unicode_are_not_injection() -> None:
    parsed = parse_message(
        {**message("m1"), "subject": "a\tb — ü", "headers": {"X-Note": "naïve\tx"}},
        default_priority=2,
        default_account=None,
    )
    assert parsed.subject == "a\tb — ü"
    assert parsed.headers == {"X-Note": "naïve\tx"}


def test_a_header_name_longer_than_a_line_is_rejected() -> None:
    name = "X-" + "a" * 75
    assert rejection(headers={name: "v"}) == (
        "invalid header: X-aaaaaaaaaaaaaaaaaa... is longer than 76 characters"
    )
    assert parse_message(
        {**message("m1"), "headers": {name[:76]: "v"}}, default_priority=2, default_account=None
    ).headers == {name[:76]: "v"}
