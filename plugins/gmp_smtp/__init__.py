"""Bundled transport: SMTP through aiosmtplib, with a connection pool per account.

One attempt is MAIL FROM, one RCPT TO per recipient (refusals are collected one by one, so a
message refused for some recipients still goes to the others and the refusals are reported),
then DATA; pipelined (RFC 2920) when the server offers it (``transaction.py``). The core has
built the bytes; this module only speaks SMTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterable

import aiosmtplib

from gmp_core import (
    Account,
    OutgoingMessage,
    SendResult,
    Service,
    Settings,
    Transport,
    hookimpl,
    setting,
)
from gmp_smtp.errors import failure, is_temporary, keeps_connection
from gmp_smtp.pool import ConnectionPool
from gmp_smtp.transaction import NothingAnswered, send_transaction

log = logging.getLogger("gmp.smtp")


class SmtpSettings(Settings):
    connect_timeout: float = setting(10.0, description="seconds to connect and greet")
    command_timeout: float = setting(60.0, description="seconds for each SMTP command")
    cert_bundle: str | None = setting(
        None, description="CA bundle for verifying servers (default: the system's)"
    )
    local_hostname: str | None = setting(
        None, description="name sent in EHLO (default: this host's FQDN)"
    )
    reap_interval: float = setting(15.0, description="how often idle connections are checked")


class _StaleConnection(Exception):
    """A reused connection turned out closed before the server accepted anything."""


class SmtpTransport:
    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._pools: dict[str, ConnectionPool] = {}
        self._tls_context = (
            ssl.create_default_context(cafile=settings.cert_bundle)
            if settings.cert_bundle
            else None
        )
        self._local_hostname = settings.local_hostname
        self._reaper: asyncio.Task[None] | None = None

    def pool_sizes(self) -> dict[str, tuple[int, int]]:
        """account id -> (connections open, connections in use)."""
        return {key: (pool.open_connections, pool.in_use) for key, pool in self._pools.items()}

    async def send(self, message: OutgoingMessage, account: Account) -> SendResult:
        pool = await self._pool(account)
        for _ in range(2):  # a second go only when a reused connection was found closed
            try:
                smtp, reused = await pool.acquire()
            except Exception as exc:
                return failure(exc)
            reusable = True
            try:
                return await self._transaction(smtp, message, reused)
            except _StaleConnection:
                reusable = False
            except Exception as exc:
                reusable = keeps_connection(exc) and await _reset(smtp)
                return failure(exc)
            finally:
                pool.release(smtp, reusable=reusable)
        return SendResult.failed("connection closed by the server", temporary=True)

    async def _transaction(
        self, smtp: aiosmtplib.SMTP, message: OutgoingMessage, reused: bool
    ) -> SendResult:
        assert message.data is not None
        if smtp.is_ehlo_or_helo_needed:
            await smtp.ehlo()  # once per connection; extensions are known only after EHLO
        mail_from = [_path(b"FROM:", message.sender)]
        # Non-ASCII in the envelope, or in the mail itself: raw UTF-8 addresses (RFC 6532) in
        # From or Reply-To need SMTPUTF8 even when every envelope address is ASCII.
        envelope = message.sender + "".join(message.recipients)
        if not envelope.isascii() or not message.data.isascii():
            if not smtp.supports_extension("smtputf8"):
                return SendResult.failed(
                    "the server does not support SMTPUTF8, needed for non-ASCII addresses",
                    temporary=False,
                )
            mail_from.append(b"SMTPUTF8")
        recipients = message.recipients
        try:
            replies = await send_transaction(
                smtp,
                b" ".join(mail_from),
                [_path(b"TO:", r) for r in recipients],
                message.data,
                pipelined=smtp.supports_extension("pipelining"),
                timeout=smtp.timeout,
            )
        except NothingAnswered:
            if reused:
                raise _StaleConnection from None
            raise
        if replies.mail.code != 250:
            raise aiosmtplib.SMTPSenderRefused(
                replies.mail.code, replies.mail.message, message.sender
            )
        refused = _refusals(zip(recipients, replies.rcpt, strict=True))
        if len(refused) == len(recipients):
            await smtp.rset()
            return _all_refused(refused)
        assert replies.data is not None  # some recipient was accepted, so DATA went
        if not replies.sent or replies.data.code != 250:
            raise aiosmtplib.SMTPDataError(replies.data.code, replies.data.message)
        return _accepted(replies.data, refused)

    async def _pool(self, account: Account) -> ConnectionPool:
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        # No await below: concurrent first sends must all find the same pool.
        pool = self._pools.get(account.id)
        if pool is None:
            pool = self._pools[account.id] = ConnectionPool(
                account,
                connect_timeout=self.settings.connect_timeout,
                command_timeout=self.settings.command_timeout,
                local_hostname=self._local_hostname,
                tls_context=self._tls_context,
            )
            if self._reaper is None:
                self._reaper = asyncio.create_task(self._reap(), name="gmp-smtp-reaper")
        if _endpoint(account) != _endpoint(pool.account):
            pool.retire()  # changed here or by another process sharing the store
        pool.account = account  # the newest settings object (limits, ttl) of the same account
        return pool

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval)
            for pool in self._pools.values():
                pool.reap()

    async def forget_account(self, account_id: str) -> None:
        """Host, credentials or TLS may have changed, or the account is gone: its connections
        are closed (busy ones when their send ends). The pool stays, so that they count
        against ``max_connections`` until they are closed."""
        pool = self._pools.get(account_id)
        if pool is not None:
            pool.retire()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(pool.close() for pool in pools))


def _endpoint(account: Account) -> tuple[object, ...]:
    """What a connection was opened with: when any of it changes, the connection is stale."""
    return (account.host, account.port, account.user, account.password, account.tls)


def _path(prefix: bytes, address: str) -> bytes:
    """``FROM:<addr>``. We send MAIL and RCPT ourselves rather than through aiosmtplib's
    ``mail()`` and ``rcpt()``, which re-parse every address with ``email.utils.parseaddr``
    (about a tenth of the CPU of a send): ours were validated at intake."""
    return prefix + b"<" + address.encode() + b">"


def _refusals(
    replies: Iterable[tuple[str, aiosmtplib.SMTPResponse]],
) -> dict[str, aiosmtplib.SMTPRecipientRefused]:
    return {
        recipient: aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
        for recipient, reply in replies
        if reply.code not in (250, 251)
    }


def _accepted(
    reply: aiosmtplib.SMTPResponse, refused: dict[str, aiosmtplib.SMTPRecipientRefused]
) -> SendResult:
    return SendResult(
        accepted=True,
        code=reply.code,
        detail=reply.message,
        refused={r: f"{e.code} {e.message}" for r, e in refused.items()},
    )


def _all_refused(refused: dict[str, aiosmtplib.SMTPRecipientRefused]) -> SendResult:
    """Nothing was accepted: temporary if any recipient may work later."""
    temporary = any(is_temporary(e.code, e.message, at_rcpt=True) for e in refused.values())
    first = next(iter(refused.values()))
    detail = "all recipients refused: " + "; ".join(
        f"{r}: {e.code} {e.message}" for r, e in refused.items()
    )
    result = SendResult.failed(detail, temporary=temporary, code=first.code)
    result.refused = {r: f"{e.code} {e.message}" for r, e in refused.items()}
    return result


async def _reset(smtp: aiosmtplib.SMTP) -> bool:
    """RSET after a refused command, so the connection can carry the next message."""
    try:
        await smtp.rset()
    except Exception:
        return False
    return True


@hookimpl
def gmp_register_settings(register: Callable[[str, type[Settings]], None]) -> None:
    register("smtp", SmtpSettings)


@hookimpl
def gmp_register_transports(register: Callable[[str, Transport], None], service: Service) -> None:
    register("smtp", SmtpTransport(service.config.section("smtp")))
