"""Test helpers for the proxy and for plugin authors: a real SMTP server to send to.

:class:`SmtpSink` runs aiosmtpd inside the caller's event loop on an ephemeral port of
127.0.0.1, records every mail, and can be told to refuse, fail, drop or hold messages.
:class:`Faults` makes it misbehave at random, reproducibly (reliability tests).
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import random
import ssl
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["Faults", "ReceivedMail", "SmtpSink"]


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    _parsed: email.message.EmailMessage | None = field(default=None, repr=False)

    @property
    def message(self) -> email.message.EmailMessage:
        """The mail parsed with the modern policy (headers decoded)."""
        if self._parsed is None:
            parsed = email.message_from_bytes(self.data, policy=email.policy.default)
            assert isinstance(parsed, email.message.EmailMessage)
            self._parsed = parsed
        return self._parsed

    @property
    def gmp_id(self) -> str:
        return str(self.message["X-GMP-ID"])


@dataclass(frozen=True)
class Faults:
    """Random misbehaviour of a sink, each a share of delivery attempts (0.05 = 5%).

    One draw per attempt decides its fate: a 4xx or 5xx reply to RCPT or to DATA, the
    connection dropped once the mail's data arrived (before any reply: the client sees the
    connection go mid-DATA), or a stall (no reply ever: the client must time out). A drop or a
    stall never keeps the mail, so neither can cause a duplicate.

    The draw depends only on ``seed``, the recipient and which attempt for that recipient
    this is (the n-th RCPT for it), never on timing or on the order in which concurrent
    connections arrive: a run is reproducible, and :meth:`plan` tells a test beforehand what
    the n-th attempt for an address will meet.
    """

    seed: int = 0
    rcpt_temporary: float = 0.0
    rcpt_permanent: float = 0.0
    data_temporary: float = 0.0
    data_permanent: float = 0.0
    drop: float = 0.0
    stall: float = 0.0
    replies: dict[str, str] = field(
        default_factory=lambda: {
            "rcpt_temporary": "451 4.3.0 Mailbox busy, try again later",
            "rcpt_permanent": "550 5.1.1 User unknown",
            "data_temporary": "452 4.3.1 Insufficient system storage",
            "data_permanent": "554 5.6.0 Message rejected",
        }
    )

    KINDS = (
        "rcpt_temporary",
        "rcpt_permanent",
        "data_temporary",
        "data_permanent",
        "drop",
        "stall",
    )

    def plan(self, recipient: str, attempt: int) -> str | None:
        """The fault the ``attempt``-th try (from 1) for ``recipient`` meets, or None."""
        draw = random.Random(f"{self.seed}|{recipient}|{attempt}").random()
        for kind in self.KINDS:
            draw -= getattr(self, kind)
            if draw < 0:
                return kind
        return None

    def reply(self, kind: str) -> str:
        return self.replies[kind]


class SmtpSink:
    """An SMTP server for tests.

    Failure injection, all optional and changeable while running:

    * ``rcpt_replies``: recipient -> reply line (``"550 5.1.1 User unknown"``);
    * ``data_reply``: a function of the envelope returning a reply line, or None to accept;
    * ``hold``: an :class:`asyncio.Event`; while it is unset, DATA waits (messages stay in
      flight); ``wait_held(n)`` returns once n transactions are waiting;
    * ``faults``: :class:`Faults`, random replies, drops and stalls; ``injected`` counts them
      by kind and ``attempts`` counts RCPTs per recipient.
    """

    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext | None = None,  # offered through STARTTLS
        require_starttls: bool = False,
        implicit_tls: ssl.SSLContext | None = None,  # TLS from the first byte (port 465)
        credentials: dict[str, str] | None = None,  # user -> password; AUTH required if set
        smtputf8: bool = True,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.mails: list[ReceivedMail] = []
        self.rcpt_replies: dict[str, str] = {}
        self.data_reply: Callable[[Envelope], str | None] | None = None
        self.hold: asyncio.Event | None = None
        self.faults: Faults | None = None
        self.injected: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.connections = 0
        self.quits = 0
        self.logins: list[str] = []
        self._tls_context = tls_context
        self._require_starttls = require_starttls
        self._implicit_tls = implicit_tls
        self._credentials = credentials
        self._smtputf8 = smtputf8
        self._server: asyncio.Server | None = None
        self._protocols: set[SMTP] = set()
        self._changed = asyncio.Condition()
        self._held = 0
        self._disconnected = asyncio.Event()  # no connection open right now
        self._disconnected.set()
        # The fault drawn at RCPT for a transaction, met at its DATA.
        self._data_faults: weakref.WeakKeyDictionary[Envelope, str] = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ control

    async def start(self, port: int | None = None) -> SmtpSink:
        """Listen (again, on the same port after :meth:`stop`, unless told otherwise)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self.host, self.port if port is None else port, ssl=self._implicit_tls
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and drop every open connection (the server is 'down')."""
        if self._server is not None:
            self._server.close()
            for protocol in list(self._protocols):
                if protocol.transport is not None:
                    protocol.transport.close()
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[ReceivedMail]:
        """Wait until at least ``count`` mails arrived; return them all."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.mails) >= count)
        return self.mails

    async def wait_held(self, count: int, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self._held >= count)

    async def wait_disconnected(self, timeout: float = 15.0) -> None:
        """Until no client is connected. After a client process died, this is when every
        transaction it had open is settled: recorded, or dropped for good."""
        async with asyncio.timeout(timeout):
            await self._disconnected.wait()

    def by_id(self) -> dict[str, list[ReceivedMail]]:
        """Mails grouped by their X-GMP-ID header (duplicates show as longer lists)."""
        grouped: dict[str, list[ReceivedMail]] = {}
        for mail in self.mails:
            grouped.setdefault(mail.gmp_id, []).append(mail)
        return grouped

    # ------------------------------------------------------------------ aiosmtpd handler

    def _protocol(self) -> SMTP:
        self.connections += 1
        authenticate = self._authenticate if self._credentials is not None else None
        protocol = _TrackedSMTP(
            self,
            hostname="sink.test",
            tls_context=self._tls_context,
            require_starttls=self._require_starttls,
            enable_SMTPUTF8=self._smtputf8,
            authenticator=authenticate,
            auth_required=authenticate is not None,
            auth_require_tls=self._tls_context is not None or self._implicit_tls is not None,
            data_size_limit=None,
        )
        return protocol

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self._credentials is not None
        if isinstance(auth_data, LoginPassword):
            user, password = auth_data.login.decode(), auth_data.password.decode()
            if self._credentials.get(user) == password:
                self.logins.append(user)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        self.attempts[address] += 1
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        fault = self._fault(address)
        if fault in ("rcpt_temporary", "rcpt_permanent"):
            assert self.faults is not None
            self.injected[fault] += 1
            return self.faults.reply(fault)
        if fault is not None and envelope not in self._data_faults:
            self._data_faults[envelope] = fault
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.hold is not None and not self.hold.is_set():
            async with self._changed:
                self._held += 1
                self._changed.notify_all()
            await self.hold.wait()
            self._held -= 1
        fault = self._data_faults.pop(envelope, None)
        if fault is not None:
            self.injected[fault] += 1
        if fault in ("data_temporary", "data_permanent"):
            assert self.faults is not None
            return self.faults.reply(fault)
        if fault in ("drop", "stall"):
            if fault == "drop" and server.transport is not None:
                server.transport.close()
            # No reply, ever: the handler is cancelled when the connection goes (dropped
            # here, or closed by the client once it gives up waiting).
            await asyncio.get_running_loop().create_future()
        reply = self.data_reply(envelope) if self.data_reply else None
        if reply is not None:
            return reply
        assert isinstance(envelope.content, bytes)
        mail = ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), envelope.content)
        async with self._changed:
            self.mails.append(mail)
            self._changed.notify_all()
        return "250 2.0.0 Message accepted"

    def _fault(self, recipient: str) -> str | None:
        """The fault the current attempt for ``recipient`` meets, if any."""
        if self.faults is None:
            return None
        return self.faults.plan(recipient, self.attempts[recipient])


class _TrackedSMTP(SMTP):
    """aiosmtpd's protocol, remembered by the sink so ``stop()`` can drop its connection."""

    def __init__(self, sink: SmtpSink, **kwargs: Any) -> None:
        super().__init__(sink, **kwargs)
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sink._protocols.add(self)
        self._sink._disconnected.clear()
        super().connection_made(transport)

    async def smtp_QUIT(self, arg: str) -> None:
        self._sink.quits += 1
        await super().smtp_QUIT(arg)

    def connection_lost(self, exc: Exception | None) -> None:
        self._sink._protocols.discard(self)
        super().connection_lost(exc)  # cancels a DATA still being handled: never recorded
        if not self._sink._protocols:
            self._sink._disconnected.set()
