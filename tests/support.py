"""Helpers shared by the tests. Most live in gmp_core.testing, where plugin authors get them
too; they are re-exported here under the names our tests use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gmp_core import Service
from gmp_core.testing import (
    EventLog,
    account,
    merge,
    message,
    status_of,
    wait_until,
)
from gmp_core.testing import fast_tables as base_tables

__all__ = [
    "EventLog",
    "ServiceFactory",
    "account",
    "base_tables",
    "merge",
    "message",
    "status_of",
    "wait_until",
]

ServiceFactory = Callable[..., Awaitable[Service]]
