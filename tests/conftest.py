"""Shared fixtures, under the short names our tests use, over the pytest plugin that ships
with the proxy (gmp_core.testing): a real SMTP sink, services on a temporary SQLite, an event
log."""

from __future__ import annotations

import pytest

from gmp_core import Service
from gmp_core.testing import EventLog, ServiceStarter, SmtpSink


@pytest.fixture
def sink(gmp_smtp_sink: SmtpSink) -> SmtpSink:
    return gmp_smtp_sink


@pytest.fixture
def events(gmp_events: EventLog) -> EventLog:
    return gmp_events


@pytest.fixture
def make_service(make_gmp_service: ServiceStarter) -> ServiceStarter:
    """``await make_service(plugins=[...], service={...}, ...)``: a started service on the
    test's database (the same one for every call), stopped at the end."""
    return make_gmp_service


@pytest.fixture
def service(gmp_service: Service) -> Service:
    """A running service with account ``acc`` pointing at the sink (plain SMTP)."""
    return gmp_service
