"""SMTP PIPELINING (RFC 2920): replies that arrive together, or byte by byte, all reach the
right command. A scripted server over real TCP controls exactly how the replies are cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiosmtplib
import pytest
from gmp_smtp.pipelining import PipeliningProtocol, send_pipelined

from gmp_core import Service
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, message

REPLIES = b"250 sender ok\r\n250 rcpt ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n"


class ScriptedServer:
    """Greets, answers EHLO with PIPELINING, then answers the pipelined batch in one go, or
    one byte per write; records the message it was sent."""

    def __init__(self, write: Callable[[asyncio.StreamWriter, bytes], object]) -> None:
        self.write = write
        self.received = b""
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-scripted\r\n250 PIPELINING\r\n")
        await reader.readuntil(b"DATA\r\n")
        await self.write(writer, REPLIES)
        self.received = await reader.readuntil(b"\r\n.\r\n")
        await self.write(writer, b"250 2.0.0 queued\r\n")
        await reader.readline()  # QUIT
        writer.write(b"221 bye\r\n")
        await writer.drain()
        writer.close()


async def all_at_once(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def byte_by_byte(writer: asyncio.StreamWriter, data: bytes) -> None:
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()


async def greeted(port: int) -> aiosmtplib.SMTP:
    """A client connection to the scripted server, past EHLO."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
    await smtp.connect()
    await smtp.ehlo()
    return smtp


@pytest.fixture(params=[all_at_once, byte_by_byte], ids=["together", "byte-by-byte"])
async def scripted(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ScriptedServer, int]]:
    server = ScriptedServer(request.param)
    port = await server.start()
    yield server, port
    assert server.server is not None
    server.server.close()


async def test_every_reply_reaches_its_command(scripted: tuple[ScriptedServer, int]) -> None:
    server, port = scripted
    smtp = await greeted(port)
    assert smtp.supports_extension("pipelining")
    replies = await send_pipelined(
        smtp,
        b"FROM:<a@example.com>",
        [b"TO:<b@example.com>", b"TO:<nobody@example.com>"],
        b"Subject: hi\r\n\r\n.leading dot\r\n",
        timeout=10,
    )
    assert replies.mail.code == 250
    assert [r.code for r in replies.rcpt] == [250, 550]
    assert replies.sent and replies.data.code == 250
    assert server.received == b"Subject: hi\r\n\r\n..leading dot\r\n.\r\n"  # dot-stuffed
    assert (await smtp.quit()).code == 221  # the connection is in step afterwards


@pytest.fixture
def gmp_smtp_sink(either_sink: SmtpSink) -> SmtpSink:
    return either_sink


async def test_the_transport_pipelines_when_offered(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    service: Service = await make_service()
    await service.put_account(account(sink))
    sink.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    await service.add_messages(
        [message("m1", to=["a@example.com", "gone@example.com"]), message("m2")]
    )
    await events.wait("sent", count=2)  # recorded: the connections are back in the pool
    mails = sink.mails
    assert sorted(m.rcpt_tos[0] for m in mails) == ["a@example.com", "rcpt@example.com"]
    transport = service.transports["smtp"]
    pools = transport._pools.values()  # type: ignore[attr-defined]
    protocols = [smtp.protocol for pool in pools for smtp, _ in pool._idle]
    assert protocols, "the connection went back to the pool"
    offered = sink._pipelining
    assert all(isinstance(p, PipeliningProtocol) == offered for p in protocols)


async def stall(writer: asyncio.StreamWriter, data: bytes) -> None:
    await asyncio.Event().wait()  # never answers


async def test_a_silent_server_times_out_the_whole_exchange() -> None:
    server = ScriptedServer(stall)
    port = await server.start()
    smtp = await greeted(port)
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await send_pipelined(smtp, b"FROM:<a@example.com>", [b"TO:<b@example.com>"], b"x", 0.2)
    smtp.close()
    assert server.server is not None
    server.server.close()


async def test_bare_line_ends_are_sent_as_crlf(scripted: tuple[ScriptedServer, int]) -> None:
    server, port = scripted
    smtp = await greeted(port)
    message = b"Subject: x\n\nline one\rline two\n.dot"
    rcpts = [b"TO:<b@example.com>", b"TO:<nobody@example.com>"]  # the script answers two
    await send_pipelined(smtp, b"FROM:<a@example.com>", rcpts, message, 10)
    assert server.received == b"Subject: x\r\n\r\nline one\r\nline two\r\n..dot\r\n.\r\n"
    await smtp.quit()
