"""Delivery reports to any URL: each batch is POSTed as JSON; a 2xx answer acknowledges it.

The body is ``{"reports": [item, ...]}`` with the ``proxy_sync`` item fields (``id``,
``account_id``, ``status``, ``sent_ts``, ``error_ts``, ``error``, ...). Unacknowledged batches
come again later, so receivers should deduplicate by ``id``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import httpx

from gmp_core import DeliveryReport, ReportReply, Service, Settings, hookimpl, setting


class WebhookSettings(Settings):
    url: str = setting("", description="where reports are POSTed (empty: no webhook)")
    token: str = setting("", description="sent as 'Authorization: Bearer <token>' when set")
    report_deferred: bool = setting(False, description="also report deferrals (retries)")
    timeout: float = setting(10.0, description="seconds one post may take in all", gt=0)


class WebhookReporter:
    def __init__(self, settings: WebhookSettings) -> None:
        self.url = settings.url
        self.report_deferred = settings.report_deferred
        self.timeout = settings.timeout
        headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
        self._http = httpx.AsyncClient(headers=headers, timeout=settings.timeout)

    async def report(self, reports: Sequence[DeliveryReport]) -> ReportReply:
        if not reports:  # a heartbeat: nothing worth a request
            return ReportReply(acknowledged=True)
        body = {"reports": [report.as_item() for report in reports]}
        # A network error or the deadline raises, which the core counts as "not
        # acknowledged" and retries. httpx's own timeout bounds each read, not the whole
        # exchange: an endpoint that trickles its answer would never time out.
        async with asyncio.timeout(self.timeout):
            response = await self._http.post(self.url, json=body)
        return ReportReply(acknowledged=response.is_success)

    async def close(self) -> None:
        await self._http.aclose()


@hookimpl
def gmp_register_settings(register: Callable[[str, type[Settings]], None]) -> None:
    register("webhook", WebhookSettings)


@hookimpl
def gmp_register_reporters(
    register: Callable[[str, WebhookReporter], None], service: Service
) -> None:
    settings: WebhookSettings = service.config.section("webhook")
    if settings.url:
        register("webhook", WebhookReporter(settings))
