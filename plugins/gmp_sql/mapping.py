"""Rows and the core's objects: how an account, a message, an event and a delivery report are
written as columns and read back. No SQL here; secrets are sealed and opened by the parts
that read and write them (``accounts.py``, ``volumes.py``)."""

from __future__ import annotations

import json
from typing import Any

from gmp_core import Account, DeliveryReport, Event, MessageRecord, TlsMode

ACCOUNT_FIELDS = (
    "id",
    "host",
    "port",
    "user",
    "password",
    "tls",
    "limit_per_minute",
    "limit_per_hour",
    "limit_per_day",
    "limit_behavior",
    "batch_size",
    "max_connections",
    "ttl",
    "transport",
)


def account_columns(account: Account) -> dict[str, Any]:
    values = {name: getattr(account, name) for name in ACCOUNT_FIELDS}
    values["tls"] = str(account.tls)
    return values


def account_of(row: dict[str, Any]) -> Account:
    values = {name: row[name] for name in ACCOUNT_FIELDS}
    values["tls"] = TlsMode(row["tls"])
    return Account(**values, created_at=row["created_at"], updated_at=row["updated_at"])


def record_of(row: dict[str, Any]) -> MessageRecord:
    return MessageRecord(
        id=row["id"],
        account_id=row["account_id"],
        priority=row["priority"],
        status=row["state"],
        deferred_ts=row["deferred_ts"],
        sent_ts=row["sent_ts"],
        error_ts=row["error_ts"],
        error=row["error"],
        reported_ts=row["reported_ts"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        attempts=row["attempts"],
    )


def report_of(
    event_id: int,
    message_id: str,
    account_id: str | None,
    priority: int | None,
    kind: str,
    ts: float,
    code: int | None,
    detail: str,
    data: str,
) -> DeliveryReport:
    extra = json.loads(data)
    refused = extra.get("refused") or {}
    return DeliveryReport(
        event_id=event_id,
        id=message_id,
        account_id=account_id,
        priority=priority,
        status=kind,
        ts=ts,
        error=None if kind == "sent" else detail,
        error_code=None if kind == "sent" else code,
        deferred_ts=extra.get("retry_at"),
        refused=[{"recipient": to, "error": why} for to, why in refused.items()],
    )


def event_of(row: dict[str, Any]) -> Event:
    return Event(
        kind=row["kind"],
        message_id=row["message_id"],
        account_id=row["account_id"],
        ts=row["ts"],
        code=row["code"],
        detail=row["detail"],
        data=json.loads(row["data"]),
    )
