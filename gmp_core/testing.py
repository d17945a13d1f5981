"""Test helpers for the proxy and its plugins, and the pytest plugin that offers them.

Installed with the proxy, this module is a pytest plugin (entry point group ``pytest11``): a
plugin author's tests get these fixtures without importing anything (they need
pytest-asyncio, in ``asyncio_mode = "auto"`` or with ``@pytest.mark.asyncio``):

* ``gmp_smtp_sink``: a real SMTP server (:class:`SmtpSink`) on 127.0.0.1;
* ``gmp_report_receiver``: a real HTTP server (:class:`ReportReceiver`) recording what is
  POSTed to it, for reporters and webhooks;
* ``gmp_events``: an :class:`EventLog` registered in every service the test starts;
* ``make_gmp_service``: ``await make_gmp_service(plugins=[...], service={...})`` starts a
  service on a temporary SQLite with short test timings, stopped after the test;
* ``gmp_service``: such a service, with account ``acc`` delivering to ``gmp_smtp_sink``;
* ``register_gmp_plugin``: registers a plugin object for the rest of one test.

Plain helpers build test data: :func:`fast_tables`, :func:`account`, :func:`message`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.message
import email.policy
import inspect
import json
import random
import ssl
import time
import uuid
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import pluggy
import pytest

from gmp_core import Config, Event, Service, hookimpl

if TYPE_CHECKING:
    from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

# The fixtures are async. Without pytest-asyncio this module still loads (pytest loads it in
# every project that installs the proxy), and pytest says what is missing when one is used.
async_fixture: Any
try:
    from pytest_asyncio import fixture as async_fixture
except ImportError:  # pragma: no cover
    async_fixture = pytest.fixture

__all__ = [
    "EventLog",
    "Faults",
    "ReceivedMail",
    "ReceivedRequest",
    "ReportReceiver",
    "ServiceStarter",
    "SmtpSink",
    "account",
    "fast_tables",
    "merge",
    "message",
    "postgresql_schema",
    "status_of",
    "wait_until",
]

# ---------------------------------------------------------------------------- SMTP sink


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    smtputf8: bool = False  # the client said SMTPUTF8 in MAIL FROM (RFC 6531)
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

    Counters: ``connections`` ever made, ``open_connections`` now, ``most_open`` at once,
    ``quits`` received.
    """

    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext | None = None,  # offered through STARTTLS
        require_starttls: bool = False,
        implicit_tls: ssl.SSLContext | None = None,  # TLS from the first byte (port 465)
        credentials: dict[str, str] | None = None,  # user -> password; AUTH required if set
        smtputf8: bool = True,
        pipelining: bool = False,  # offer PIPELINING (RFC 2920) in the EHLO reply
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
        self.connections = 0  # every connection ever made
        self.most_open = 0  # the most connections open at once
        self.quits = 0
        self.logins: list[str] = []
        self._tls_context = tls_context
        self._require_starttls = require_starttls
        self._implicit_tls = implicit_tls
        self._credentials = credentials
        self._smtputf8 = smtputf8
        self._pipelining = pipelining
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

    @property
    def open_connections(self) -> int:
        """Connections open right now."""
        return len(self._protocols)

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
        from gmp_core._smtp_sink import TrackedSMTP

        protocol = TrackedSMTP(
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
        from aiosmtpd.smtp import AuthResult, LoginPassword

        assert self._credentials is not None
        if isinstance(auth_data, LoginPassword):
            user, password = auth_data.login.decode(), auth_data.password.decode()
            if self._credentials.get(user) == password:
                self.logins.append(user)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handler that has the hook
        # aiosmtpd reads one command at a time, so it serves pipelined commands correctly; it
        # only does not say so.
        if self._pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

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
        mail = ReceivedMail(
            str(envelope.mail_from),
            list(envelope.rcpt_tos),
            envelope.content,
            smtputf8=envelope.smtp_utf8,
        )
        async with self._changed:
            self.mails.append(mail)
            self._changed.notify_all()
        return "250 2.0.0 Message accepted"

    def _fault(self, recipient: str) -> str | None:
        """The fault the current attempt for ``recipient`` meets, if any."""
        if self.faults is None:
            return None
        return self.faults.plan(recipient, self.attempts[recipient])


# ---------------------------------------------------------------------------- PostgreSQL


@contextlib.asynccontextmanager
async def postgresql_schema(admin_url: str, database: str) -> AsyncIterator[str]:
    """A new, empty schema in ``database`` (created if missing, through ``admin_url``),
    dropped afterwards; yields a URL whose connections see only that schema. For runs that
    need a PostgreSQL store of their own (benchmarks, chaos runs); needs asyncpg."""
    import asyncpg

    admin = await asyncpg.connect(admin_url)
    with contextlib.suppress(asyncpg.DuplicateDatabaseError):
        await admin.execute(f"CREATE DATABASE {database}")
    await admin.close()
    url = admin_url.rsplit("/", 1)[0] + "/" + database
    schema = f"s_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(url)
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.close()
    try:
        yield f"{url}?search_path={schema}"
    finally:
        conn = await asyncpg.connect(url)  # a new one: an idle one may have been cut
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


# ---------------------------------------------------------------------------- report receiver


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Reply = tuple[int, Any]  # status, and a JSON-able body (a str is sent as text/html)


class ReportReceiver:
    """A small HTTP/1.1 server on 127.0.0.1 that records every request and answers it.

    It answers ``reply`` (default ``(200, {"ok": True})``) or, when ``respond`` is set, what
    that function returns (or awaits) for the request. Change either while it runs to simulate
    a client that refuses, fails, stalls or answers an HTML page. ``stop()`` then ``start()``
    again takes it down and up on the same port.
    """

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.requests: list[ReceivedRequest] = []
        self.reply: Reply = (200, {"ok": True})
        self.respond: Callable[[ReceivedRequest], Reply | Awaitable[Reply]] | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> ReportReceiver:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and drop every connection, answered or not."""
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                connection.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[ReceivedRequest]:
        """Wait until at least ``count`` requests arrived; return them all."""
        await self.wait(lambda receiver: len(receiver.requests) >= count, timeout)
        return self.requests

    async def wait(self, check: Callable[[Self], bool], timeout: float = 15.0) -> None:
        """Wait until ``check(receiver)`` holds; it is re-checked at every request."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: check(self))

    def json_bodies(self) -> list[Any]:
        return [request.json() for request in self.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = asyncio.current_task()
        assert connection is not None
        self._connections.add(connection)
        try:
            while (request := await _read_request(reader)) is not None:
                async with self._changed:
                    self.requests.append(request)
                    self._changed.notify_all()
                answer = self.respond(request) if self.respond else self.reply
                status, body = await answer if inspect.isawaitable(answer) else answer
                writer.write(_http_response(status, body))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or we were stopped
        finally:
            self._connections.discard(connection)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> ReceivedRequest | None:
    """One request of a keep-alive connection; None once the client closes it."""
    request_line = await reader.readline()
    if not request_line.strip():
        return None
    method, path, _ = request_line.decode("latin-1").split(" ", 2)
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return ReceivedRequest(method, path, headers, body)


def _http_response(status: int, body: Any) -> bytes:
    if isinstance(body, str):
        content, content_type = body.encode(), "text/html; charset=utf-8"
    else:
        content, content_type = json.dumps(body).encode(), "application/json"
    head = (
        f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(content)}\r\n\r\n"
    )
    return head.encode() + content


# ---------------------------------------------------------------------------- events


class EventLog:
    """A plugin recording every ``gmp_event``, with a way to wait for one."""

    __name__ = "gmp-testing-event-log"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Condition()

    @hookimpl
    async def gmp_event(self, event: Event) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def wait(
        self, kind: str, message_id: str | None = None, *, count: int = 1, timeout: float = 15.0
    ) -> list[Event]:
        """Wait until ``count`` events of ``kind`` (for ``message_id``, if given) happened."""

        def matching() -> list[Event]:
            return [
                e
                for e in self.events
                if e.kind == kind and (message_id is None or e.message_id == message_id)
            ]

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(matching()) >= count)
        return matching()

    def kinds(self, message_id: str) -> list[str]:
        return [e.kind for e in self.events if e.message_id == message_id]


