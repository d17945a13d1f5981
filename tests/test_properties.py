"""Property tests of intake and MIME building (issue #9).

The promise: whatever a client sends, intake either rejects it with a reason
(:class:`InvalidInput`) or the message built from it reads back, through Python's email parser
with the modern policy, to the very fields intake accepted: From, To and Cc (display names
and addresses), Subject, the custom headers, the body, the html part, attachment filenames.

Inputs mix well-formed values (so most examples get through intake and exercise the builder)
with arbitrary text, including control characters, quotes, commas, encoded-word look-alikes
and non-ASCII, so the reject path is exercised too.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils
import os
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gmp_core.intake import InvalidInput, parse_message
from gmp_core.mime import build_mime
from gmp_core.models import Address, Message, OutgoingMessage

# Bounded for CI, and the same examples on every CI run (CI=true) so a red build is never
# luck; locally each run explores new ones. GMP_PROPERTY_PROFILE=deep (5,000 examples) or
# GMP_PROPERTY_EXAMPLES=N digs deeper.
DEEP = os.environ.get("GMP_PROPERTY_PROFILE") == "deep"
SETTINGS = settings(
    max_examples=int(os.environ.get("GMP_PROPERTY_EXAMPLES", "5000" if DEEP else "150")),
    derandomize=bool(os.environ.get("CI")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

# ---------------------------------------------------------------- strategies

# Text as hostile as it gets: any code point but surrogates (JSON cannot carry them).
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
# Printable text with the characters that matter in headers: quotes, commas, backslashes,
# angle brackets, encoded-word markers, runs of spaces, non-ASCII.
tricky_text = st.lists(
    st.one_of(
        st.sampled_from(list(string.ascii_letters + string.digits + ' ,;:"\\<>()@.=?_-')),
        st.sampled_from(["é", "ü", "東", "京", "—", "😀", "=?", "?=", "=?utf-8?q?x?=", "  "]),
    ),
    max_size=20,
).map("".join)
long_word = st.builds(
    lambda c, n: c * n, st.sampled_from(["x", "é", "%", "東"]), st.integers(60, 1200)
)
header_text = st.one_of(tricky_text, any_text, long_word)

atom = st.text(
    string.ascii_lowercase + string.digits + "!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=12
)
# No "--" in a label: IDNA reserves it (xn--), so an internationalised address rejects it.
label = st.from_regex(r"[a-z0-9]{1,6}(-[a-z0-9]{1,6})?", fullmatch=True)
domain = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(label, min_size=1, max_size=3),
    st.sampled_from(["com", "org", "it"]),
)
addr_spec = st.one_of(
    st.builds(lambda local, host: f"{local}@{host}", atom, domain),
    st.builds(
        lambda local, host: f"{local}@{host}", st.sampled_from(["josé", "用户", "zoë.x"]), domain
    ),
)
display_name = st.one_of(st.just(""), tricky_text)


def write_address(pair: Address) -> str:
    """What a careful client writes: formataddr (which refuses a non-ASCII addr-spec)."""
    name, addr = pair
    if addr.isascii():
        return email.utils.formataddr(pair)
    return f'"{email.utils.quote(name)}" <{addr}>' if name else addr


@st.composite
def address_field(draw: st.DrawFn) -> str | list[str]:
    """How clients write recipients: formataddr output, a raw "Name <a@b>", or junk."""

    def one() -> str:
        name, addr = draw(display_name), draw(addr_spec)
        return draw(
            st.sampled_from(
                [
                    write_address((name, addr)),
                    f"{name} <{addr}>" if name else addr,
                    addr,
                ]
            )
        )

    kind = draw(st.sampled_from(["list", "comma", "junk"]))
    if kind == "junk":
        return draw(any_text)
    items = [one() for _ in range(draw(st.integers(1, 3)))]
    return items if kind == "list" else ", ".join(items)


header_name = st.one_of(st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True), any_text)
filename = st.one_of(
    st.builds(lambda stem, ext: stem + ext, tricky_text, st.sampled_from([".pdf", ".txt", ""])),
    any_text,
    long_word,
)
body_text = st.one_of(
    st.text(max_size=200),
    st.text(st.sampled_from(list("ab \t.\n\r=")), max_size=200),
    st.builds(lambda n: "x" * n, st.integers(990, 1010)),  # around the 998-character line limit
)


@st.composite
def message_item(draw: st.DrawFn) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": draw(st.one_of(st.just("m1"), any_text, tricky_text)),
        "account_id": "acc",
        "from": draw(
            st.one_of(st.builds(write_address, st.tuples(display_name, addr_spec)), any_text)
        ),
        "to": draw(address_field()),
        "subject": draw(header_text),
        "body": draw(body_text),
    }
    if draw(st.booleans()):
        item["cc"] = draw(address_field())
    if draw(st.booleans()):
        item["reply_to"] = draw(st.builds(write_address, st.tuples(display_name, addr_spec)))
    if draw(st.booleans()):
        item["message_id"] = draw(
            st.one_of(st.builds(lambda local, host: f"<{local}@{host}>", atom, domain), any_text)
        )
    if draw(st.booleans()):
        item["headers"] = draw(st.dictionaries(header_name, header_text, max_size=3))
    if draw(st.booleans()):
        item["html"] = draw(body_text)
    if draw(st.booleans()):
        item["content_type"] = "html"
    if draw(st.booleans()):
        names = draw(st.lists(filename, min_size=1, max_size=3))
        item["attachments"] = [{"filename": n, "storage_path": "base64:SGk="} for n in names]
    return item


# ---------------------------------------------------------------- reading the built message back


def parse(item: dict[str, Any]) -> Message:
    return parse_message(item, default_priority=2, default_account=None)


def built(message: Message) -> email.message.EmailMessage:
    attachments = [(a, b"content") for a in message.attachments]
    data = build_mime(OutgoingMessage(message, attempt=1), attachments)
    # RFC 5322 §2.1.1: no line over 998 octets (servers refuse or cut such mail); CRLF ends.
    assert data.count(b"\n") == data.count(b"\r\n")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    data = data.replace(b"\r\n", b"\n")  # as a mail store keeps it (the parser keeps CR)
    # An internationalised address travels as raw UTF-8 (RFC 6532, sent with SMTPUTF8);
    # the stdlib's bytes parser would leave it surrogate-escaped, so such a mail is read as
    # text (its parts are 7bit, quoted-printable or base64: the rest is ASCII anyway).
    parsed = email.message_from_string(data.decode(), policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def addresses(mail: email.message.EmailMessage, name: str) -> list[Address]:
    header = mail[name]
    if header is None:
        return []
    return [(a.display_name, a.addr_spec) for a in header.addresses]


def as_read(written: str) -> Address:
    """The one address in ``written`` as a mail reader shows it: encoded words decoded, and
    runs of spaces collapsed and dropped at the ends (intake does that: readers differ)."""
    [address] = email.policy.default.header_factory("To", written).addresses
    return (" ".join(address.display_name.split()), address.addr_spec)


def lines(text: str) -> str:
    """Line endings as a mail reader sees them: CR, LF and CRLF are all one line break."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def assert_reads_back(message: Message, mail: email.message.EmailMessage) -> None:
    assert addresses(mail, "From") == [message.sender]
    assert addresses(mail, "To") == message.to
    assert addresses(mail, "Cc") == message.cc
    assert addresses(mail, "Reply-To") == ([message.reply_to] if message.reply_to else [])
    assert mail["Bcc"] is None
    assert str(mail["X-GMP-ID"]) == message.id
    assert str(mail["Message-ID"]) == message.message_id and message.message_id.isascii()
    assert str(mail["Subject"]) == message.subject
    for name, value in message.headers.items():
        assert str(mail[name]) == value, name
    text_type = "html" if message.content_type == "html" else "plain"
    body = mail.get_body((text_type,))
    assert body is not None
    assert lines(body.get_content()) == lines(message.body)
    if message.html is not None and message.content_type == "plain":
        html = mail.get_body(("html",))
        assert html is not None
        assert lines(html.get_content()) == lines(message.html)
    filenames = [part.get_filename() for part in mail.iter_attachments()]
    assert filenames == [a.filename for a in message.attachments]


