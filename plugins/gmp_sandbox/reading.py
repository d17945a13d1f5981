"""Captured mail as the API shows it: a listing entry, or the message read like a mail reader
would (headers decoded, text parts, attachments named but not included)."""

from __future__ import annotations

import email.message
import email.parser
import email.policy
from datetime import UTC, datetime
from typing import Any

from gmp_core import Capture

_PARSER = email.parser.BytesParser(policy=email.policy.default)


def summary(capture: Capture) -> dict[str, Any]:
    """One entry of ``GET /sandbox/messages``."""
    return {
        "id": capture.id,
        "account_id": capture.account_id,
        "gmp_id": capture.gmp_id,
        "envelope": {"from": capture.mail_from, "to": capture.rcpt_to},
        "subject": capture.subject,
        "date": capture.date,
        "size": capture.size,
        "captured_at": datetime.fromtimestamp(capture.captured_at, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
    }


def details(capture: Capture) -> dict[str, Any]:
    """``GET /sandbox/messages/{id}``: the summary, every header, the text parts and what the
    attachments are. Parsing a large message takes a while: call it off the event loop."""
    assert capture.data is not None
    # Read as a mail store would, with local line ends: the parser keeps CR in texts.
    parsed = _PARSER.parsebytes(capture.data.replace(b"\r\n", b"\n"))
    texts: list[dict[str, str]] = []
    attachments: list[dict[str, Any]] = []
    for part in parsed.walk():
        if part.is_multipart():
            continue
        if part.get_content_maintype() == "text" and part.get_content_disposition() is None:
            texts.append({"content_type": part.get_content_type(), "text": _text(part)})
        else:
            payload = part.get_payload(decode=True)
            attachments.append(
                {
                    "filename": part.get_filename(),
                    "content_type": part.get_content_type(),
                    "size": len(payload) if isinstance(payload, bytes) else 0,
                }
            )
    return {
        **summary(capture),
        "headers": [{"name": name, "value": str(value)} for name, value in parsed.items()],
        "text": texts,
        "attachments": attachments,
    }


def _text(part: email.message.Message) -> str:
    """The part's text; an unknown charset is read as UTF-8, never failing the request."""
    try:
        text: str = part.get_content()  # type: ignore[attr-defined]
    except (LookupError, UnicodeDecodeError):
        raw = part.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    return text
