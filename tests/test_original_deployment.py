"""A deployment of the original service, unchanged: its config.ini (every key of its table,
volumes written its way) run by a real `gmp serve`, a message through a real SMTP server
with attachments from a local directory, S3 (moto) and WebDAV (wsgidav), and its report
posted to a real HTTP endpoint with the file's credentials."""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gmp_core.testing import ReportReceiver, SmtpSink
from tests.processes import TOKEN, ServeProcess, post
from tests.support import account, message, wait_until
from tests.volumes.servers import WebdavServer, attachments_of
from tests.volumes.test_s3_webdav import PAYLOAD, dav, s3  # noqa: F401 (fixtures)


def original_ini(root: Path, receiver: ReportReceiver, s3_url: str, dav_url: str) -> str:
    """The original's config.ini: its keys (notes §2.2), its volumes, its leftovers."""
    volumes = {
        "docs": {"path": str(root / "docs")},  # genro-storage's local key
        "bucket": {  # genro-storage's s3 keys
            "bucket": "attachments",
            "prefix": "inv",
            "region": "us-east-1",
            "key": "testing",
            "secret": "testing",
            "endpoint_url": s3_url,
        },
        "dav": {  # its webdav keys; allow_networks is ours (127.0.0.1 is not public)
            "base_url": dav_url,
            "username": "u",
            "password": "p",
            "allow_networks": ["127.0.0.1/32"],
        },
    }
    backends = {"docs": "local", "bucket": "s3", "dav": "webdav"}
    lines = "".join(
        f"volume.{name}.backend = {backends[name]}\nvolume.{name}.config = {json.dumps(config)}\n"
        for name, config in volumes.items()
    )
    return f"""\
[storage]
db_path = {root / "mail_service.db"}

[server]
host = 127.0.0.1
port = 0
api_token = {TOKEN}

[client]
client_sync_url = {receiver.url}email/mailproxy/mp_endpoint/proxy_sync
client_sync_user = syncuser
client_sync_password = sync%%pass

[scheduler]
active = true
timezone = Europe/Rome

[delivery]
send_interval_seconds = 0.05
test_mode = true
default_priority = 2
delivery_report_retention_seconds = 604800
batch_size_per_account = 50

[logging]
delivery_activity = true

[volumes]
{lines}volume.docs.account_id = acc
volume.base64.backend = base64
volume.base64.config = {{}}
"""


@pytest.fixture
async def receiver() -> AsyncIterator[ReportReceiver]:
    server = await ReportReceiver().start()
    yield server
    await server.stop()


@pytest.fixture
def deployment(
    tmp_path: Path,
    receiver: ReportReceiver,
    s3: str,  # noqa: F811
    dav: WebdavServer,  # noqa: F811
) -> Iterator[Path]:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "terms.txt").write_bytes(b"the terms, from a local directory")
    ini = tmp_path / "config.ini"
    ini.write_text(original_ini(tmp_path, receiver, s3, dav.url))
    yield ini


async def a_full_claim_cycle(client: httpx.AsyncClient) -> None:
    """Return once the dispatcher went round at least once after this call (GET /status
    shows its heartbeat): what was queued before had its chance to be claimed."""

    async def heartbeat() -> float:
        status = (await client.get("/status")).json()
        return float(status["heartbeats"]["dispatcher"])

    began = await heartbeat()
    for _ in range(2):  # one iteration began after the call, and ended
        seen = began

        async def moved(seen: float = seen) -> bool:
            return await heartbeat() > seen

        await wait_until(moved)
        began = await heartbeat()


async def test_an_original_config_ini_runs_unchanged(
    deployment: Path, sink: SmtpSink, receiver: ReportReceiver
) -> None:
    env = {"GMP_PORT": "1", "GMP_CLIENT_SYNC_URL": "http://127.0.0.1:9/", "GMP_URL": "typo"}
    proxy = await ServeProcess(deployment, env=env).start()
    try:
        log = b"".join(proxy.log).decode()
        assert f"read {deployment}, the original service's configuration" in log
        assert "[scheduler] timezone is ignored" in log
        assert "[scheduler] active is ignored: it has no effect here" in log
        assert "GMP_PORT is ignored: " in log  # the file wins, as at the original
        assert "environment variable GMP_URL is set but nothing reads it" in log

        async with proxy.client() as client:
            await post(client, "/account", account(sink))
            files = [
                {"filename": "terms.txt", "storage_path": "docs:terms.txt"},
                {"filename": "invoice.pdf", "storage_path": "bucket:2024/a.pdf"},
                {"filename": "plan.odt", "storage_path": "dav:shared/plan.odt"},
            ]
            answer = await post(
                client, "/commands/add-messages", {"messages": [message("m1", attachments=files)]}
            )
            assert answer["queued"] == 1, answer

            await a_full_claim_cycle(client)  # test_mode = true: nothing goes by itself
            assert (await record_of(client, "m1"))["status"] == "queued"
            assert sink.mails == []

            await post(client, "/commands/run-now", {})
            await sink.wait_for(1)
            assert attachments_of(sink.mails[0]) == [
                ("terms.txt", "text/plain", b"the terms, from a local directory"),
                ("invoice.pdf", "application/pdf", PAYLOAD),
                ("plan.odt", "application/vnd.oasis.opendocument.text", PAYLOAD),
            ]

            def reported(receiver: ReportReceiver) -> bool:
                return any(report_of(request.json(), "m1") for request in receiver.requests)

            await receiver.wait(reported)
            [post_of_m1] = [r for r in receiver.requests if report_of(r.json(), "m1")]
            assert post_of_m1.path == "/email/mailproxy/mp_endpoint/proxy_sync"  # not the env's
            credentials = base64.b64encode(b"syncuser:sync%pass").decode()
            assert post_of_m1.headers["authorization"] == f"Basic {credentials}"
            assert report_of(post_of_m1.json(), "m1")["status"] == "sent"

            async def acknowledged() -> bool:
                return (await record_of(client, "m1"))["reported_ts"] is not None

            await wait_until(acknowledged)
    finally:
        assert await proxy.stop(signal.SIGTERM) == 0


async def record_of(client: httpx.AsyncClient, message_id: str) -> dict[str, Any]:
    answer = await client.get(f"/messages/{message_id}")
    assert answer.status_code == 200, answer.text
    record: dict[str, Any] = answer.json()["message"]
    return record


def report_of(body: dict[str, Any], message_id: str) -> dict[str, Any] | None:
    return next((r for r in body.get("delivery_report", []) if r["id"] == message_id), None)


async def test_a_config_ini_in_the_working_directory_is_found(tmp_path: Path) -> None:
    """No plugins.toml there, no --config: gmp serve reads ./config.ini, and says so."""
    ini = tmp_path / "config.ini"
    ini.write_text(
        f"[storage]\ndb_path = {tmp_path / 'found.db'}\n[server]\nport = 0\napi_token = {TOKEN}\n"
    )
    proxy = await ServeProcess(None, cwd=ini.parent).start()
    try:
        assert (
            "read config.ini, the original service's configuration" in b"".join(proxy.log).decode()
        )
        async with proxy.client() as client:
            assert (await client.get("/status")).status_code == 200
        assert (tmp_path / "found.db").exists()
    finally:
        assert await proxy.stop(signal.SIGTERM) == 0
