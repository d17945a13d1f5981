"""Intake, class by class (issue #15): each defect an outside attack found, tested for the
whole class it belongs to, not for the one input that showed it.

The property suite (tests/test_properties_api.py) draws from the same classes over HTTP;
these tests go through each class exhaustively, or at every edge, on every run.
"""

from __future__ import annotations

import email
import email.policy
import sys
import time
import unicodedata
from collections.abc import Callable
from typing import Any

import pytest

from gmp_core import Config, ConfigError, Service, hookimpl
from gmp_core.intake import (
    MAX_HEADER_TEXT,
    MAX_ID,
    InvalidInput,
    parse_account,
    parse_message,
    parse_priority,
)
from gmp_core.mime import build_mime
from gmp_core.models import OutgoingMessage, format_address
from gmp_core.testing import SmtpSink
from tests.support import EventLog, message


def _every_code_point() -> tuple[list[str], dict[str, list[str]]]:
    """Digits of other scripts, and every code point by general category (one pass)."""
    digits, by_category = [], {}
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        by_category.setdefault(unicodedata.category(char), []).append(char)
        if code > 0x7F and (char.isdigit() or char.isdecimal() or char.isnumeric()):
            digits.append(char)
    return digits, by_category


# Every code point Python calls a digit or a number, but ASCII's ten: str.isdigit() is true
# for '²', and int() reads '٣' (Arabic-Indic three) as 3 and raises on '²'.
OTHER_DIGITS, BY_CATEGORY = _every_code_point()


def parse(item: Any, **kwargs: Any) -> Any:
    return parse_message(item, default_priority=2, default_account=None, **kwargs)


def rejection(**changes: Any) -> str:
    with pytest.raises(InvalidInput) as error:
        parse({**message("m1"), **changes})
    return str(error.value)


def mail_of(**changes: Any) -> email.message.EmailMessage:
    parsed_message = parse({**message("m1"), **changes})
    contents = [(attachment, b"content") for attachment in parsed_message.attachments]
    built = build_mime(OutgoingMessage(parsed_message, attempt=1), contents)
    assert max(len(line) for line in built.split(b"\r\n")) <= 998
    parsed = email.message_from_bytes(built, policy=email.policy.strict)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


# ---------------------------------------------------------------- 3: a message fails alone


def test_no_digit_of_another_script_is_a_priority() -> None:
    assert len(OTHER_DIGITS) > 1500  # every script's digits, superscripts, fractions...
    for digit in OTHER_DIGITS:
        for text in (digit, f"1{digit}", f" {digit} "):
            with pytest.raises(InvalidInput, match=r"^invalid priority: "):
                parse_priority(text)
    assert [parse_priority(t) for t in ("0", " 3 ", "02", "high", "LOW")] == [0, 3, 2, 1, 3]


async def test_a_bad_priority_or_default_priority_fails_only_itself(service: Service) -> None:
    await service.set_active(False)
    result = await service.add_messages(
        [message("good"), *(message(f"bad{i}", priority=d) for i, d in enumerate("²٣１Ⅻ"))]
    )
    assert result.queued == 1
    assert {r.reason.split(":")[0] for r in result.rejected} == {"invalid priority"}
    for digit in "²٣１":
        with pytest.raises(InvalidInput, match=r"^invalid default_priority: "):
            await service.add_messages([message("m2")], default_priority=digit)


