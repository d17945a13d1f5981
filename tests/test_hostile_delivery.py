"""Hostile but valid messages, sent through real SMTP to the sink (issue #9).

The property tests (tests/test_properties.py) check the bytes the builder makes; this checks
what survives the SMTP conversation too. A body may hold what looks like the end of DATA
("\\r\\n.\\r\\n") or bare CR and LF that some servers read as line ends (the "SMTP smuggling"
trick). Each message must arrive as exactly one mail, with its own text, and nothing
smuggled after it.
"""

from __future__ import annotations

from gmp_core import Service
from gmp_core.testing import SmtpSink
from tests.support import message

SMUGGLING_BODIES = {
    "crlf-dot": "before\r\n.\r\nMAIL FROM:<evil@example.com>\r\nafter",
    "lf-dot": "before\n.\nRCPT TO:<victim@example.com>\nafter",
    "bare-cr-dot": "before\r.\rDATA\rafter",
    "leading-dot": ".starts with a dot\n..two dots",
}


def lines(text: str) -> list[str]:
    """Line ends normalised: mail readers treat CR, LF and CRLF all as one line break."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


async def test_smuggling_bodies_arrive_as_one_mail_each(service: Service, sink: SmtpSink) -> None:
    batch = [message(id, body=body) for id, body in SMUGGLING_BODIES.items()]
    result = await service.add_messages(batch)
    assert result.queued == len(batch) and result.rejected == []

    received = await sink.wait_for(len(batch))
    assert len(received) == len(batch)
    by_id = {mail.gmp_id: mail for mail in received}
    assert set(by_id) == set(SMUGGLING_BODIES)
    for id, body in SMUGGLING_BODIES.items():
        mail = by_id[id]
        assert mail.mail_from == "sender@example.com"
        assert mail.rcpt_tos == ["rcpt@example.com"]
        assert lines(mail.message.get_content().rstrip("\r\n")) == lines(body)


async def test_tricky_headers_arrive_as_written(service: Service, sink: SmtpSink) -> None:
    long_name = "résumé-" * 60 + ".pdf"
    result = await service.add_messages(
        [
            message(
                "m1",
                to=["=?utf-8?b?Wm/DqywgRG9l?= <zoe@example.com>", '"Doe, John" <j@example.com>'],
                subject="about =?utf-8?q?x?= and " + "x" * 1200,
                headers={"X-Note": "=?utf-8?q?not-encoded?="},
                attachments=[{"filename": long_name, "storage_path": "base64:SGk="}],
            )
        ]
    )
    assert result.queued == 1, result.rejected
    [mail] = await sink.wait_for(1)
    msg = mail.message
    assert [(a.display_name, a.addr_spec) for a in msg["To"].addresses] == [
        ("Zoë, Doe", "zoe@example.com"),
        ("Doe, John", "j@example.com"),
    ]
    assert str(msg["Subject"]) == "about =?utf-8?q?x?= and " + "x" * 1200
    assert str(msg["X-Note"]) == "=?utf-8?q?not-encoded?="
    assert [part.get_filename() for part in msg.iter_attachments()] == [long_name]
    assert max(len(line) for line in mail.data.splitlines()) <= 998
