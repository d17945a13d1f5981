"""The reference client of examples/client against a real proxy, both over real HTTP."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
from gmp_rest.server import RestServer

from examples.client.app import create_app, record
from gmp_core import Config, Service
from gmp_core.testing import SmtpSink
from tests.support import account, base_tables, merge, message, wait_until

TOKEN = "proxy-token"


async def test_the_reference_client_sends_and_receives_signed_reports(
    tmp_path: Path, sink: SmtpSink
) -> None:
    app = create_app(proxy_token=TOKEN, sync_token="sync-token", sync_secret="sync-secret")
    client = await RestServer.start(
        app, "127.0.0.1", 0, keep_alive_timeout=5, graceful_timeout=0.1, access_log=False
    )
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(client.stop)
        tables = {
            "plugins": {"disable": []},  # the tests' default leaves the REST plugin out
            "rest": {"port": 0},
            "token_auth": {"api_token": TOKEN},
            "proxy_sync": {
                "url": f"{client.url}/proxy_sync",
                "token": "sync-token",
                "secret": "sync-secret",
            },
            "reporting": {"interval": 0},
        }
        service = Service(Config(merge(base_tables(tmp_path), tables), environ={}))
        await service.start()
        stack.push_async_callback(service.stop)
        app.config["PROXY_URL"] = service.state["rest"].url
        await service.put_account(account(sink))
        async with httpx.AsyncClient(base_url=client.url) as http:
            queued = await http.post("/send", json=message("c1"))
            assert queued.json() == {"ok": True, "queued": 1, "rejected": [], "warnings": []}

            async def reported() -> bool:
                outcomes = (await http.get("/outcomes")).json()["outcomes"]
                return outcomes.get("c1", {}).get("status") == "sent"

            await wait_until(reported)
            forged = await http.post(
                "/proxy_sync",
                json={"delivery_report": [{"id": "c1", "status": "error"}]},
                headers={"Authorization": "Bearer sync-token", "X-GMP-Signature": "t=1,v1=00"},
            )
            assert forged.status_code == 401
            outcomes = (await http.get("/outcomes")).json()["outcomes"]
            assert outcomes["c1"]["status"] == "sent"


def test_a_repeated_or_late_report_changes_nothing() -> None:
    outcomes: dict = {}
    record(outcomes, {"id": "a", "status": "deferred"})
    record(outcomes, {"id": "a", "status": "sent", "sent_ts": 2})
    record(outcomes, {"id": "a", "status": "deferred"})  # late, out of order
    record(outcomes, {"id": "a", "status": "sent", "sent_ts": 2})  # at least once
    assert outcomes == {"a": {"id": "a", "status": "sent", "sent_ts": 2}}
