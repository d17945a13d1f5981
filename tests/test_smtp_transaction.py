"""The SMTP transaction we drive ourselves: with PIPELINING (RFC 2920), replies that arrive
together, or byte by byte, all reach the right command; without it, one command at a time,
stopping where the server refuses. Scripted servers over real TCP control exactly what is
answered and how the replies are cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiosmtplib
import pytest
from gmp_smtp.transaction import send_transaction

from gmp_core import Service
from tests.support import EventLog, ServiceFactory, message

RCPTS = [b"TO:<b@example.com>", b"TO:<nobody@example.com>"]
REPLIES = b"250 sender ok\r\n250 rcpt ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n"


class ScriptServer:
    """A scripted SMTP server on 127.0.0.1: greets, then runs :meth:`_session`; keeps the
    message it was sent."""

    def __init__(self) -> None:
        self.received = b""
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted\r\n")
        await self._session(reader, writer)
        await writer.drain()
        writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class PipeliningServer(ScriptServer):
    """Answers EHLO with PIPELINING, then answers the pipelined batch in one go, or one byte
    per write, only once all of it has arrived."""

    def __init__(self, write: Callable[[asyncio.StreamWriter, bytes], Awaitable[None]]) -> None:
        super().__init__()
        self.write = write

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()  # EHLO
        writer.write(b"250-scripted\r\n250 PIPELINING\r\n")
        await reader.readuntil(b"DATA\r\n")
        await self.write(writer, REPLIES)
        self.received = await reader.readuntil(b"\r\n.\r\n")
        await self.write(writer, b"250 2.0.0 queued\r\n")
        await reader.readline()  # QUIT
        writer.write(b"221 bye\r\n")


class StepwiseServer(ScriptServer):
    """No PIPELINING: answers each command as it comes, from ``answers`` (command -> reply),
    250 when none is given; those of the transaction ``delay`` seconds late (a slow server).
    Records the commands."""

    def __init__(self, answers: dict[bytes, bytes], delay: float = 0.0) -> None:
        super().__init__()
        self.answers = answers
        self.delay = delay
        self.commands: list[bytes] = []

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            command = line.rstrip(b"\r\n")
            self.commands.append(command)
            if self.delay and command.startswith((b"MAIL", b"RCPT", b"DATA")):
                await asyncio.sleep(self.delay)  # the server's slowness, not synchronisation
            reply = self.answers.get(command, b"250 ok")
            if command == b"DATA" and reply.startswith(b"354"):
                writer.write(reply + b"\r\n")
                self.received = await reader.readuntil(b"\r\n.\r\n")
                reply = b"250 2.0.0 queued"
            elif command == b"QUIT":
                reply = b"221 bye"
            writer.write(reply + b"\r\n")
            await writer.drain()


async def all_at_once(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def byte_by_byte(writer: asyncio.StreamWriter, data: bytes) -> None:
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()


async def stall(writer: asyncio.StreamWriter, data: bytes) -> None:
    await asyncio.Event().wait()  # never answers


async def greeted(port: int) -> aiosmtplib.SMTP:
    """A client connection to a scripted server, past EHLO."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
    await smtp.connect()
    await smtp.ehlo()
    return smtp


@pytest.fixture(params=[all_at_once, byte_by_byte], ids=["together", "byte-by-byte"])
async def pipelining(request: pytest.FixtureRequest) -> AsyncIterator[tuple[PipeliningServer, int]]:
    server = PipeliningServer(request.param)
    port = await server.start()
    yield server, port
    server.close()


# ---------------------------------------------------------------------- with PIPELINING


async def test_every_reply_reaches_its_command(
    pipelining: tuple[PipeliningServer, int],
) -> None:
    server, port = pipelining
    smtp = await greeted(port)
    assert smtp.supports_extension("pipelining")
    replies = await send_transaction(
        smtp,
        b"FROM:<a@example.com>",
        RCPTS,
        b"Subject: hi\r\n\r\n.leading dot\r\n",
        pipelined=True,
        timeout=10,
    )
    assert replies.mail.code == 250
    assert [r.code for r in replies.rcpt] == [250, 550]
    assert replies.sent and replies.data is not None and replies.data.code == 250
    assert server.received == b"Subject: hi\r\n\r\n..leading dot\r\n.\r\n"  # dot-stuffed
    assert (await smtp.quit()).code == 221  # the connection is in step afterwards


async def test_bare_line_ends_are_sent_as_crlf(pipelining: tuple[PipeliningServer, int]) -> None:
    server, port = pipelining
    smtp = await greeted(port)
    message = b"Subject: x\n\nline one\rline two\n.dot"
    await send_transaction(
        smtp, b"FROM:<a@example.com>", RCPTS, message, pipelined=True, timeout=10
    )
    assert server.received == b"Subject: x\r\n\r\nline one\r\nline two\r\n..dot\r\n.\r\n"
    await smtp.quit()