# ---------------------------------------------------------------- the properties


@SETTINGS
@given(item=message_item())
def test_any_message_is_rejected_with_a_reason_or_reads_back(item: dict[str, Any]) -> None:
    try:
        message = parse(item)
    except InvalidInput as exc:
        assert str(exc).strip()  # a reason the client can act on
        return
    assert_reads_back(message, built(message))


@SETTINGS
@given(pairs=st.lists(st.tuples(display_name, addr_spec), min_size=1, max_size=4))
def test_well_formed_recipients_survive_intake(pairs: list[Address]) -> None:
    """formataddr output, as a list or one comma string, comes out of intake unchanged:
    quoted display names with commas and quotes included (SPEC §2)."""
    written = [write_address(pair) for pair in pairs]
    for to in (written, ", ".join(written)):
        if any("=?" in as_read(address)[0] for address in written):
            with pytest.raises(InvalidInput, match="display name contains '=\\?'"):
                parse({"id": "m1", "account_id": "acc", "from": "s@example.com", "to": to})
            continue
        message = parse({"id": "m1", "account_id": "acc", "from": "s@example.com", "to": to})
        assert message.to == [as_read(address) for address in written]
        assert_reads_back(message, built(message))


# ---------------------------------------------------------------- what the properties found
#
# Each case below once failed one of the properties above; kept as plain examples so they
# are checked on every run whatever hypothesis happens to draw.


