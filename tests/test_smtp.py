"""The SMTP transport against real servers: TLS modes, AUTH, pooling, clean shutdown."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from gmp_core import Service
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, message, wait_until


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def tls_sink(server_tls: ssl.SSLContext) -> AsyncIterator[SmtpSink]:
    sink = await SmtpSink(
        tls_context=server_tls, require_starttls=True, credentials={"alice": "s3cret"}
    ).start()
    yield sink
    await sink.stop()


async def test_starttls_and_auth(
    make_service: ServiceFactory, tls_sink: SmtpSink, ca_file: str, events: EventLog
) -> None:
    service = await make_service(smtp={"cert_bundle": ca_file})
    await service.put_account(account(tls_sink, tls="starttls", user="alice", password="s3cret"))
    await service.add_messages([message("m1")])
    await tls_sink.wait_for(1)
    assert tls_sink.logins == ["alice"]


async def test_wrong_password_is_a_permanent_error(
    make_service: ServiceFactory, tls_sink: SmtpSink, ca_file: str, events: EventLog
) -> None:
    service = await make_service(smtp={"cert_bundle": ca_file})
    await service.put_account(account(tls_sink, tls="starttls", user="alice", password="wrong"))
    await service.add_messages([message("m1")])
    [error] = await events.wait("error", "m1")
    assert error.code == 535 and error.detail.startswith("535 authentication failed")
    assert "wrong" not in error.detail


async def test_starttls_never_falls_back_to_plaintext(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    await service.put_account(account(sink, tls="starttls"))  # the sink offers no STARTTLS
    await service.add_messages([message("m1")])
    [error] = await events.wait("error", "m1")
    assert "STARTTLS" in error.detail
    assert sink.mails == []


async def test_untrusted_certificate_is_a_tls_failure(
    service: Service, tls_sink: SmtpSink, events: EventLog
) -> None:
    await service.put_account(account(tls_sink, tls="starttls", user="alice", password="s3cret"))
    await service.add_messages([message("m1")])
    [error] = await events.wait("error", "m1")
    assert error.detail.startswith("TLS failure")
    assert tls_sink.mails == []


async def test_implicit_tls(
    make_service: ServiceFactory, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    sink = await SmtpSink(implicit_tls=server_tls).start()
    try:
        service = await make_service(smtp={"cert_bundle": ca_file})
        await service.put_account(account(sink, tls="ssl"))
        await service.add_messages([message("m1")])
        await sink.wait_for(1)
    finally:
        await sink.stop()


async def test_legacy_use_tls_maps_to_tls_modes(service: Service, sink: SmtpSink) -> None:
    await service.put_account({"id": "a465", "host": "h", "port": 465, "use_tls": True})
    await service.put_account({"id": "a587", "host": "h", "port": 587, "use_tls": True})
    await service.put_account({"id": "plain", "host": "h", "port": 25, "use_tls": False})
    await service.put_account({"id": "default", "host": "h", "port": 25})
    modes = {a.id: str(a.tls) for a in await service.list_accounts()}
    assert modes == {
        "acc": "none",
        "a465": "ssl",
        "a587": "starttls",
        "plain": "none",
        "default": "opportunistic",
    }


async def test_an_account_naming_no_tls_mode_is_ssl_on_465_else_opportunistic(
    service: Service,
) -> None:
    # as the original's setup script creates accounts
    await service.put_account({"id": "o", "host": "h", "port": 1025, "user": None})
    await service.put_account({"id": "s", "host": "h", "port": 465})
    modes = {a.id: str(a.tls) for a in await service.list_accounts()}
    assert (modes["o"], modes["s"]) == ("opportunistic", "ssl")


async def test_opportunistic_encrypts_when_the_server_offers_starttls(
    service: Service, tls_sink: SmtpSink
) -> None:
    # no cert_bundle: the certificate is not trusted, and opportunistic TLS does not ask
    # (the sink refuses mail before STARTTLS, so arriving proves it was encrypted)
    await service.put_account(
        account(tls_sink, tls="opportunistic", user="alice", password="s3cret")
    )
    await service.add_messages([message("m1")])
    await tls_sink.wait_for(1)
    assert tls_sink.logins == ["alice"]


async def test_opportunistic_falls_back_to_plaintext_and_says_so_once(
    service: Service, sink: SmtpSink, events: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    await service.put_account(account(sink, tls="opportunistic", max_connections=3))
    await service.add_messages([message(f"m{i}") for i in range(9)])
    await sink.wait_for(9)
    warnings = [r.getMessage() for r in caplog.records if "plaintext" in r.getMessage()]
    assert len(warnings) == 1 and "'acc'" in warnings[0]


async def test_connections_are_pooled_and_reused(
    make_service: ServiceFactory, sink: SmtpSink
) -> None:
    service = await make_service()
    await service.put_account(account(sink, max_connections=2))
    await service.add_messages([message(f"m{i}") for i in range(30)])
    await sink.wait_for(30)
    await service.add_messages([message("later")])  # a later batch reuses them too
    await sink.wait_for(31)
    assert sink.connections <= 2


async def test_idle_connections_close_after_ttl(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    service = await make_service(smtp={"reap_interval": 0.05})
    await service.put_account(account(sink, ttl=0.1))
    await service.add_messages([message("m1")])
    await events.wait("sent", "m1")

    async def closed() -> bool:
        return sink.quits == sink.connections == 1

    await wait_until(closed)


async def test_shutdown_says_quit(make_service: ServiceFactory, sink: SmtpSink) -> None:
    service = await make_service()
    await service.put_account(account(sink, max_connections=3))
    await service.add_messages([message(f"m{i}") for i in range(9)])
    await sink.wait_for(9)
    await service.stop()
    assert sink.connections >= 1 and sink.quits == sink.connections


async def test_non_ascii_addresses_use_smtputf8(service: Service, sink: SmtpSink) -> None:
    await service.add_messages([message("m1", to=["Jürgen <jürgen@exämple.com>"])])
    [mail] = await sink.wait_for(1)
    assert mail.rcpt_tos == ["jürgen@exämple.com"]