async def test_the_transport_pipelines_when_offered(
    make_service: ServiceFactory, events: EventLog
) -> None:
    """The scripted server answers only once MAIL, both RCPTs and DATA have all arrived: a
    client waiting for each reply in turn would never get one."""
    server = PipeliningServer(all_at_once)
    port = await server.start()
    service: Service = await make_service(smtp={"command_timeout": 10})
    await service.put_account({"id": "acc", "host": "127.0.0.1", "port": port, "tls": "none"})
    await service.add_messages([message("m1", to=["a@example.com", "gone@example.com"])])
    (sent,) = await events.wait("sent")
    assert sent.data["refused"] == {"gone@example.com": "550 5.1.1 no such user"}
    assert server.received.endswith(b"body m1\r\n.\r\n")
    server.close()


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "stepwise"])
async def test_a_silent_server_times_out(pipelined: bool) -> None:
    server = PipeliningServer(stall) if pipelined else StepwiseServer({}, delay=3600)
    smtp = await greeted(await server.start())
    # The outer bound turns a missing timeout into a failure rather than a hung test.
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        async with asyncio.timeout(10):
            await send_transaction(
                smtp, b"FROM:<a@example.com>", RCPTS, b"x", pipelined=pipelined, timeout=0.2
            )
    smtp.close()
    server.close()


# ---------------------------------------------------------------------- one command at a time


async def stepwise(
    answers: dict[bytes, bytes], delay: float = 0.0
) -> tuple[StepwiseServer, aiosmtplib.SMTP]:
    server = StepwiseServer({b"DATA": b"354 go ahead", **answers}, delay)
    smtp = await greeted(await server.start())
    assert not smtp.supports_extension("pipelining")
    return server, smtp


async def test_one_command_at_a_time_without_pipelining() -> None:
    server, smtp = await stepwise({b"RCPT TO:<nobody@example.com>": b"550 5.1.1 no such user"})
    replies = await send_transaction(
        smtp, b"FROM:<a@example.com>", RCPTS, b"Hi\r\n.dot\r\n", pipelined=False, timeout=10
    )
    assert [r.code for r in replies.rcpt] == [250, 550]
    assert replies.sent and replies.data is not None and replies.data.code == 250
    assert server.commands[1:] == [
        b"MAIL FROM:<a@example.com>",
        b"RCPT TO:<b@example.com>",
        b"RCPT TO:<nobody@example.com>",
        b"DATA",
    ]
    assert server.received == b"Hi\r\n..dot\r\n.\r\n"
    assert (await smtp.quit()).code == 221  # the connection is in step afterwards
    server.close()


async def test_a_refused_sender_stops_the_transaction() -> None:
    server, smtp = await stepwise({b"MAIL FROM:<a@example.com>": b"553 5.7.1 not you"})
    replies = await send_transaction(
        smtp, b"FROM:<a@example.com>", RCPTS, b"x", pipelined=False, timeout=10
    )
    assert replies.mail.code == 553 and not replies.sent
    assert replies.rcpt == [] and replies.data is None
    assert server.commands[1:] == [b"MAIL FROM:<a@example.com>"]  # no RCPT, no DATA
    smtp.close()
    server.close()


async def test_no_data_when_every_recipient_is_refused() -> None:
    refusal = b"550 5.1.1 no such user"
    server, smtp = await stepwise({b"RCPT " + rcpt: refusal for rcpt in RCPTS})
    replies = await send_transaction(
        smtp, b"FROM:<a@example.com>", RCPTS, b"x", pipelined=False, timeout=10
    )
    assert [r.code for r in replies.rcpt] == [550, 550] and not replies.sent
    assert b"DATA" not in server.commands and server.received == b""
    smtp.close()
    server.close()


async def test_a_refused_data_command_is_reported() -> None:
    server, smtp = await stepwise({b"DATA": b"451 4.3.0 try later"})
    replies = await send_transaction(
        smtp, b"FROM:<a@example.com>", RCPTS, b"x", pipelined=False, timeout=10
    )
    assert replies.data is not None and replies.data.code == 451 and not replies.sent
    assert server.received == b""
    smtp.close()
    server.close()


async def test_the_timeout_bounds_each_reply_not_the_transaction() -> None:
    """A slow server: MAIL, RCPT, RCPT and DATA are each answered 0.2 s late, 0.8 s in all,
    with a timeout of 0.6 s. Each wait is bounded (``command_timeout`` is per command), not
    the whole transaction, so it goes through."""
    server, smtp = await stepwise({}, delay=0.2)
    replies = await send_transaction(
        smtp, b"FROM:<a@example.com>", RCPTS, b"x", pipelined=False, timeout=0.6
    )
    assert replies.sent and server.received == b"x\r\n.\r\n"
    smtp.close()
    server.close()
