"""aiosmtpd's SMTP protocol as :class:`gmp_core.testing.SmtpSink` uses it.

Apart so that ``gmp_core.testing`` (loaded by pytest in every project that installs the proxy)
imports aiosmtpd only when a test starts a sink.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP

if TYPE_CHECKING:
    from gmp_core.testing import SmtpSink


class TrackedSMTP(SMTP):
    """aiosmtpd's protocol, remembered by the sink so ``stop()`` can drop its connection."""

    def __init__(self, sink: SmtpSink, **kwargs: Any) -> None:
        super().__init__(sink, **kwargs)
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sink._protocols.add(self)
        self._sink.most_open = max(self._sink.most_open, len(self._sink._protocols))
        self._sink._disconnected.clear()
        super().connection_made(transport)

    async def smtp_QUIT(self, arg: str) -> None:
        self._sink.quits += 1
        await super().smtp_QUIT(arg)

    def connection_lost(self, exc: Exception | None) -> None:
        self._sink._protocols.discard(self)
        super().connection_lost(exc)  # cancels a DATA still being handled: never recorded
        if not self._sink._protocols:
            self._sink._disconnected.set()