def message_with(**fields: Any) -> Message:
    return parse(
        {"id": "m1", "account_id": "acc", "from": "s@example.com", "to": "r@example.com", **fields}
    )


def test_literal_encoded_word_text_reads_back_as_written() -> None:
    """A reader decodes ``=?utf-8?q?x?=`` into ``x``: such text now goes out encoded."""
    message = message_with(
        subject="about =?utf-8?q?x?= words",
        headers={"X-Note": "=?utf-8?q?x?="},
        attachments=[{"filename": "=?utf-8?q?x?=.pdf", "storage_path": "base64:SGk="}],
    )
    mail = built(message)
    assert str(mail["Subject"]) == "about =?utf-8?q?x?= words"
    assert str(mail["X-Note"]) == "=?utf-8?q?x?="
    assert [p.get_filename() for p in mail.iter_attachments()] == ["=?utf-8?q?x?=.pdf"]


def test_display_names_encoded_by_formataddr_are_stored_decoded() -> None:
    written = email.utils.formataddr(("Zoë, Ünicode", "zoe@example.com"), charset="utf-8")
    assert written.startswith("=?utf-8?")
    message = message_with(to=[written])
    assert message.to == [("Zoë, Ünicode", "zoe@example.com")]
    assert addresses(built(message), "To") == message.to


def test_a_display_name_with_a_stray_encoded_word_marker_is_rejected() -> None:
    with pytest.raises(InvalidInput, match=r"invalid address: to display name contains '=\?'"):
        message_with(to='"a =?b" <a@example.com>')


def test_an_address_list_the_stdlib_parser_chokes_on_is_rejected() -> None:
    """``email.headerregistry`` raises AttributeError on this group syntax (a CPython bug)."""
    with pytest.raises(InvalidInput, match="invalid address: "):
        message_with(to="=?:;<a@example.com>")


def test_spaces_readers_would_not_show_are_dropped_at_intake() -> None:
    message = message_with(
        to='"  Ada   Lovelace " <ada@example.com>',
        subject="  hello  ",
        headers={"X-Tag": " v "},
        attachments=[{"filename": " report.pdf  ", "storage_path": "base64:SGk="}],
    )
    assert message.to == [("Ada Lovelace", "ada@example.com")]
    assert (message.subject, message.headers) == ("hello", {"X-Tag": "v"})
    assert message.attachments[0].filename == "report.pdf"
    assert_reads_back(message, built(message))


@pytest.mark.parametrize("brk", ["\x1e", "\x85", "\u2028", "\x0b"], ids=repr)
def test_characters_readers_break_lines_at_are_rejected_in_headers(brk: str) -> None:
    with pytest.raises(InvalidInput, match="invalid header: Subject contains"):
        message_with(subject=f"a{brk}b")


@pytest.mark.parametrize("text", ["x" * 2000, "é" * 2000, "a%b" * 400, "東" * 300])
def test_long_header_text_stays_within_the_line_limit(text: str) -> None:
    """Once: a 2,000-character word went out as a 2,000-octet line (the limit is 998)."""
    message = message_with(
        subject=text,
        headers={"X-Long": text},
        attachments=[{"filename": text, "storage_path": "base64:SGk="}],
        to=[f'"{text[:300]}" <r@example.com>', "josé@example.com"],
    )
    mail = built(message)  # asserts the line limit
    assert str(mail["Subject"]) == text and str(mail["X-Long"]) == text
    assert [p.get_filename() for p in mail.iter_attachments()] == [text]