# ---------------------------------------------------------------------------- test data


def fast_tables(db_dir: Path) -> dict[str, Any]:
    """A configuration for tests: SQLite in ``db_dir``, short waits and retries (of sends and of
    reports), no HTTP API."""
    return {
        "plugins": {"disable": ["rest"]},
        "sql": {"url": str(db_dir / "gmp.db")},
        "service": {
            "send_loop_interval": 0.05,
            "retry_delays": [0.1, 0.1, 0.1],
            "lease_seconds": 5,
            "shutdown_timeout": 5,
        },
        "smtp": {"connect_timeout": 2, "command_timeout": 5},
        # Reports go at once, failed ones are retried within milliseconds, no heartbeats.
        "reporting": {
            "interval": 0,
            "retry_initial": 0.02,
            "retry_max": 0.05,
            "heartbeat_seconds": 0,
        },
    }


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the keys of each table of ``extra`` added or replaced."""
    merged = {table: dict(values) for table, values in base.items()}
    for table, values in extra.items():
        merged.setdefault(table, {}).update(values)
    return merged


def account(sink: SmtpSink, id: str = "acc", **fields: Any) -> dict[str, Any]:
    """An account payload delivering to ``sink`` over plain SMTP."""
    return {"id": id, "host": sink.host, "port": sink.port, "tls": "none", **fields}


def message(id: str, **fields: Any) -> dict[str, Any]:
    """An add-messages payload for account ``acc``."""
    return {
        "id": id,
        "account_id": "acc",
        "from": "Sender <sender@example.com>",
        "to": ["rcpt@example.com"],
        "subject": f"subject {id}",
        "body": f"body {id}",
        **fields,
    }


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Re-check an observable condition until it holds (for states no event announces)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


async def status_of(service: Service, message_id: str) -> str:
    record, _ = await service.get_message(message_id)
    return record.status


# ---------------------------------------------------------------------------- services

# Hooks the service calls only while it starts: a plugin implementing one must be there before.
START_UP_HOOKS = frozenset(
    {
        "gmp_register_settings",
        "gmp_make_store",
        "gmp_register_transports",
        "gmp_register_volume_backends",
        "gmp_register_rate_limit_policies",
        "gmp_register_reporters",
        "gmp_startup",
    }
)


class ServiceStarter:
    """Starts services for one test, on its temporary database, and stops them after it.

    ``await starter(plugins=[...], service={...}, sql={...})``: extra plugin objects, and
    tables merged over :func:`fast_tables`. Every service also gets the plugins passed to
    :meth:`register` and the test's :class:`EventLog`.
    """

    def __init__(self, db_dir: Path, events: EventLog) -> None:
        self.db_dir = db_dir
        self.plugins: list[object] = [events]
        self.started: list[Service] = []

    async def __call__(self, plugins: Sequence[object] = (), **tables: dict[str, Any]) -> Service:
        config = Config(merge(fast_tables(self.db_dir), tables), environ={})
        service = Service(config, plugins=[*self.plugins, *plugins])
        await service.start()
        self.started.append(service)
        return service

    def register(self, plugin: object) -> object:
        """Add ``plugin`` to the services started from now on, and to those running when it
        only observes (its hooks are called per event or per request, not at start-up)."""
        running = [service for service in self.started if service.started_at is not None]
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        if running:
            too_late = _hooks_of(running[0].pm, plugin) & START_UP_HOOKS
            if too_late:
                raise RuntimeError(
                    f"{name} implements {', '.join(sorted(too_late))}, which run at "
                    "start-up: register it before the service starts"
                )
        for service in running:
            service.pm.register(plugin, name=name)
            service.pm.check_pending()
        self.plugins.append(plugin)
        return plugin

    async def stop_all(self) -> None:
        for service in reversed(self.started):
            await service.stop()


def _hooks_of(pm: pluggy.PluginManager, plugin: object) -> set[str]:
    """The hooks ``plugin`` implements, by name."""
    hooks = set()
    for attribute in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attribute)
        if opts is not None:
            hooks.add(opts.get("specname") or attribute)
    return hooks


# ---------------------------------------------------------------------------- fixtures


@async_fixture
async def gmp_smtp_sink() -> AsyncIterator[SmtpSink]:
    """A running :class:`SmtpSink` on 127.0.0.1."""
    sink = await SmtpSink().start()
    yield sink
    await sink.stop()


@async_fixture
async def gmp_report_receiver() -> AsyncIterator[ReportReceiver]:
    """A running :class:`ReportReceiver`; POST to its ``url``."""
    receiver = await ReportReceiver().start()
    yield receiver
    await receiver.stop()


@pytest.fixture
def gmp_events() -> EventLog:
    """The events of every service this test starts."""
    return EventLog()


@async_fixture
async def make_gmp_service(tmp_path: Path, gmp_events: EventLog) -> AsyncIterator[ServiceStarter]:
    """``await make_gmp_service(plugins=[...], **tables)``: a started service on the test's
    SQLite (the same database for every call), stopped after the test."""
    starter = ServiceStarter(tmp_path, gmp_events)
    yield starter
    await starter.stop_all()


@async_fixture
async def gmp_service(make_gmp_service: ServiceStarter, gmp_smtp_sink: SmtpSink) -> Service:
    """A running service whose account ``acc`` delivers to ``gmp_smtp_sink``."""
    service = await make_gmp_service()
    await service.put_account(account(gmp_smtp_sink))
    return service


@pytest.fixture
def register_gmp_plugin(make_gmp_service: ServiceStarter) -> Callable[[object], object]:
    """``register_gmp_plugin(plugin)``: use ``plugin`` for the rest of this test (see
    :meth:`ServiceStarter.register`). Returns the plugin."""
    return make_gmp_service.register
