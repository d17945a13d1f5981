"""S3 volumes against moto's S3 server and WebDAV volumes against wsgidav, both on
127.0.0.1: what they deliver is compared byte for byte at the SMTP sink."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gmp_volumes import registry_of

from gmp_core import Service
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, message
from tests.volumes.servers import WebdavServer, attachments_of, free_port

PAYLOAD = bytes(range(256)) * 16
CREDENTIALS = {"access_key": "testing", "secret_key": "testing", "region": "us-east-1"}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 on 127.0.0.1 with a bucket ``attachments`` holding ``inv/2024/a.pdf``."""
    import boto3
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="attachments")
    client.put_object(Bucket="attachments", Key="inv/2024/a.pdf", Body=PAYLOAD)
    yield endpoint
    server.stop()


@pytest.fixture
def dav(tmp_path: Path) -> Iterator[WebdavServer]:
    root = tmp_path / "dav"
    (root / "shared").mkdir(parents=True)
    (root / "shared" / "plan.odt").write_bytes(PAYLOAD)
    server = WebdavServer(root).start()
    yield server
    server.stop()


async def start(make_service: ServiceFactory, sink: SmtpSink, volume: dict[str, Any]) -> Service:
    settings = {"mounts": [volume], "api_allow_networks": ["127.0.0.0/8"]}
    service = await make_service(volumes=settings)
    await service.put_account(account(sink))
    return service


def with_file(id: str, storage_path: str) -> dict[str, Any]:
    return message(id, attachments=[{"filename": "doc", "storage_path": storage_path}])


async def test_s3_volume_delivers_and_reports_missing_keys(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, s3: str
) -> None:
    config = {"bucket": "attachments", "base_path": "inv", "endpoint_url": s3, **CREDENTIALS}
    volume = {"name": "bucket", "backend": "s3", "config": config}
    service = await start(make_service, sink, volume)
    await service.add_messages(
        [with_file("m1", "bucket:2024/a.pdf"), with_file("m2", "bucket:2024/none.pdf")]
    )
    await events.wait("sent", "m1")
    [error] = await events.wait("error", "m2")
    assert attachments_of(sink.mails[0]) == [("doc", "application/octet-stream", PAYLOAD)]
    assert error.detail == "attachment 'doc': not found: 2024/none.pdf"


async def test_webdav_volume_delivers_and_refuses_bad_credentials(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, dav: WebdavServer
) -> None:
    allow = ["127.0.0.1/32"]
    good = {"url": dav.url, "username": "u", "password": "p", "allow_networks": allow}
    service = await start(make_service, sink, {"name": "dav", "backend": "webdav", "config": good})
    registry_volume = {
        "name": "dav-wrong",
        "backend": "webdav",
        "config": {**good, "password": "wrong"},
    }
    registry = registry_of(service)
    assert registry is not None
    await registry.put(registry_volume)
    await service.add_messages(
        [with_file("m1", "dav:shared/plan.odt"), with_file("m2", "dav-wrong:shared/plan.odt")]
    )
    await events.wait("sent", "m1")
    [error] = await events.wait("error", "m2")
    assert attachments_of(sink.mails[0]) == [("doc", "application/octet-stream", PAYLOAD)]
    assert error.detail == "attachment 'doc': forbidden: the source answered HTTP 401"


async def test_webdav_on_loopback_is_refused_unless_allow_listed(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, dav: WebdavServer
) -> None:
    config = {"url": dav.url, "username": "u", "password": "p"}
    service = await start(
        make_service, sink, {"name": "dav", "backend": "webdav", "config": config}
    )
    await service.add_messages([with_file("m1", "dav:shared/plan.odt")])
    [error] = await events.wait("error", "m1")
    assert "forbidden: 127.0.0.1 resolves to a non-public address" in error.detail
