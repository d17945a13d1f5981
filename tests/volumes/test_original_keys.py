"""Volumes written the original service's way (its genro-storage keys, its VOLUMES.md) work
beside ours, against the same real servers: files on disk, moto's S3, wsgidav, HTTP."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from gmp_volumes.policy import check_api_definition
from gmp_volumes.registry import parse_definition

from gmp_core import ConfigError, InvalidInput
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, message
from tests.volumes.servers import FileServer, WebdavServer, attachments_of
from tests.volumes.test_s3_webdav import PAYLOAD, dav, s3  # noqa: F401 (fixtures)

LOOPBACK = ["127.0.0.1/32"]


async def delivered(
    make_service: ServiceFactory,
    sink: SmtpSink,
    events: EventLog,
    volume: dict[str, Any],
    path: str,
) -> bytes:
    """The bytes that arrive at the sink for ``volume:path``."""
    service = await make_service(volumes={"mounts": [{"name": "v", **volume}]})
    await service.put_account(account(sink))
    attachment = {"filename": "doc", "storage_path": f"v:{path}"}
    await service.add_messages([message("m1", attachments=[attachment])])
    await events.wait("sent", "m1")
    [(_, _, data)] = attachments_of(sink.mails[0])
    return data


async def test_local_path(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, files: Path
) -> None:
    (files / "a.txt").write_bytes(b"local, the original's way")
    volume = {"backend": "local", "config": {"path": str(files)}}
    data = await delivered(make_service, sink, events, volume, "a.txt")
    assert data == b"local, the original's way"


@pytest.mark.parametrize(
    "credentials",
    [
        {"key": "testing", "secret": "testing"},  # as genro-storage read them
        {"access_key": "testing", "secret_key": "testing"},  # as VOLUMES.md documented them
    ],
    ids=["genro-storage", "VOLUMES.md"],
)
async def test_s3_bucket_prefix_region_endpoint_and_credentials(
    make_service: ServiceFactory,
    sink: SmtpSink,
    events: EventLog,
    s3: str,  # noqa: F811
    credentials: dict[str, str],
) -> None:
    config = {"bucket": "attachments", "prefix": "inv", "region": "us-east-1", **credentials}
    volume = {"backend": "s3", "config": {**config, "endpoint_url": s3}}
    assert await delivered(make_service, sink, events, volume, "2024/a.pdf") == PAYLOAD


@pytest.mark.parametrize(
    ("backend", "config", "ours"),
    [
        ("local", {"path": "/srv"}, {"base_path": "/srv"}),
        (
            "s3",
            {"bucket": "bkt", "prefix": "p", "key": "k", "secret": "s"},
            {"base_path": "p", "access_key": "k", "secret_key": "s"},
        ),
        ("webdav", {"base_url": "https://dav.example.com/"}, {"url": "https://dav.example.com/"}),
        ("http", {"base_url": "https://h.example.com/", "timeout": 5}, {"timeout": 5.0}),
    ],
)
def test_the_originals_names_become_ours(
    backend: str, config: dict[str, Any], ours: dict[str, Any]
) -> None:
    definition = parse_definition({"name": "v", "backend": backend, "config": config})
    parsed = definition.backend_config()
    assert {key: getattr(parsed, key) for key in ours} == ours
    assert definition.config == config  # shown and stored as given


async def test_webdav_base_url_username_password_verify_ssl(
    make_service: ServiceFactory,
    sink: SmtpSink,
    events: EventLog,
    dav: WebdavServer,  # noqa: F811
) -> None:
    config = {
        "base_url": dav.url,
        "username": "u",
        "password": "p",
        "verify_ssl": True,
        "allow_networks": LOOPBACK,  # ours: loopback is refused otherwise
    }
    volume = {"backend": "webdav", "config": config}
    assert await delivered(make_service, sink, events, volume, "shared/plan.odt") == PAYLOAD


async def test_http_base_url_and_timeout(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, web: FileServer
) -> None:
    web.files["/a.txt"] = b"over http"
    web.files["/slow.txt"] = b"late"
    web.hanging.add("/slow.txt")
    config = {"base_url": web.url, "timeout": 0.3, "allow_networks": LOOPBACK}
    service = await make_service(
        volumes={"mounts": [{"name": "v", "backend": "http", "config": config}]}
    )
    await service.put_account(account(sink))
    files = [{"filename": "doc", "storage_path": f"v:{name}"} for name in ("a.txt", "slow.txt")]
    await service.add_messages(
        [message("m1", attachments=files[:1]), message("m2", attachments=files[1:])]
    )
    await events.wait("sent", "m1")
    [deferred, *_] = await events.wait("deferred", "m2")
    assert deferred.detail == "attachment 'doc': source timed out after 0.3s"  # the volume's own
    assert attachments_of(sink.mails[0])[0][2] == b"over http"


async def test_verify_ssl_false_skips_the_certificate_check(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    """As the original's webdav verify_ssl: a server with a certificate nobody signed."""
    import trustme

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    server = FileServer({"/a.txt": b"unverified"}, tls=context).start()
    try:
        config = {"base_url": server.url, "verify_ssl": False, "allow_networks": LOOPBACK}
        volume = {"backend": "http", "config": config}
        assert await delivered(make_service, sink, events, volume, "a.txt") == b"unverified"
    finally:
        server.stop()


async def test_verify_ssl_false_is_refused_over_the_api() -> None:
    """Like ca_bundle: turning certificate checks off is the operator's call, not a client's."""
    definition = parse_definition(
        {"name": "v", "backend": "webdav", "config": {"url": "https://h", "verify_ssl": False}}
    )
    with pytest.raises(InvalidInput, match=r"config.verify_ssl: false may only be set in"):
        await check_api_definition(definition, [], [])


@pytest.mark.parametrize(
    ("backend", "config", "field"),
    [
        ("local", {"path": "/a", "base_path": "/b"}, "path"),
        ("s3", {"bucket": "bkt", "key": "k1", "access_key": "k2"}, "key"),
        ("s3", {"bucket": "bkt", "secret": "s1", "secret_key": "s2"}, "secret"),
        ("s3", {"bucket": "bkt", "prefix": "p", "base_path": "q"}, "prefix"),
        ("webdav", {"base_url": "https://a", "url": "https://b"}, "base_url"),
    ],
)
def test_both_names_of_one_key_with_different_values_are_refused(
    backend: str, config: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_definition({"name": "v", "backend": backend, "config": config})
    assert str(raised.value).startswith(f"config.{field}: the original service's name of ")
    assert "k1" not in str(raised.value) and "s1" not in str(raised.value)


def test_both_names_with_the_same_value_are_one_key() -> None:
    definition = parse_definition(
        {"name": "v", "backend": "local", "config": {"path": "/a", "base_path": "/a"}}
    )
    assert definition.backend_config().base_path == "/a"


def test_the_originals_s3_secrets_are_redacted() -> None:
    definition = parse_definition(
        {"name": "v", "backend": "s3", "config": {"bucket": "bkt", "key": "k", "secret": "s"}}
    )
    assert definition.public()["config"] == {"bucket": "bkt", "key": "***", "secret": "***"}


async def test_a_bad_file_volume_written_the_originals_way_names_its_key(
    make_service: ServiceFactory,
) -> None:
    mount = {"name": "v", "backend": "local", "config": {"path": ""}}
    with pytest.raises(ConfigError, match=r"mounts\[0\]\.config\.base_path: String should"):
        await make_service(volumes={"mounts": [mount]})
