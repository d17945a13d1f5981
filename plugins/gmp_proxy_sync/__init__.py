"""Bundled reporter: the ``proxy_sync`` protocol (SPEC §4) over httpx.

Each batch goes as one ``POST <url>`` with ``{"delivery_report": [...]}``, authenticated with
a Bearer token or Basic credentials, and signed when a secret is configured::

    X-GMP-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

The timestamp inside the signed text lets receivers refuse replays (docs/reports.md has the
recipe). Any 2xx answer acknowledges a batch, as the original did (its clients answer
``{"status": "ok", "processed": 3}`` or ``{"sent": 12, "error": 1}``), unless its body is JSON
with ``"ok": false``; ``ack = "json_ok"`` requires ``"ok": true`` instead. Anything else is a
failure the core retries with back-off. Nothing secret is ever logged: the URL is
shown without its credentials or query.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import httpx

from gmp_core import (
    DeliveryReport,
    Reporter,
    ReportReply,
    Service,
    Settings,
    hookimpl,
    setting,
)

log = logging.getLogger("gmp.proxy_sync")
# httpx logs every request's full URL at INFO, and a client URL may carry credentials.
logging.getLogger("httpx").setLevel(logging.WARNING)

SIGNATURE_HEADER = "X-GMP-Signature"


class ProxySyncSettings(Settings):
    url: str = setting(
        "", env="GMP_CLIENT_SYNC_URL", description="where reports are posted; empty: off"
    )
    user: str = setting("", env="GMP_CLIENT_SYNC_USER", description="Basic auth user")
    password: str = setting("", env="GMP_CLIENT_SYNC_PASSWORD", description="Basic auth password")
    token: str = setting(
        "", env="GMP_CLIENT_SYNC_TOKEN", description="Bearer token (wins over user/password)"
    )
    secret: str = setting("", description="HMAC-SHA256 key that signs each body; empty: unsigned")
    timeout: float = setting(
        30.0,
        gt=0,
        description="seconds one post may take in all: connecting, sending, and reading "
        "the whole answer",
    )
    report_deferred: bool = setting(False, description="also report deferrals, not only outcomes")
    ack: Literal["2xx", "json_ok"] = setting(
        "2xx",
        description="what acknowledges a post: '2xx', any 2xx answer unless its JSON says "
        '"ok": false; \'json_ok\', only a 2xx whose JSON says "ok": true',
    )


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class ProxySyncReporter:
    def __init__(self, settings: ProxySyncSettings) -> None:
        self.report_deferred = settings.report_deferred
        self.ack = settings.ack
        self.url = settings.url
        self.secret = settings.secret
        self.timeout = settings.timeout
        self.where = _printable(settings.url)
        headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
        auth = httpx.BasicAuth(settings.user, settings.password) if settings.user else None
        self._client = httpx.AsyncClient(
            timeout=settings.timeout, headers=headers, auth=None if settings.token else auth
        )

    async def report(self, reports: Sequence[DeliveryReport]) -> ReportReply:
        body = json.dumps(
            {"delivery_report": [report.as_item() for report in reports]},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body, int(time.time()))
        try:
            # httpx's timeout bounds each read, not the exchange: an endpoint trickling its
            # answer a byte at a time would hold the post (and the lease) for ever.
            async with asyncio.timeout(self.timeout):
                response = await self._client.post(self.url, content=body, headers=headers)
        except TimeoutError:
            log.warning("proxy_sync to %s took longer than %gs", self.where, self.timeout)
            return ReportReply(acknowledged=False)
        except httpx.HTTPError as exc:
            log.warning("proxy_sync to %s failed: %s", self.where, type(exc).__name__)
            return ReportReply(acknowledged=False)
        return self._reply(response)

    def _reply(self, response: httpx.Response) -> ReportReply:
        if not response.is_success:
            log.warning("proxy_sync to %s answered %d", self.where, response.status_code)
            return ReportReply(acknowledged=False)
        answer = _json_object(response)
        refused = answer.get("ok") is False
        if refused or (self.ack == "json_ok" and answer.get("ok") is not True):
            log.warning(
                "proxy_sync to %s did not acknowledge (%s)",
                self.where,
                '"ok": false' if refused else 'no "ok": true',
            )
            return ReportReply(acknowledged=False)
        return ReportReply(
            acknowledged=True,
            more_now=bool(answer.get("queued")),
            not_before=_unix_seconds(answer.get("next_sync_after")),
        )

    async def close(self) -> None:
        await self._client.aclose()


def _json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object; an empty, HTML or other body counts as ``{}``."""
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _unix_seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _printable(url: str) -> str:
    """The URL without credentials or query, for logs."""
    parsed = httpx.URL(url) if url else None
    return f"{parsed.scheme}://{parsed.host}:{parsed.port or ''}{parsed.path}" if parsed else ""


@hookimpl
def gmp_register_settings(register: Callable[[str, type[Settings]], None]) -> None:
    register("proxy_sync", ProxySyncSettings)


@hookimpl
def gmp_register_reporters(register: Callable[[str, Reporter], None], service: Service) -> None:
    settings: ProxySyncSettings = service.config.section("proxy_sync")
    if not settings.url:
        log.info("proxy_sync: no url configured; delivery reports are not posted")
        return
    register("proxy_sync", ProxySyncReporter(settings))
