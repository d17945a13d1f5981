"""A reference client application: sends mail through the proxy, receives its reports.

Run it next to a proxy (docs/reports.md walks through it)::

    PROXY_URL=http://127.0.0.1:8000 PROXY_TOKEN=... SYNC_TOKEN=... SYNC_SECRET=... \\
        quart --app examples.client.app:create_app run --port 8080

and point the proxy at it: ``[proxy_sync] url = "http://127.0.0.1:8080/proxy_sync"``, with the
same ``token`` and ``secret``. What it shows:

* ``POST /send`` queues a mail with a client-chosen ``id`` (resending the same id is safe);
* ``POST /proxy_sync`` checks the Bearer token and the signature on the raw body, then
  records each report by ``id``: reports come at least once, so a repeat changes nothing;
* ``GET /outcomes`` lists what is known so far.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

import httpx
from quart import Quart, request

from examples.client.signature import verify_signature


def create_app(
    proxy_url: str | None = None,
    proxy_token: str | None = None,
    sync_token: str | None = None,
    sync_secret: str | None = None,
) -> Quart:
    app = Quart(__name__)
    env = os.environ.get
    app.config.update(
        PROXY_URL=proxy_url or env("PROXY_URL", "http://127.0.0.1:8000"),
        PROXY_TOKEN=proxy_token or env("PROXY_TOKEN", ""),
        SYNC_TOKEN=sync_token or env("SYNC_TOKEN", ""),
        SYNC_SECRET=sync_secret or env("SYNC_SECRET", ""),
    )
    outcomes: dict[str, dict[str, Any]] = {}  # your database table, keyed by message id

    @app.post("/send")
    async def send() -> tuple[dict[str, Any], int]:
        mail = await request.get_json()
        async with httpx.AsyncClient(base_url=app.config["PROXY_URL"]) as proxy:
            answer = await proxy.post(
                "/commands/add-messages",
                json={"messages": [mail]},
                headers={"X-API-Token": app.config["PROXY_TOKEN"]},
            )
        return answer.json(), answer.status_code

    @app.post("/proxy_sync")
    async def proxy_sync() -> tuple[dict[str, Any], int]:
        sync_token, sync_secret = app.config["SYNC_TOKEN"], app.config["SYNC_SECRET"]
        given = request.headers.get("Authorization", "")
        if sync_token and not hmac.compare_digest(given, f"Bearer {sync_token}"):
            return {"ok": False, "error": "bad token"}, 401
        body = await request.get_data()  # the raw bytes: the signature covers exactly these
        signature = request.headers.get("X-GMP-Signature", "")
        if sync_secret and not verify_signature(sync_secret, signature, body):
            return {"ok": False, "error": "bad signature"}, 401
        payload = await request.get_json(force=True)
        for report in payload["delivery_report"]:
            record(outcomes, report)
        # Any 2xx acknowledges (only now does the proxy mark these reported); "ok": false
        # would refuse them, and "queued"/"next_sync_after" would pace the next post.
        return {"ok": True}, 200

    @app.get("/outcomes")
    async def list_outcomes() -> dict[str, Any]:
        return {"ok": True, "outcomes": outcomes}

    return app


def record(outcomes: dict[str, dict[str, Any]], report: dict[str, Any]) -> None:
    """Keep the newest state of each message; a report seen before changes nothing."""
    known = outcomes.get(report["id"])
    if known is not None and known["status"] in ("sent", "error"):
        return  # final already: a repeat (or a late deferral) of something we know
    outcomes[report["id"]] = report
