"""The sandbox end to end: `gmp serve` as a process, the real dispatcher, retries and reports
posted to a real endpoint, and the README's first example run as it is written."""

from __future__ import annotations

import json
import re
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import TOKEN, ServeProcess, post
from tests.receiver import ReportReceiver
from tests.support import wait_until

ROOT = Path(__file__).parent.parent.parent
SLOW_SECONDS = 0.5


@pytest.fixture
async def receiver() -> AsyncIterator[ReportReceiver]:
    started = await ReportReceiver().start()
    yield started
    await started.stop()


@pytest.fixture
async def proxy(tmp_path: Path, receiver: ReportReceiver) -> AsyncIterator[ServeProcess]:
    config = tmp_path / "plugins.toml"
    config.write_text(
        f'[sql]\nurl = "{tmp_path / "gmp.db"}"\n'
        "[rest]\nport = 0\n"
        f'[token_auth]\napi_token = "{TOKEN}"\n'
        "[service]\nsend_loop_interval = 0.05\nretry_delays = [0.2]\nshutdown_timeout = 10\n"
        f'[proxy_sync]\nurl = "{receiver.url}"\nreport_deferred = true\n'
        "[reporting]\ninterval = 0\nretry_initial = 0.05\nheartbeat_seconds = 0\n"
        f'[sandbox]\naccount = "sandbox"\nslow_seconds = {SLOW_SECONDS}\n'
    )
    process = await ServeProcess(config).start()
    yield process
    assert await process.stop(signal.SIGTERM) == 0


def mail(id: str, to: str) -> dict[str, Any]:
    return {
        "id": id,
        "account_id": "sandbox",
        "from": "Shop <shop@example.com>",
        "to": [to],
        "subject": f"about {id}",
        "body": f"body of {id}",
    }


OUTCOMES = {
    "ok": "success@example.com",
    "bounced": "bounce@example.com",
    "deferred": "defer@example.com",
    "slow": "slow@example.com",
    "anyone": "someone@example.org",
}


async def test_every_simulated_outcome_goes_through_dispatch_retries_and_reports(
    proxy: ServeProcess, receiver: ReportReceiver
) -> None:
    async with proxy.client() as client:
        answer = await post(
            client,
            "/commands/add-messages",
            {"messages": [mail(id_, to) for id_, to in OUTCOMES.items()]},
        )
        assert answer == {"ok": True, "queued": 5, "rejected": [], "warnings": []}
        await receiver.wait(
            lambda r: {x["id"] for x in r.reported() if x["status"] != "deferred"} == set(OUTCOMES)
        )
        reports: dict[str, list[dict[str, Any]]] = {}
        for report in receiver.reported():
            reports.setdefault(report["id"], []).append(report)

        assert [r["status"] for r in reports["ok"]] == ["sent"]
        assert [r["status"] for r in reports["anyone"]] == ["sent"]
        assert [r["status"] for r in reports["slow"]] == ["sent"]
        [bounce] = reports["bounced"]
        assert bounce["status"] == "error" and bounce["error_code"] == 550
        assert bounce["error"] == (
            "550 all recipients refused: bounce@example.com: "
            "550 5.1.1 User unknown (simulated by the sandbox)"
        )
        assert bounce["refused"] == [
            {
                "recipient": "bounce@example.com",
                "error": "550 5.1.1 User unknown (simulated by the sandbox)",
            }
        ]
        deferral, sent = reports["deferred"]
        assert (deferral["status"], deferral["error_code"]) == ("deferred", 451)
        assert deferral["error"].startswith("all recipients refused: defer@example.com: 451 4.3.0")
        assert deferral["deferred_ts"] is not None
        assert sent["status"] == "sent"

        history = (await client.get("/messages/deferred")).json()
        assert [e["kind"] for e in history["events"]] == ["queued", "deferred", "sent"]
        assert history["message"]["attempts"] == 1  # one failed attempt, then success
        slow = (await client.get("/messages/slow")).json()["events"]
        assert slow[-1]["detail"].endswith(f"after {SLOW_SECONDS:g} s")

        listing = (await client.get("/sandbox/messages")).json()
        captured = {m["gmp_id"]: m for m in listing["messages"]}
        assert set(captured) == {"ok", "deferred", "slow", "anyone"}  # a bounce is not kept
        for id_, to in OUTCOMES.items():
            if id_ != "bounced":
                assert captured[id_]["envelope"] == {"from": "shop@example.com", "to": [to]}
                assert captured[id_]["subject"] == f"about {id_}"
                sent_event = (await client.get(f"/messages/{id_}")).json()["events"][-1]
                assert f"captured as sandbox message {captured[id_]['id']}" in sent_event["detail"]


def readme_example() -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The add-messages payload of the README's "Use it" section, the answer it shows, and
    the paths it reads afterwards with curl."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use it", 1)[1].split("\n## ", 1)[0]
    first_block = section.split("```bash", 1)[1].split("```", 1)[0]
    payload = re.search(r"add-messages .*?-d '(\{.*?\})'", first_block, re.DOTALL)
    assert payload is not None, "the README's first example has no add-messages call"
    answer = re.search(r"^# (\{\"ok\".*\})$", first_block, re.MULTILINE)
    assert answer is not None, "the README's first example shows no answer"
    reads = re.findall(r"^curl -s localhost:8000(/\S+) +#", first_block, re.MULTILINE)
    return json.loads(payload.group(1)), json.loads(answer.group(1)), reads


async def test_the_readmes_first_example_with_the_shipped_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped plugins.toml as it is (only the port comes from the environment, as the
    environment may say): one curl sends a message, the next ones show it sent and captured."""
    shutil.copy(ROOT / "plugins.toml", tmp_path / "plugins.toml")
    monkeypatch.setenv("GMP_REST_PORT", "0")
    payload, shown, reads = readme_example()
    assert reads[:3] == ["/messages/order-42", "/sandbox/messages", "/sandbox/messages/1/raw"]
    process = await ServeProcess(tmp_path / "plugins.toml").start()
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=30) as client:
            answer = await client.post("/commands/add-messages", json=payload)
            assert (
                answer.json() == shown == {"ok": True, "queued": 1, "rejected": [], "warnings": []}
            )

            async def sent() -> bool:
                record = (await client.get("/messages/order-42")).json()
                return bool(record["message"]["status"] == "sent")

            await wait_until(sent)
            for path in reads:
                assert (await client.get(path)).status_code == 200, path
            [listed] = (await client.get("/sandbox/messages")).json()["messages"]
            assert (listed["id"], listed["gmp_id"], listed["subject"]) == (
                1,
                "order-42",
                "Your order",
            )
            raw = await client.get("/sandbox/messages/1/raw")
            assert raw.headers["content-type"] == "message/rfc822"
            assert b"\r\nSubject: Your order\r\n" in raw.content
            assert raw.content.endswith(b"\r\n\r\nIt shipped.")
    finally:
        assert await process.stop(signal.SIGTERM) == 0
