"""Hostile but valid messages, sent through real SMTP to the sink (issue #9).

The property tests (tests/test_properties.py) check the bytes the builder makes; this checks
what survives the SMTP conversation too. A body may hold what looks like the end of DATA
("\\r\\n.\\r\\n") or bare CR and LF that some servers read as line ends (the "SMTP smuggling"
trick). Each message must arrive as exactly one mail, with its own text, and nothing
smuggled after it. And a relay whose replies are not UTF-8 must not stop a message's
outcome from being recorded and reported.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gmp_core import Service
from gmp_core.testing import EventLog, ReportReceiver, SmtpSink
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


class MumblingRelay:
    """An SMTP server on 127.0.0.1 whose replies hold bytes that are not UTF-8 (Latin-1
    text, stray 0xFF): to RCPT for one recipient, to DATA for the rest."""

    async def start(self) -> MumblingRelay:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        replies = {
            b"EHLO": b"250-relay.test\r\n250 8BITMIME\r\n",
            b"MAIL": b"250 ok\r\n",
            b"DATA": b"354 go on\r\n",
            b"RSET": b"250 ok\r\n",
            b"NOOP": b"250 ok\r\n",
        }
        writer.write(b"220 relay.test ESMTP\r\n")
        in_data = False
        while line := await reader.readline():
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    writer.write(b"554 5.6.0 Nachricht abgewiesen: Gr\xfc\xdfe \xff\r\n")
                continue
            verb = line[:4].upper()
            if verb == b"RCPT":
                bad = b"nobody" in line
                writer.write(b"550 5.1.1 caf\xe9 unknown\r\n" if bad else b"250 ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(replies.get(verb, b"250 ok\r\n"))
                in_data = verb == b"DATA"
            await writer.drain()
        writer.close()


async def test_a_reply_that_is_not_utf8_is_recorded_and_reported(
    make_service: Any, gmp_report_receiver: ReportReceiver, events: EventLog
) -> None:
    """Once: the reply's stray bytes (kept by aiosmtplib as lone surrogates) could not be
    written by the store, and the message stayed `sending` for ever."""
    relay = await MumblingRelay().start()
    try:
        service = await make_service(proxy_sync={"url": gmp_report_receiver.url})
        await service.put_account(
            {"id": "acc", "host": "127.0.0.1", "port": relay.port, "tls": "none"}
        )
        await service.add_messages(
            [message("rcpt", to=["nobody@example.com"]), message("data", to=["a@example.com"])]
        )
        for message_id in ("rcpt", "data"):
            [failed] = await events.wait("error", message_id)
            assert "\ufffd" in failed.detail
            record, _ = await service.get_message(message_id)
            assert record.status == "error" and record.error == failed.detail
        assert "caf\ufffd unknown" in (await service.get_message("rcpt"))[0].error
        assert "Gr\ufffd\ufffde \ufffd" in (await service.get_message("data"))[0].error
        await gmp_report_receiver.wait(
            lambda receiver: (
                {
                    item["id"]
                    for body in receiver.json_bodies()
                    for item in body["delivery_report"]
                    if item["status"] == "error"
                }
                >= {"rcpt", "data"}
            )
        )
    finally:
        await relay.stop()
