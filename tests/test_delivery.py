"""From add_messages to the SMTP sink: what arrives, in which order, and when."""

from __future__ import annotations

import asyncio
import email.utils
import time

import pytest

from gmp_core import Service
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, message, status_of, wait_until


@pytest.fixture
def gmp_smtp_sink(either_sink: SmtpSink) -> SmtpSink:
    """Every test here runs against a server that pipelines and one that does not."""
    return either_sink


async def test_delivered_with_headers_body_and_envelope(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    result = await service.add_messages(
        [
            message(
                "m1",
                to='"Doe, John" <john@example.com>, jane@example.com',
                cc=["Carl <carl@example.com>"],
                bcc="hidden@example.com",
                reply_to="replies@example.com",
                subject="Grüße, world",
                headers={"X-Campaign": "autumn"},
            )
        ]
    )
    assert result.queued == 1 and result.rejected == []

    [mail] = await sink.wait_for(1)
    msg = mail.message
    assert mail.mail_from == "sender@example.com"
    assert sorted(mail.rcpt_tos) == [
        "carl@example.com",
        "hidden@example.com",
        "jane@example.com",
        "john@example.com",
    ]
    assert email.utils.getaddresses([str(msg["To"])]) == [
        ("Doe, John", "john@example.com"),
        ("", "jane@example.com"),
    ]
    assert msg["Cc"] == "Carl <carl@example.com>"
    assert msg["Bcc"] is None and b"hidden@example.com" not in mail.data
    assert msg["Reply-To"] == "replies@example.com"
    assert msg["Subject"] == "Grüße, world"
    assert msg["X-Campaign"] == "autumn"
    assert msg["X-GMP-ID"] == "m1"
    assert email.utils.parsedate_to_datetime(str(msg["Date"])).timestamp() <= time.time() + 1
    assert msg["Message-ID"].endswith("@example.com>")
    assert msg.get_content().strip() == "body m1"

    await events.wait("sent", "m1")
    record, history = await service.get_message("m1")
    assert record.status == "sent" and record.sent_ts is not None
    assert [e.kind for e in history] == ["queued", "sent"]
    assert record.payload is not None and record.payload["message_id"] == msg["Message-ID"]


async def test_html_with_plain_body_is_multipart_alternative(
    service: Service, sink: SmtpSink
) -> None:
    await service.add_messages([message("m1", body="plain text", html="<p>html</p>")])
    [mail] = await sink.wait_for(1)
    msg = mail.message
    assert msg.get_content_type() == "multipart/alternative"
    parts = [(p.get_content_type(), p.get_content().strip()) for p in msg.iter_parts()]
    assert parts == [("text/plain", "plain text"), ("text/html", "<p>html</p>")]


async def test_html_content_type(service: Service, sink: SmtpSink) -> None:
    await service.add_messages([message("m1", body="<b>hi</b>", content_type="html")])
    [mail] = await sink.wait_for(1)
    assert mail.message.get_content_type() == "text/html"


async def test_message_id_given_by_client_is_kept(service: Service, sink: SmtpSink) -> None:
    await service.add_messages([message("m1", message_id="<given-1@client.example>")])
    [mail] = await sink.wait_for(1)
    assert mail.message["Message-ID"] == "<given-1@client.example>"


async def test_message_id_is_kept_across_retries(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    seen: list[str] = []

    def fail_first(envelope: object) -> str | None:
        content = envelope.content  # type: ignore[attr-defined]
        seen.append(email.message_from_bytes(content)["Message-ID"])
        return "451 4.3.0 try again later" if len(seen) == 1 else None

    sink.data_reply = fail_first
    await service.add_messages([message("m1")])
    await events.wait("sent", "m1")
    assert len(seen) == 2 and seen[0] == seen[1]


async def test_priority_order(make_service: ServiceFactory, sink: SmtpSink) -> None:
    service = await make_service()
    await service.put_account(account(sink, max_connections=1))
    await service.set_active(False)
    await service.add_messages([message(f"low{i}", priority="low") for i in range(3)])
    await service.add_messages([message("high", priority=1), message("medium")])
    await service.add_messages([message("now", priority="immediate")])
    await service.set_active(True)
    mails = await sink.wait_for(6)
    assert [m.gmp_id for m in mails] == ["now", "high", "medium", "low0", "low1", "low2"]


async def test_immediate_lane_does_not_wait_behind_a_full_pipeline(
    make_service: ServiceFactory, sink: SmtpSink
) -> None:
    # Two sends at once, four messages in hand: the pipeline is full of low-priority mail.
    service = await make_service(service={"max_concurrent_sends": 2})
    await service.put_account(account(sink, max_connections=2))
    sink.hold = asyncio.Event()
    await service.add_messages([message(f"bulk{i}", priority="low") for i in range(40)])
    await sink.wait_held(2)

    await service.add_messages([message("urgent", priority=0)])

    async def urgent_claimed() -> bool:
        return await status_of(service, "urgent") == "sending"

    await wait_until(urgent_claimed)
    sink.hold.set()
    mails = await sink.wait_for(41)
    order = [m.gmp_id for m in mails]
    # It goes out on the first connection that frees up: after the two sends under way,
    # alongside at most one other (two connections), ahead of the 37 others in hand or queued.
    assert order.index("urgent") <= 3


async def test_deferred_ts_is_honoured(service: Service, sink: SmtpSink, events: EventLog) -> None:
    not_before = time.time() + 1.0
    await service.add_messages([message("later", deferred_ts=not_before), message("now")])
    assert await status_of(service, "later") == "scheduled"
    await events.wait("sent", "later")
    assert [m.gmp_id for m in sink.mails] == ["now", "later"]
    record, _ = await service.get_message("later")
    assert record.sent_ts is not None and record.sent_ts >= not_before


async def test_suspend_stops_sending_and_activate_resumes(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    await service.set_active(False)
    await service.add_messages([message("m1")])
    assert (await service.status())["active"] is False
    service.run_now()
    assert await status_of(service, "m1") == "queued"
    assert sink.mails == []
    await service.set_active(True)
    await sink.wait_for(1)


async def test_many_messages_all_delivered_once(service: Service, sink: SmtpSink) -> None:
    await service.add_messages([message(f"m{i}") for i in range(300)])
    await sink.wait_for(300)
    assert sorted(sink.by_id()) == sorted(f"m{i}" for i in range(300))
    assert all(len(copies) == 1 for copies in sink.by_id().values())
