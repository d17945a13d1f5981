"""Accounts changed or deleted while their mail is being sent: the SMTP server never sees
more than ``max_connections`` sessions of the account, every connection ends with QUIT, and
what the pool says is open is what the server has open.

Counted at a real SMTP server (aiosmtpd): ``most_open`` is the most sessions it had open at
once, ``open_connections`` those open now."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from gmp_smtp import SmtpSettings, SmtpTransport

from gmp_core import Account, Service, TlsMode
from gmp_core.intake import parse_message
from gmp_core.mime import build_mime
from gmp_core.models import OutgoingMessage
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, message, wait_until

MAX = 3


@pytest.fixture
async def other_sink() -> AsyncIterator[SmtpSink]:
    server = await SmtpSink().start()
    yield server
    await server.stop()


def pool_open(service: Service, account_id: str = "acc") -> int:
    sizes = service.transports["smtp"].pool_sizes()  # type: ignore[attr-defined]
    opened: int = sizes.get(account_id, (0, 0))[0]
    return opened


async def settled(service: Service, sink: SmtpSink, account_id: str = "acc") -> None:
    """Wait until the server has open exactly what the pool counts as open."""

    async def matching() -> bool:
        return sink.open_connections == pool_open(service, account_id)

    await wait_until(matching)


async def all_quit(service: Service, *sinks: SmtpSink) -> None:
    await service.stop()
    for sink in sinks:
        assert sink.open_connections == 0
        assert sink.quits == sink.connections  # every one closed with QUIT, none dropped


async def test_updates_under_load_never_open_more_than_max_connections(
    make_service: ServiceFactory, sink: SmtpSink
) -> None:
    service = await make_service()
    settings = account(sink, max_connections=MAX)
    await service.put_account(settings)
    total = 600
    await service.add_messages([message(f"m{i}") for i in range(total)])
    changes = 0
    while len(sink.mails) < total:
        await service.put_account(settings)  # unchanged: keeps its connections
        # Changed: a new password makes every connection stale (a plain sink asks for none).
        await service.put_account({**settings, "password": f"secret-{changes % 2}"})
        changes += 1
        await sink.wait_for(min(total, len(sink.mails) + 20))
    assert changes >= 10
    assert len(sink.by_id()) == total  # each once
    assert sink.most_open <= MAX
    await settled(service, sink)
    assert sink.open_connections <= MAX
    assert sink.connections > MAX  # stale connections were replaced, not kept
    await all_quit(service, sink)


async def test_deleting_and_recreating_under_load_never_open_more_than_max_connections(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    service = await make_service()
    settings = account(sink, max_connections=MAX)
    for round_ in range(3):
        await service.put_account(settings)
        ids = [f"r{round_}-{i}" for i in range(200)]
        await service.add_messages([message(id) for id in ids])
        await sink.wait_for(len(sink.mails) + 30)
        await service.delete_account("acc", force=True)  # mid-send: the unsent end as error
        assert sink.most_open <= MAX
    await service.put_account(settings)
    await service.add_messages([message("last")])
    await events.wait("sent", "last")
    assert sink.most_open <= MAX
    await settled(service, sink)
    await all_quit(service, sink)


async def test_an_unchanged_account_keeps_its_connections(
    service: Service, sink: SmtpSink, events: EventLog
) -> None:
    await service.put_account(account(sink, max_connections=1))
    await service.add_messages([message("m1")])
    await events.wait("sent", "m1")
    for _ in range(10):
        await service.put_account(account(sink, max_connections=1))
    await service.add_messages([message("m2")])
    await events.wait("sent", "m2")
    assert sink.connections == 1


async def test_a_changed_host_closes_the_old_connections_with_quit(
    service: Service, sink: SmtpSink, other_sink: SmtpSink, events: EventLog
) -> None:
    await service.add_messages([message("m1")])
    await events.wait("sent", "m1")
    assert sink.open_connections == 1  # idle in the pool
    await service.put_account(account(other_sink))
    await service.add_messages([message("m2")])
    await events.wait("sent", "m2")
    assert [m.gmp_id for m in other_sink.mails] == ["m2"]

    async def closed() -> bool:
        return sink.open_connections == 0

    await wait_until(closed)
    assert sink.quits == 1


async def test_a_transport_notices_settings_changed_by_another_process(
    sink: SmtpSink, other_sink: SmtpSink
) -> None:
    """Another process sharing the store changed the account: this one never heard of it
    (no forget_account), and sees the new settings only in the account it is handed."""
    transport = SmtpTransport(SmtpSettings(local_hostname="proxy.test"))
    first = Account(id="acc", host=sink.host, port=sink.port, tls=TlsMode.NONE)
    moved = Account(id="acc", host=other_sink.host, port=other_sink.port, tls=TlsMode.NONE)
    try:
        assert (await transport.send(outgoing("m1"), first)).accepted
        assert (await transport.send(outgoing("m2"), moved)).accepted
        assert [m.gmp_id for m in other_sink.mails] == ["m2"]

        async def closed() -> bool:
            return sink.open_connections == 0

        await wait_until(closed)
        assert sink.quits == 1
    finally:
        await transport.close()
    assert other_sink.quits == other_sink.connections == 1


def outgoing(id: str) -> OutgoingMessage:
    parsed = parse_message(message(id), default_priority=2, default_account=None)
    out = OutgoingMessage(parsed, attempt=1)
    out.data = build_mime(out, [])
    return out
