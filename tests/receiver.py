"""A real ``proxy_sync`` endpoint for the tests: Quart under hypercorn on 127.0.0.1.

It records every request (headers, raw body, parsed reports) and answers as ``mode`` says:
``ok`` (``{"ok": true}`` plus ``extra``), ``error`` (500), ``slow`` (answers only once
``release`` is set: slower than any client timeout), ``html`` (a 200 web page), ``not_ok``
(``{"ok": false}``). ``choose``, when set, picks the mode of each post instead (a flaky
client). ``stop()`` and ``start()`` again on the same port make it go down and up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gmp_rest.server import RestServer
from quart import Quart, Response, request


@dataclass
class Post:
    headers: dict[str, str]
    body: bytes
    reports: list[dict[str, Any]]
    mode: str = "ok"  # how it was answered


class ReportReceiver:
    def __init__(self) -> None:
        self.mode = "ok"
        self.choose: Callable[[], str] | None = None
        self.extra: dict[str, Any] = {}
        self.posts: list[Post] = []
        self.release = asyncio.Event()
        self.port = 0
        self._server: RestServer | None = None
        self._changed = asyncio.Condition()
        self.app = Quart("report-receiver")
        self.app.add_url_rule("/sync", view_func=self._sync, methods=["POST"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sync"

    async def start(self) -> ReportReceiver:
        self._server = await RestServer.start(
            self.app,
            "127.0.0.1",
            self.port,
            keep_alive_timeout=5,
            graceful_timeout=0.1,
            access_log=False,
        )
        self.port = self._server.port
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            await self._server.stop()
            self._server = None
        self.release = asyncio.Event()

    async def _sync(self) -> Response | tuple[Any, int]:
        body = await request.get_data()
        mode = self.choose() if self.choose is not None else self.mode
        post = Post(dict(request.headers), body, [], mode)
        try:
            post.reports = (await request.get_json(force=True))["delivery_report"]
        except Exception:  # recorded as it came; the test decides what it means
            post.reports = []
        async with self._changed:
            self.posts.append(post)
            self._changed.notify_all()
        if mode == "slow":
            await self.release.wait()
        if mode == "error":
            return {"error": "boom"}, 500
        if mode == "html":
            return Response("<html><body>Welcome</body></html>", content_type="text/html")
        if mode == "not_ok":
            return {"ok": False}, 200
        return {"ok": True, **self.extra}, 200

    def reported(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every report received, duplicates included, in arrival order."""
        return [r for p in self.posts for r in p.reports if status in (None, r["status"])]

    async def wait(self, check: Any, timeout: float = 15.0) -> None:
        """Until ``check(self)`` holds."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: check(self))
