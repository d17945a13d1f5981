"""Bundled delivery-activity log: with ``[logging] delivery_activity = true``, one INFO line
per message queued or rejected, per delivery attempt and per report exchange (logger
``gmp.activity``). Each line also carries ``event``, ``message_id``, ``account_id`` and
``code`` as fields, which JSON logs show as keys.

Lines name messages and accounts and quote the server's reply; never a body, a password or
a token. When the setting is off nothing is registered: no cost per event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gmp_core import Event, Service, hookimpl

log = logging.getLogger("gmp.activity")

OBSERVER = "activity-log-observer"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _took(event: Event) -> str:
    duration = event.data.get("duration")
    return f" in {duration:.3f}s" if duration is not None else ""


def _reply(event: Event) -> str:
    return f"{event.code} {event.detail}" if event.code else event.detail


# kind -> the sentence for it
SENTENCES: dict[str, Callable[[Event], str]] = {
    "queued": lambda e: (
        f"queued {e.message_id} (account {e.account_id}, priority {e.data.get('priority')})"
    ),
    "rejected": lambda e: f"rejected {e.message_id or '(no id)'}: {e.detail}",
    "sent": lambda e: f"sent {e.message_id} (account {e.account_id}){_took(e)}: {_reply(e)}",
    "deferred": lambda e: (
        f"deferred {e.message_id} (account {e.account_id}){_took(e)} "
        f"until {_when(e.data.get('retry_at', e.ts))}, {e.data.get('reason')}: {_reply(e)}"
    ),
    "error": lambda e: f"failed {e.message_id} (account {e.account_id}){_took(e)}: {_reply(e)}",
    "report_posted": lambda e: (
        f"reporter {e.data.get('reporter')}: "
        f"{e.data.get('count', 0)} reports acknowledged{_took(e)}"
    ),
    "report_failed": lambda e: (
        f"reporter {e.data.get('reporter')}: "
        f"{e.data.get('count', 0)} reports not acknowledged{_took(e)}"
    ),
}


class ActivityLog:
    __name__ = OBSERVER

    @hookimpl
    def gmp_event(self, event: Event) -> None:
        sentence = SENTENCES.get(event.kind)
        if sentence is not None:
            log.info(sentence(event), extra=_fields(event))


def _fields(event: Event) -> dict[str, Any]:
    fields: dict[str, Any] = {"event": event.kind}
    if event.message_id:
        fields["message_id"] = event.message_id
    if event.account_id:
        fields["account_id"] = event.account_id
    if event.code is not None:
        fields["code"] = event.code
    if "attempt" in event.data:
        fields["attempt"] = event.data["attempt"]
    return fields


@hookimpl
def gmp_startup(service: Service) -> None:
    if service.config.logging.delivery_activity:
        service.pm.register(ActivityLog(), name=OBSERVER)


@hookimpl
def gmp_shutdown(service: Service) -> None:
    if service.pm.has_plugin(OBSERVER):
        service.pm.unregister(name=OBSERVER)