# One code point of each general category (the first, and one from the middle of it), in every
# field that takes text: each is accepted or rejected naming the field, never anything else.
SAMPLES = sorted(
    {chars[i] for chars in BY_CATEGORY.values() for i in (0, len(chars) // 2, -1)}
    | set('\t\r\n\x00\x85\u2028\u202e\u2066²٣=?<>",;:@\\')
)
TEXT_FIELDS: dict[str, Callable[[str], dict[str, Any]]] = {
    "id": lambda c: {"id": f"m{c}"},
    "account_id": lambda c: {"account_id": f"acc{c}"},
    "from": lambda c: {"from": f'"S{c}" <s@example.com>'},
    "to": lambda c: {"to": [f"r{c}@example.com"]},
    "cc": lambda c: {"cc": f"C{c} <c@example.com>"},
    "reply_to": lambda c: {"reply_to": f"R{c} <r@example.com>"},
    "subject": lambda c: {"subject": f"s{c}s"},
    "body": lambda c: {"body": f"b{c}b"},
    "from_name": lambda c: {"from": "s@example.com", "from_name": f"N{c}"},
    "headers": lambda c: {"headers": {"X-Tag": f"v{c}v"}},
    "message_id": lambda c: {"message_id": f"<a{c}@example.com>"},
    "attachments": lambda c: {"attachments": [{"filename": f"f{c}.pdf", "storage_path": "v:x"}]},
    "priority": lambda c: {"priority": c},
}
NAMED_AS = {
    "account_id": "account_id",
    "headers": "header",
    "attachments": "attachments[0]",
    "reply_to": "reply_to",
    "message_id": "message_id",
}


@pytest.mark.parametrize("field", sorted(TEXT_FIELDS))
def test_any_character_in_any_field_is_accepted_or_rejected_naming_the_field(field: str) -> None:
    assert len(SAMPLES) > 60
    for char in SAMPLES:
        try:
            parse({**message("m1"), **TEXT_FIELDS[field](char)})
        except InvalidInput as exc:
            word = NAMED_AS.get(field, field)
            assert word in str(exc).lower() or word in str(exc), (field, repr(char), str(exc))


class BrokenVolumes:
    """A volume plugin whose scope check itself fails: a bug of a third party's plugin."""

    __name__ = "broken-volumes"

    @hookimpl
    def gmp_register_volume_backends(self, register: Callable[..., None], service: Any) -> None:
        register("broken", self)

    def accepts(self, account_id: str) -> bool:
        raise RuntimeError("a bug in a volume plugin")

    async def read(self, subpath: str, account_id: str) -> bytes:
        return b""


async def test_an_error_nobody_foresaw_rejects_only_its_message(
    make_service: Callable[..., Any], sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.support import account

    service = await make_service(plugins=[BrokenVolumes()])
    await service.put_account(account(sink))
    attachment = {"filename": "a.pdf", "storage_path": "broken:a.pdf"}
    result = await service.add_messages([message("good"), message("bad", attachments=[attachment])])
    assert result.queued == 1
    assert [(r.id, r.reason) for r in result.rejected] == [
        ("bad", "invalid message: it could not be checked")
    ]
    assert "checking a message raised RuntimeError" in caplog.text
    assert "a bug in a volume plugin" not in caplog.text  # its text may quote the client


def test_an_error_a_library_raises_is_its_fields_rejection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A library failing on input nobody foresaw (int('²') was one): the field it was
    checking is named, the rest of the batch goes on; the log says where, not what."""
    import gmp_core.intake

    def fails(*args: Any, **kwargs: Any) -> Any:
        raise UnicodeError("the library chokes")

    monkeypatch.setattr(gmp_core.intake, "validate_email", fails)
    gmp_core.intake._valid_unusual_addr_spec.cache_clear()
    reason = rejection(to=["josé@example.com"])  # not the fast ASCII path: email-validator
    assert reason == "invalid to: cannot be checked"
    assert "checking to of a message raised UnicodeError" in caplog.text
    assert "josé" not in caplog.text
    gmp_core.intake._valid_unusual_addr_spec.cache_clear()


async def test_the_last_copy_of_an_id_in_a_call_decides(service: Service, sink: SmtpSink) -> None:
    await service.set_active(False)
    result = await service.add_messages(
        [
            message("dup", subject="first"),
            message("other"),
            message("dup", to="not an address"),  # the last copy of dup: invalid
            message("twice", subject="first", to="not an address"),
            message("twice", subject="second"),  # the last copy of twice: valid
        ]
    )
    assert result.queued == 2
    assert [(r.id, r.reason) for r in result.rejected] == [
        ("dup", "invalid address: to: not an address")
    ]
    listed = {r.id for r in (await service.list_messages())[0]}
    assert listed == {"other", "twice"}
    _, events = await service.get_message("twice")
    assert [e.kind for e in events] == ["queued"]  # the earlier copy's rejection is not kept


# ---------------------------------------------------------------- 4: what is accepted renders


@pytest.mark.parametrize(
    "written",
    [
        "user@bücher.de",
        "Zoë <zoe@bücher.de>",
        '"Doe, John" <josé@example.com>',
        '"a \\"quoted\\" name" <用户@例え.テスト>',
        "Ünïcödé Name <a@example.com>",
        "x@[127.0.0.1]",
        '"semi;colon" <s@example.com>',
    ],
)
def test_an_accepted_address_renders_and_reads_back_as_itself(written: str) -> None:
    [address] = parse({**message("m1"), "to": [written]}).to
    rendered = format_address(address)
    assert parse({**message("m1"), "to": [rendered]}).to == [address]


# ---------------------------------------------------------------- 6: structured headers


@pytest.mark.parametrize(
    ("sender", "domain"),
    [
        ("user@bücher.de", "xn--bcher-kva.de"),
        ("a@例え.テスト", "xn--r8jz45g.xn--zckzah"),
        ("josé@example.com", "example.com"),
        ("a@[127.0.0.1]", "[127.0.0.1]"),
    ],
)
def test_a_generated_message_id_is_ascii_with_the_domains_a_label(sender: str, domain: str) -> None:
    message_id = parse({**message("m1"), "from": sender}).message_id
    assert message_id.isascii() and message_id.endswith(f"@{domain}>")
    assert str(mail_of(**{"from": sender})["Message-ID"]).isascii()


def test_message_id_domain_goes_as_its_a_label() -> None:
    config = Config({"service": {"message_id_domain": "bücher.de"}}, environ={})
    assert config.service.message_id_domain == "xn--bcher-kva.de"
    with pytest.raises(ConfigError, match=r"\[service\] message_id_domain"):
        Config({"service": {"message_id_domain": "not a domain"}}, environ={})


@pytest.mark.parametrize("value", ["<é@example.com>", "<a@bücher.de>", "<a@b\u200b.com>"])
def test_a_non_ascii_message_id_is_refused(value: str) -> None:
    assert rejection(message_id=value).startswith("invalid message_id: must be ASCII")


@pytest.mark.parametrize(
    "value", ["<a b@example.com>", "<a@b@c>", "<@example.com>", "<a@>", "<a..b@c>", "a@b>"]
)
def test_a_message_id_that_is_no_msg_id_is_refused(value: str) -> None:
    assert rejection(message_id=value).startswith("invalid message_id: expected <local@domain>")


@pytest.mark.parametrize("value", ["abc.123@mail.example.com", "<a+b@[192.0.2.1]>", "<x@h>"])
def test_a_message_id_goes_out_as_given(value: str) -> None:
    mail = mail_of(message_id=value)
    assert str(mail["Message-ID"]) == f"<{value.strip('<>')}>"
    assert not mail["Message-ID"].defects


@pytest.mark.parametrize(
    "mime_type", ["téxt/plain", "text/pla\u0131n", "text/pdf; x=1", "a/b/c", "/x"]
)
def test_a_mime_type_that_is_no_ascii_type_is_refused(mime_type: str) -> None:
    attachment = {"filename": "a.pdf", "storage_path": "v:x", "mime_type": mime_type}
    assert rejection(attachments=[attachment]).startswith("invalid attachments[0].mime_type: ")


# ---------------------------------------------------------------- 7: never sendable


@pytest.mark.parametrize(("field", "limit"), [("id", MAX_ID), ("message_id", MAX_ID)])
def test_ids_are_at_most_250_characters(field: str, limit: int) -> None:
    value = "x" * limit if field == "id" else f"<{'x' * (limit - 14)}@example.com>"
    assert len(value) == limit
    mail = mail_of(**{field: value})  # within the line limit: the longest go out
    assert len(str(mail["X-GMP-ID" if field == "id" else "Message-ID"])) >= limit
    too_long = value + "x" if field == "id" else f"<{'x' * (limit - 13)}@example.com>"
    assert rejection(**{field: too_long}) == (
        f"invalid {field}: String should have at most {limit} characters"
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "s"},
        {"headers": {"X-Long": "v"}},
        {"from_name": "n"},
        {"to": ['"{}" <r@example.com>']},
        {"to": ['"{}" <josé@example.com>']},
        {"attachments": [{"filename": "{}.pdf", "storage_path": "v:x"}]},
    ],
    ids=["subject", "header", "from_name", "display name", "display name (RFC 6532)", "filename"],
)
@pytest.mark.parametrize("char", ["x", "é", "東", "😀", " "])
def test_header_text_up_to_its_limit_is_folded_and_beyond_is_refused(
    changes: dict[str, Any], char: str
) -> None:
    def filled(length: int) -> dict[str, Any]:
        text = ("a" + char * length)[:length]
        return _fill(changes, text)

    longest = MAX_HEADER_TEXT - (4 if "attachments" in changes else 0)
    mail_of(**{**{"from": "s@example.com"}, **filled(longest)})  # lines within 998 octets
    if char != " ":  # spaces are dropped or collapsed: the text gets shorter
        with pytest.raises(InvalidInput, match="4096 characters"):
            parse({**message("m1"), **filled(MAX_HEADER_TEXT + 1)})


def _fill(template: Any, text: str) -> Any:
    if isinstance(template, str):
        return text if template in ("s", "v", "n") else template.replace("{}", text)
    if isinstance(template, list):
        return [_fill(item, text) for item in template]
    if isinstance(template, dict):
        return {key: _fill(value, text) for key, value in template.items()}
    return template


def test_at_most_100_custom_headers() -> None:
    parse({**message("m1"), "headers": {f"X-H{i}": "v" for i in range(100)}})
    assert rejection(headers={f"X-H{i}": "v" for i in range(101)}).startswith("invalid headers: ")


@pytest.mark.parametrize("field", ["id", "subject", "body", "to", "headers", "attachments"])
def test_a_lone_surrogate_is_refused_in_every_field(field: str) -> None:
    bad = "a\ud800b"
    changes = {
        "id": {"id": bad},
        "subject": {"subject": bad},
        "body": {"body": bad},
        "to": {"to": [f"{bad}@example.com"]},
        "headers": {"headers": {"X-A": bad}},
        "attachments": {"attachments": [{"filename": "a.pdf", "storage_path": f"v:{bad}"}]},
    }[field]
    assert "lone surrogate" in rejection(**changes)


# ---------------------------------------------------------------- 10: what the docs promise


@pytest.mark.parametrize(
    "name",
    [
        "Content-Disposition",
        "content-type",
        "CONTENT-TRANSFER-ENCODING",
        "Content-ID",
        "Content-Description",
        "Content-Language",
        "Content-Location",
        "Content-Base64-Whatever",
        "MIME-Version",
        "mime-version",
    ],
)
def test_mime_headers_cannot_be_set_through_headers(name: str) -> None:
    assert (
        rejection(headers={name: "x"}) == f"invalid header: {name} may not be set through headers"
    )


# ---------------------------------------------------------------- 11: smaller ones

CONTROLS = [chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]] + ["\u2028", "\u2029"]


@pytest.mark.parametrize("char", [*CONTROLS, " "], ids=repr)
def test_a_host_with_a_control_character_or_a_space_is_refused(char: str) -> None:
    for host in (f"smtp{char}example.com", f"smtp.example.com{char}", f"{char}smtp.example.com"):
        with pytest.raises(InvalidInput, match=r"^invalid host: "):
            parse_account({"id": "a", "host": host})


@pytest.mark.parametrize(
    "host", ["smtp.example.com", "localhost", "mail_relay-1.lan", "127.0.0.1", "::1", "bücher.de"]
)
def test_host_names_and_addresses_are_accepted(host: str) -> None:
    assert parse_account({"id": "a", "host": host}).host == host


@pytest.mark.parametrize("char", CONTROLS, ids=repr)
def test_an_account_id_or_user_with_a_control_character_is_refused(char: str) -> None:
    for field in ("id", "user"):
        with pytest.raises(InvalidInput, match=rf"^invalid {field}: "):
            parse_account({"id": "a", "host": "h", field: f"x{char}y"})


def test_deferred_ts_at_most_max_defer_seconds_ahead() -> None:
    now = time.time()
    ahead = {"max_defer_seconds": 3600, "now": now}
    assert parse({**message("m1"), "deferred_ts": now + 3600}, **ahead).deferred_ts == now + 3600
    for too_far in (now + 3601, 1e300, 2**62):
        with pytest.raises(InvalidInput, match=r"^invalid deferred_ts: more than 3600 seconds"):
            parse({**message("m1"), "deferred_ts": too_far}, **ahead)
    assert parse({**message("m1"), "deferred_ts": 0}).deferred_ts == 0  # the past: due now


def test_max_defer_seconds_is_a_year_by_default() -> None:
    assert Config({}, environ={}).service.max_defer_seconds == 365 * 86400
    with pytest.raises(InvalidInput, match=r"more than 31536000 seconds ahead"):
        parse({**message("m1"), "deferred_ts": time.time() + 366 * 86400})


BIDI = [chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]]


@pytest.mark.parametrize("char", BIDI, ids=lambda c: f"U+{ord(c):04X}")
def test_bidi_controls_are_refused_in_display_names_and_file_names(char: str) -> None:
    for field, changes in {
        "to": {"to": [f'"Bank{char}moc.live" <a@example.com>']},
        "from": {"from": f"Bank{char} <a@example.com>"},
        "cc": {"cc": f"x{char}y <c@example.com>"},
        "reply_to": {"reply_to": f"x{char} <r@example.com>"},
        "from_name": {"from": "a@example.com", "from_name": f"x{char}"},
    }.items():
        assert rejection(**changes) == (
            f"invalid address: {field} display name contains a bidirectional control "
            "character (U+202A-U+202E, U+2066-U+2069)"
        )
    file = {"filename": f"invoice{char}fdp.exe", "storage_path": "v:x"}
    assert rejection(attachments=[file]).startswith("invalid attachments[0].filename: contains a")
    # elsewhere (a subject in Hebrew or Arabic may need them) they stay
    assert parse({**message("m1"), "subject": f"a{char}b"}).subject == f"a{char}b"


# ---------------------------------------------------------------- SMTPUTF8, whatever needs it


async def test_a_raw_utf8_header_is_sent_with_smtputf8_even_with_an_ascii_envelope(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    """Reply-To (and a From under an ASCII return_path) is not in the envelope: a mail with
    it as raw UTF-8 (RFC 6532) still needs SMTPUTF8, or it is 8-bit text in a 7-bit
    transaction."""
    await service.add_messages(
        [
            message("reply", reply_to="zoë@bücher.de"),
            message("from", **{"from": "josé@example.com"}, return_path="bounce@example.com"),
            message("ascii"),
        ]
    )
    for message_id in ("reply", "from", "ascii"):
        await events.wait("sent", message_id)
    sent = {mail.gmp_id: mail for mail in sink.mails}
    assert sent["reply"].smtputf8 and sent["from"].smtputf8
    assert not sent["ascii"].smtputf8


@pytest.mark.parametrize("piece", ["é", "東", "😀", "·~", "a%b"])
def test_a_long_file_name_is_cut_between_characters(piece: str) -> None:
    """RFC 2231 continuations: Python's reader decodes each on its own, so a continuation
    that ends inside a UTF-8 sequence read as garbage (an UndecodableBytesDefect)."""
    name = (piece * 300)[:300]
    mail = mail_of(attachments=[{"filename": name, "storage_path": "v:x"}])
    [part] = mail.iter_attachments()
    assert not part["Content-Disposition"].defects
    assert part["Content-Disposition"].params["filename"] == name
    assert part.get_filename() == name
