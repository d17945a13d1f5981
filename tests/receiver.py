"""A real ``proxy_sync`` endpoint for the tests: the generic receiver of ``gmp_core.testing``,
answering as ``mode`` says.

It records every request (headers, raw body, parsed reports) and answers as ``mode`` says:
``ok`` (``{"ok": true}`` plus ``extra``), ``error`` (500), ``slow`` (answers only once
``release`` is set: slower than any client timeout), ``html`` (a 200 web page), ``not_ok``
(``{"ok": false}``). ``choose``, when set, picks the mode of each post instead (a flaky
client). ``stop()`` and ``start()`` again on the same port make it go down and up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gmp_core import testing


@dataclass
class Post:
    headers: dict[str, str]  # names as Werkzeug spells them: X-Gmp-Signature
    body: bytes
    reports: list[dict[str, Any]]
    mode: str = "ok"  # how it was answered


class ReportReceiver(testing.ReportReceiver):
    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.choose: Callable[[], str] | None = None
        self.extra: dict[str, Any] = {}
        self.release = asyncio.Event()
        self.respond = self._answer
        self._modes: list[str] = []  # how each request was answered, in arrival order

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sync"

    async def stop(self) -> None:
        self.release.set()
        await super().stop()
        self.release = asyncio.Event()

    @property
    def posts(self) -> list[Post]:
        return [
            _post(request, mode)
            for request, mode in zip(self.requests, self._modes, strict=False)
            if request.path == "/sync"
        ]

    def reported(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every report received, duplicates included, in arrival order."""
        return [r for p in self.posts for r in p.reports if status in (None, r["status"])]

    async def _answer(self, request: testing.ReceivedRequest) -> testing.Reply:
        mode = self.choose() if self.choose is not None else self.mode
        self._modes.append(mode)
        if mode == "slow":
            await self.release.wait()
        if mode == "error":
            return 500, {"error": "boom"}
        if mode == "html":
            return 200, "<html><body>Welcome</body></html>"
        if mode == "not_ok":
            return 200, {"ok": False}
        return 200, {"ok": True, **self.extra}


def _post(request: testing.ReceivedRequest, mode: str) -> Post:
    headers = {_spelt(name): value for name, value in request.headers.items()}
    try:
        reports = json.loads(request.body)["delivery_report"]
    except Exception:  # recorded as it came; the test decides what it means
        reports = []
    return Post(headers, request.body, reports, mode)


def _spelt(name: str) -> str:
    """``x-gmp-signature`` -> ``X-Gmp-Signature``."""
    return "-".join(part.capitalize() for part in name.split("-"))
