"""Temporary or permanent? SMTP failures classified per RFC 5321 reply classes.

* temporary (retry later): 4xx replies, 552 to RCPT (RFC 5321 §4.5.3.1.10: "too many
  recipients", treated as 452), timeouts, refused or dropped connections;
* permanent (end as error): 5xx replies, authentication failures, TLS failures (bad
  certificate, STARTTLS not offered), missing SMTPUTF8 support.

An RFC 3463 enhanced status code at the start of the reply text ("4.2.1", "5.1.1") wins
over the basic code when the two disagree.
"""

from __future__ import annotations

import re
import ssl

import aiosmtplib

from gmp_core import SendResult

_ENHANCED = re.compile(r"\s*([245])\.\d{1,3}\.\d{1,3}\b")


def is_temporary(code: int, text: str = "", *, at_rcpt: bool = False) -> bool:
    enhanced = _ENHANCED.match(text)
    if enhanced:
        return enhanced.group(1) == "4"
    if at_rcpt and code == 552:
        return True
    return 400 <= code < 500


def failure(exc: BaseException) -> SendResult:
    """A :class:`SendResult` for an exception raised while connecting or sending."""
    tls = _tls_error(exc)
    if tls is not None:
        return SendResult.failed(f"TLS failure: {tls}", temporary=False)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return SendResult.failed(
            f"authentication failed: {exc.message}", temporary=False, code=exc.code
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return SendResult.failed(
            exc.message, temporary=is_temporary(exc.code, exc.message), code=exc.code
        )
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return SendResult.failed(f"timed out: {exc}", temporary=True)
    if isinstance(
        exc,
        aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected | ConnectionError | OSError,
    ):
        return SendResult.failed(f"connection failed: {exc}", temporary=True)
    if isinstance(exc, aiosmtplib.SMTPException):  # STARTTLS or AUTH not offered, and such
        return SendResult.failed(f"server refused the session: {exc}", temporary=False)
    raise exc  # not an SMTP problem: a bug, let the core see it


def keeps_connection(exc: BaseException) -> bool:
    """After this error, can the connection carry the next message (once reset)?"""
    return isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code != 421


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    """aiosmtplib wraps TLS errors (they are OSErrors) in connection errors: look inside."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return None  # the peer went away mid-handshake: a dropped connection
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
