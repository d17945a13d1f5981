"""A pool of SMTP connections for one account.

One aiosmtplib ``SMTP`` object serialises its sends, so parallel delivery needs several
connections: the pool opens up to ``max_connections``, hands out idle ones newest first, and
closes those idle longer than the account's ``ttl``. A reused connection is not probed with
NOOP (a round trip per message); if the server dropped it meanwhile, the sender notices at
MAIL FROM and retries once on a fresh connection.

Every connection the pool opened counts against ``max_connections`` until it is closed:
while it is being opened, busy, idle, and while its QUIT is under way. So the server never
sees more than ``max_connections`` sessions of the account, whatever happens meanwhile.
When the account changes (:meth:`ConnectionPool.retire`), its idle connections are closed at
once and its busy ones as soon as their send ends; they keep counting until then, and the
new settings' connections take their places one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time

import aiosmtplib

from gmp_core import Account, TlsMode

log = logging.getLogger("gmp.smtp")

QUIT_TIMEOUT = 5.0


def _unverified_context() -> ssl.SSLContext:
    """Opportunistic TLS encrypts without checking the certificate, as Postfix's ``may``
    level does: the alternative the account accepted is plaintext, and relays offering
    STARTTLS with a self-signed certificate must keep working."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA bundle to load: none is used
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_UNVERIFIED = _unverified_context()


class ConnectionPool:
    def __init__(
        self,
        account: Account,
        *,
        connect_timeout: float,
        command_timeout: float,
        local_hostname: str,
        tls_context: ssl.SSLContext | None,
    ) -> None:
        self.account = account
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.local_hostname = local_hostname
        self.tls_context = tls_context
        self.in_use = 0
        self._open = 0  # opening, busy, idle or closing: what the server may see
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # (connection, last used)
        self._current: set[aiosmtplib.SMTP] = set()  # opened with the account as it is now
        self._room = asyncio.Event()  # a connection went idle or closed: look again
        self._closing: set[asyncio.Task[None]] = set()
        self._said_plaintext = False

    @property
    def open_connections(self) -> int:
        return self._open

    async def acquire(self) -> tuple[aiosmtplib.SMTP, bool]:
        """A connection and whether it was reused. Waits while all are busy."""
        while True:
            smtp = self._take_idle()
            if smtp is not None:
                self.in_use += 1
                return smtp, True
            if self._open < self.account.max_connections:
                break
            self._room.clear()
            await self._room.wait()
        self._open += 1  # before connecting: it counts from its first packet
        try:
            smtp = await self._connect()
        except BaseException:
            self._gone()
            raise
        self._current.add(smtp)
        self.in_use += 1
        return smtp, False

    def release(self, smtp: aiosmtplib.SMTP, *, reusable: bool) -> None:
        self.in_use -= 1
        if reusable and smtp.is_connected and smtp in self._current:
            self._idle.append((smtp, time.monotonic()))
            self._room.set()
        else:  # broken, or opened with settings the account no longer has
            self._close_later(smtp)

    def retire(self) -> None:
        """The account changed or was deleted: idle connections are closed now, busy ones
        when their send ends (each with QUIT); new ones use the account as it is now."""
        self._current = set()
        idle, self._idle = self._idle, []
        for smtp, _ in idle:
            self._close_later(smtp)

    def reap(self) -> None:
        """Close connections idle longer than the account's ``ttl``."""
        deadline = time.monotonic() - self.account.ttl
        expired = [smtp for smtp, last_used in self._idle if last_used < deadline]
        self._idle = [(smtp, used) for smtp, used in self._idle if used >= deadline]
        for smtp in expired:
            self._close_later(smtp)

    async def close(self) -> None:
        """QUIT every connection (sends have drained, or been cancelled, by now)."""
        self.retire()
        while self._closing:
            await asyncio.gather(*self._closing)

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        now = time.monotonic()
        while self._idle:
            smtp, last_used = self._idle.pop()
            if smtp.is_connected and now - last_used < self.account.ttl:
                return smtp
            self._close_later(smtp)
        return None

    async def _connect(self) -> aiosmtplib.SMTP:
        account = self.account
        opportunistic = account.tls == TlsMode.OPPORTUNISTIC
        smtp = aiosmtplib.SMTP(
            hostname=account.host,
            port=account.port,
            use_tls=account.tls == TlsMode.SSL,
            # True: required, never plaintext. None: aiosmtplib upgrades when the server
            # offers STARTTLS and goes on in plaintext when it does not.
            start_tls=None if opportunistic else account.tls == TlsMode.STARTTLS,
            tls_context=_UNVERIFIED if opportunistic else self.tls_context,
            timeout=self.command_timeout,
            local_hostname=self.local_hostname,
        )
        await smtp.connect(timeout=self.connect_timeout)
        try:
            if opportunistic and smtp.get_transport_info("sslcontext") is None:
                self._plaintext_once()
            if account.user and account.password:
                await smtp.login(account.user, account.password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _plaintext_once(self) -> None:
        if not self._said_plaintext:
            self._said_plaintext = True
            log.warning(
                "account %r: the server offers no STARTTLS; sending in plaintext "
                '(tls "opportunistic": set "starttls" to require encryption, "none" to '
                "silence this)",
                self.account.id,
            )

    def _close_later(self, smtp: aiosmtplib.SMTP) -> None:
        """QUIT in the background; the connection counts as open until it is closed."""
        task = asyncio.create_task(_quit(smtp))
        self._closing.add(task)

        def closed(task: asyncio.Task[None]) -> None:
            self._closing.discard(task)
            self._current.discard(smtp)
            self._gone()

        task.add_done_callback(closed)

    def _gone(self) -> None:
        self._open -= 1
        self._room.set()


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    if not smtp.is_connected:
        return
    try:
        await smtp.quit(timeout=QUIT_TIMEOUT)
    except Exception:
        log.debug("QUIT failed; closing the socket", exc_info=True)
    finally:
        with contextlib.suppress(Exception):
            smtp.close()
