"""Helpers shared by the tests: an event log plugin, configurations, payload builders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gmp_core import Event, Service, hookimpl
from gmp_core.testing import SmtpSink

ServiceFactory = Callable[..., Awaitable[Service]]


class EventLog:
    """A plugin recording every gmp_event, with a way to wait for one."""

    __name__ = "test-event-log"

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


def base_tables(tmp_path: Path) -> dict[str, Any]:
    """A fast configuration for tests: short waits, quick retries, no HTTP."""
    return {
        "plugins": {"disable": ["rest"]},
        "sql": {"url": str(tmp_path / "gmp.db")},
        "service": {
            "send_loop_interval": 0.05,
            "retry_delays": [0.1, 0.1, 0.1],
            "lease_seconds": 5,
            "shutdown_timeout": 5,
        },
        "smtp": {"connect_timeout": 2, "command_timeout": 5},
    }


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {table: dict(values) for table, values in base.items()}
    for table, values in extra.items():
        merged.setdefault(table, {}).update(values)
    return merged


def account(sink: SmtpSink, id: str = "acc", **fields: Any) -> dict[str, Any]:
    return {"id": id, "host": sink.host, "port": sink.port, "tls": "none", **fields}


def message(id: str, **fields: Any) -> dict[str, Any]:
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
