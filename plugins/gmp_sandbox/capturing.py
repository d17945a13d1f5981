"""Keeping what the sandbox accepted: a capture per message, written by group commit.

Sends run concurrently; each waits until its capture is stored (a message reads as sent only
once its capture can be looked at). Captures that arrive while a write is under way go
together in the next one: one store transaction per batch, which also drops the oldest
captures beyond ``[sandbox] max_messages``.
"""

from __future__ import annotations

import asyncio
import email.errors
import email.header
import email.parser
import email.policy
import time

from gmp_core import Capture, CaptureStore, OutgoingMessage

# compat32: values as written (the modern policy would rewrite the Date it shows).
_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def capture_of(message: OutgoingMessage, account_id: str, accepted: list[str]) -> Capture:
    """The capture of ``message`` as handed to the transport, for the recipients accepted.
    Subject and date are read from the bytes themselves: they are what was captured."""
    data = message.data
    if data is None:  # the core always builds them before calling a transport
        raise RuntimeError("the sandbox was handed a message without its bytes")
    headers = _HEADERS.parsebytes(data)
    return Capture(
        id=0,
        account_id=account_id,
        gmp_id=message.message.id,
        mail_from=message.sender,
        rcpt_to=accepted,
        subject=_decoded(_unfold(headers["Subject"])),
        date=_unfold(headers["Date"]),
        size=len(data),
        captured_at=time.time(),
        data=data,
    )


def _unfold(value: object) -> str:
    """A header's text on one line (RFC 5322 unfolding); an absent header reads as ""."""
    return "" if value is None else str(value).replace("\r\n", "").replace("\n", "")


def _decoded(text: str) -> str:
    """RFC 2047 encoded words decoded; text that does not decode (bytes a plugin built
    itself) is kept as written rather than failing the send."""
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (email.errors.HeaderParseError, LookupError, ValueError):
        return text


class CaptureWriter:
    """Stores captures in batches; :meth:`add` returns once its capture is stored."""

    def __init__(self, store: CaptureStore, keep: int) -> None:
        self.store = store
        self.keep = keep
        self._pending: list[tuple[Capture, asyncio.Future[int]]] = []
        self._writing: asyncio.Task[None] | None = None

    async def add(self, capture: Capture) -> int:
        """Store ``capture``; returns its id. Raises what the store raised."""
        stored: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((capture, stored))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write(), name="gmp-sandbox-captures")
        return await stored

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                ids = await self.store.add_captures([capture for capture, _ in batch], self.keep)
            except Exception as exc:
                for _, stored in batch:
                    if not stored.done():
                        stored.set_exception(exc)
                continue
            for (_, stored), capture_id in zip(batch, ids, strict=True):
                if not stored.done():
                    stored.set_result(capture_id)

    async def close(self) -> None:
        """Wait for the write under way (the store closes after the transports)."""
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)
