"""Failure isolation: a plugin that raises is named, the service stays up, and the message it
was handling is retried, then ends as ``error``; it is never lost."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from gmp_core import ConfigError, Event, OutgoingMessage, Service, hookimpl
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, message


class FailsFor:
    """A plugin whose gmp_prepare_message raises for one message id and stamps the others."""

    __name__ = "signer"

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id

    @hookimpl
    def gmp_prepare_message(self, message: OutgoingMessage) -> None:
        if message.message.id == self.message_id:
            raise ValueError("no key for this sender")
        message.extra_headers["X-Signed"] = "yes"


async def test_a_failing_prepare_hook_is_named_and_its_message_ends_as_error(
    make_service: ServiceFactory,
    sink: SmtpSink,
    events: EventLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = await make_service(plugins=[FailsFor("bad")], service={"retry_delays": [0.01]})
    await service.put_account(account(sink))
    await service.add_messages([message("bad"), message("good")])

    culprit = "raised by plugin 'signer' in gmp_prepare_message"
    [deferred] = await events.wait("deferred", "bad")
    assert deferred.detail == f"internal error: ValueError: no key for this sender ({culprit})"
    [error] = await events.wait("error", "bad")
    assert error.detail.startswith("gave up after 2 attempts: internal error: ValueError")
    assert culprit in caplog.text  # the logged traceback names the plugin too

    # The service stayed up: the other message went through, and nothing is stuck.
    [mail] = await sink.wait_for(1)
    assert (mail.gmp_id, mail.message["X-Signed"]) == ("good", "yes")
    assert service.health_problems() == []
    assert (await service.get_message("bad"))[0].status == "error"


class BrokenObserver:
    __name__ = "broken-observer"

    @hookimpl
    async def gmp_event(self, event: Event) -> None:
        raise RuntimeError("observer bug")


async def test_a_failing_observer_is_logged_by_name_and_others_still_hear(
    make_service: ServiceFactory,
    sink: SmtpSink,
    events: EventLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = await make_service(plugins=[BrokenObserver()])
    await service.put_account(account(sink))
    await service.add_messages([message("m1")])

    await events.wait("sent", "m1")  # EventLog runs after the broken observer, and still hears
    await sink.wait_for(1)
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert {r.getMessage() for r in failures} == {"plugin 'broken-observer' failed in gmp_event"}
    assert len(failures) == len(events.events)  # once per event: queued, sent
    assert (await service.get_message("m1"))[0].status == "sent"


class BrokenStartup:
    __name__ = "broken-startup"

    @hookimpl
    def gmp_startup(self, service: Service) -> None:
        raise ConnectionError("cannot reach the licence server")


async def test_a_failing_startup_hook_stops_start_up_naming_the_plugin(
    make_service: ServiceFactory,
) -> None:
    with pytest.raises(ConnectionError) as info:
        await make_service(plugins=[BrokenStartup()])
    assert "raised by plugin 'broken-startup' in gmp_startup" in info.value.__notes__


class BrokenRegistration:
    __name__ = "broken-registration"

    @hookimpl
    def gmp_register_transports(self, register: Callable[[str, Any], None]) -> None:
        raise KeyError("missing credentials")


async def test_a_failing_registration_hook_stops_start_up_naming_the_plugin(
    make_service: ServiceFactory,
) -> None:
    with pytest.raises(KeyError) as info:
        await make_service(plugins=[BrokenRegistration()])
    assert info.value.__notes__ == [
        "raised by plugin 'broken-registration' in gmp_register_transports"
    ]


class IdleTransport:
    async def close(self) -> None:
        pass


class AnotherSmtp:
    __name__ = "another-smtp"

    @hookimpl
    def gmp_register_transports(self, register: Callable[[str, Any], None]) -> None:
        register("smtp", IdleTransport())


async def test_a_name_taken_twice_names_the_plugin_that_found_it_taken(
    make_service: ServiceFactory,
) -> None:
    with pytest.raises(ConfigError, match="two plugins register a transport named 'smtp'") as info:
        await make_service(plugins=[AnotherSmtp()])
    # Plugin objects given to the service run before installed ones: bundled smtp came second.
    assert info.value.__notes__ == ["raised by plugin 'smtp' in gmp_register_transports"]
