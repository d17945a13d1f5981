"""MIME building: what mail clients will parse back."""

from __future__ import annotations

import base64
import email
import email.policy

import pytest

from gmp_core.intake import parse_message
from gmp_core.mime import build_mime
from gmp_core.models import Attachment, OutgoingMessage
from tests.support import message


def build(
    attachments: list[tuple[Attachment, bytes]] | None = None, **fields: object
) -> email.message.EmailMessage:
    parsed = parse_message(message("m1", **fields), default_priority=2, default_account=None)
    data = build_mime(OutgoingMessage(parsed, attempt=1), attachments or [])
    assert data.count(b"\n") == data.count(b"\r\n")  # SMTP's CRLF everywhere, no bare LF
    # Read it as a mail store would, with local line ends (Python's parser keeps CR in text).
    result = email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert isinstance(result, email.message.EmailMessage)
    return result


def test_non_ascii_headers_and_body_round_trip() -> None:
    msg = build(
        subject="Prénom — 東京",
        body="Ciao è già ora\n" * 3,
        to="Zoë Ünicode <zoe@example.com>",
        headers={"X-Note": "naïve"},
    )
    assert msg["Subject"] == "Prénom — 東京"
    assert str(msg["To"]) == "Zoë Ünicode <zoe@example.com>"
    assert msg["X-Note"] == "naïve"
    assert msg.get_content() == "Ciao è già ora\n" * 3


def test_long_lines_are_encoded() -> None:
    body = "x" * 3000
    msg = build(body=body)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content().rstrip("\n") == body


def test_attachments_with_types_and_non_ascii_names() -> None:
    msg = build(
        attachments=[
            (Attachment("report.pdf", "v:report.pdf"), b"%PDF-1.4 data"),
            (Attachment("résumé.txt", "v:r"), b"hello"),
            (Attachment("blob", "v:b", mime_type="image/png"), b"\x89PNG"),
        ],
        body="see attached",
        html="<p>see attached</p>",
    )
    assert msg.get_content_type() == "multipart/mixed"
    body, *files = list(msg.iter_parts())
    assert body.get_content_type() == "multipart/alternative"
    decoded = [(f.get_filename(), f.get_content_type(), f.get_payload(decode=True)) for f in files]
    assert decoded == [
        ("report.pdf", "application/pdf", b"%PDF-1.4 data"),
        ("résumé.txt", "text/plain", b"hello"),
        ("blob", "image/png", b"\x89PNG"),
    ]


def test_bcc_never_in_headers() -> None:
    msg = build(bcc=["secret@example.com"])
    assert msg["Bcc"] is None


@pytest.mark.parametrize(
    "size", [0, 1, 56, 57, 58, 57 * 1024 - 1, 57 * 1024, 57 * 1024 + 1, 200_001]
)
def test_attachment_text_is_rfc2045_base64_in_76_character_lines(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    msg = build(attachments=[(Attachment("a.bin", "v:a"), data)])
    [part] = list(msg.iter_attachments())
    assert part["Content-Transfer-Encoding"] == "base64"
    raw = part.get_payload(decode=False).encode()
    assert raw.rstrip(b"\n") == base64.encodebytes(data).rstrip(b"\n")  # the stdlib's layout
    assert part.get_payload(decode=True) == data
