"""A transport for development: every message is stored in a Maildir instead of being mailed.

Point an account at it with ``"transport": "maildir"``; read the result with any mail client
that opens a Maildir (``mutt -f maildir``) or with Python's ``mailbox.Maildir``.
"""

from __future__ import annotations

import asyncio
import mailbox
from collections.abc import Callable
from pathlib import Path

from gmp_core import Account, OutgoingMessage, SendResult, Service, Settings, hookimpl, setting


class MaildirSettings(Settings):
    path: str = setting("maildir", description="the Maildir messages go to (created if missing)")


class MaildirTransport:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def send(self, message: OutgoingMessage, account: Account) -> SendResult:
        assert message.data is not None  # the core builds the bytes before any transport runs
        # A Maildir keeps no envelope: record it in headers, as a delivery agent would.
        envelope = (
            f"Return-Path: <{message.sender}>\r\nX-Envelope-To: {', '.join(message.recipients)}\r\n"
        ).encode()
        key = await asyncio.to_thread(self._store, envelope + message.data)
        return SendResult(accepted=True, detail=f"stored in {self.path} as {key}")

    def _store(self, data: bytes) -> str:
        # mailbox writes to tmp/ then moves into new/: readers never see half a message.
        return mailbox.Maildir(self.path, create=True).add(data)

    async def forget_account(self, account_id: str) -> None:
        pass  # nothing is kept per account

    async def close(self) -> None:
        pass


@hookimpl
def gmp_register_settings(register: Callable[[str, type[Settings]], None]) -> None:
    register("maildir", MaildirSettings)


@hookimpl
def gmp_register_transports(
    register: Callable[[str, MaildirTransport], None], service: Service
) -> None:
    settings: MaildirSettings = service.config.section("maildir")
    register("maildir", MaildirTransport(Path(settings.path)))
