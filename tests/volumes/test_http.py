"""HTTP volumes against a real server on 127.0.0.1, and the guard against server-side
request forgery: addresses are checked after DNS resolution and on every redirect.

No test here sends a packet anywhere but 127.0.0.0/8: refused addresses are refused before
any connection is attempted, which is what the tests assert."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest
from gmp_volumes.guard import is_public

from gmp_core import Service
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, message
from tests.volumes.servers import FileServer, attachments_of

LOOPBACK = ["127.0.0.1/32"]


def http_volume(url: str, allow: list[str] | None = None, **config: Any) -> dict[str, Any]:
    return {
        "name": "web",
        "backend": "http",
        "config": {"base_url": url, "allow_networks": allow or [], **config},
    }


async def start(
    make_service: ServiceFactory, sink: SmtpSink, *volumes: dict[str, Any], **settings: Any
) -> Service:
    service = await make_service(volumes={"mounts": list(volumes), **settings})
    await service.put_account(account(sink))
    return service


def with_file(id: str, path: str, filename: str = "file.bin") -> dict[str, Any]:
    return message(id, attachments=[{"filename": filename, "storage_path": f"web:{path}"}])


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata (AWS, GCP, Azure)
        ("fd00:ec2::254", False),  # AWS metadata over IPv6
        ("100.100.100.200", False),  # Alibaba metadata (shared address space)
        ("::ffff:127.0.0.1", False),  # IPv4 loopback wrapped in IPv6
        ("2002:7f00:1::1", False),  # ... in a 6to4 address
        ("64:ff9b::a9fe:a9fe", False),  # 169.254.169.254 through NAT64
        ("64:ff9b::5db8:d70e", True),  # a public IPv4 host through NAT64
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::7f00:1", False),  # IPv4-compatible loopback
        ("::ffff:0:7f00:1", False),  # IPv4-translated loopback
        ("64:ff9b:1::7f00:1", False),  # local-use NAT64
        ("fec0::1", False),  # site-local
        ("::ffff:93.184.215.14", True),  # a public IPv4 host, mapped
    ],
)
def test_only_public_addresses_are_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


async def test_allow_listed_server_delivers_byte_for_byte(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, web: FileServer
) -> None:
    web.files["/docs/r%C3%A9sum%C3%A9%20final.pdf"] = b"%PDF-1.7\n" + bytes(range(256))
    service = await start(make_service, sink, http_volume(f"{web.url}/docs", LOOPBACK))
    await service.add_messages([with_file("m1", "résumé final.pdf", "résumé.pdf")])
    await events.wait("sent", "m1")
    assert attachments_of(sink.mails[0]) == [
        ("résumé.pdf", "application/pdf", b"%PDF-1.7\n" + bytes(range(256)))
    ]


async def test_loopback_is_refused_unless_allow_listed(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, web: FileServer
) -> None:
    web.files["/a.txt"] = b"a"
    service = await start(make_service, sink, http_volume(web.url))
    await service.add_messages([with_file("m1", "a.txt")])
    [error] = await events.wait("error", "m1")
    assert error.detail == (
        "attachment 'file.bin': forbidden: 127.0.0.1 resolves to a non-public address (127.0.0.1)"
    )
    assert web.hits == {}  # refused before connecting
    assert sink.mails == []


async def test_a_name_resolving_to_loopback_is_refused(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, web: FileServer
) -> None:
    service = await start(make_service, sink, http_volume(f"http://localhost:{web.port}"))
    await service.add_messages([with_file("m1", "a.txt")])
    [error] = await events.wait("error", "m1")
    assert "forbidden: localhost resolves to a non-public address" in error.detail
    assert web.hits == {}


async def test_cloud_metadata_address_is_refused(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    volume = http_volume("http://169.254.169.254/latest/meta-data", LOOPBACK)
    service = await start(make_service, sink, volume)
    await service.add_messages([with_file("m1", "iam/security-credentials")])
    [error] = await events.wait("error", "m1")
    assert error.detail == (
        "attachment 'file.bin': forbidden: 169.254.169.254 resolves to a non-public "
        "address (169.254.169.254)"
    )


async def test_redirect_to_a_private_address_is_refused(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, web: FileServer
) -> None:
    inner = FileServer({"/secret": b"internal"}, host="127.0.0.2").start()
    try:
        web.redirects["/a.txt"] = f"{inner.url}/secret"
        service = await start(make_service, sink, http_volume(web.url, LOOPBACK))
        await service.add_messages([with_file("m1", "a.txt")])
        [error] = await events.wait("error", "m1")
        assert "forbidden: 127.0.0.2 resolves to a non-public address" in error.detail
        assert web.hits["/a.txt"] == 1
        assert inner.hits == {}  # the redirect was never followed
    finally:
        inner.stop()


async def test_redirects_within_allowed_addresses_are_followed_without_credentials(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, web: FileServer
) -> None:
    other = FileServer({"/moved.txt": b"moved"}, host="127.0.0.3").start()
    try:
        web.redirects["/a.txt"] = f"{other.url}/moved.txt"
        volume = http_volume(web.url, ["127.0.0.0/8"], token="s3cr3t")
        service = await start(make_service, sink, volume)
        await service.add_messages([with_file("m1", "a.txt")])
        await events.wait("sent", "m1")
        assert attachments_of(sink.mails[0])[0][2] == b"moved"
        assert web.authorizations == ["Bearer s3cr3t"]
        assert other.authorizations == [None]  # the token stays with the volume's origin
    finally:
        other.stop()


async def test_missing_file_is_permanent(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, web: FileServer
) -> None:
    service = await start(make_service, sink, http_volume(web.url, LOOPBACK))
    await service.add_messages([with_file("m1", "gone.pdf")])
    [error] = await events.wait("error", "m1")
    assert error.detail == "attachment 'file.bin': not found: gone.pdf"
    assert events.kinds("m1") == ["queued", "error"]


async def test_oversize_response_is_refused(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, web: FileServer
) -> None:
    web.files["/big"] = b"z" * 2000
    volume = http_volume(web.url, LOOPBACK)
    service = await start(make_service, sink, volume, max_attachment_bytes=1000)
    await service.add_messages([with_file("m1", "big")])
    [error] = await events.wait("error", "m1")
    assert error.detail == "attachment 'file.bin': too large: over the limit of 1000 bytes"


async def test_a_hanging_server_is_a_temporary_failure(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, web: FileServer
) -> None:
    web.files["/slow.txt"] = b"finally"
    web.hanging.add("/slow.txt")
    volume = http_volume(web.url, LOOPBACK)
    service = await start(make_service, sink, volume, fetch_timeout=0.3)
    await service.add_messages([with_file("m1", "slow.txt")])
    [deferred] = await events.wait("deferred", "m1")
    assert deferred.detail == "attachment 'file.bin': source timed out after 0.3s"
    assert sink.mails == []  # never sent without its attachment
    web.hanging.clear()  # the server recovers: the retry delivers
    await events.wait("sent", "m1")
    assert attachments_of(sink.mails[0])[0][2] == b"finally"


async def test_a_trickling_server_is_cut_at_the_fetch_deadline(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, web: FileServer
) -> None:
    """Headers at once, then a byte every 0.2 s: no single read ever waits long, the whole
    read does. ``fetch_timeout`` bounds all of it, the body included."""
    web.files["/drip.txt"] = b"x" * 100
    web.trickling.add("/drip.txt")
    volume = http_volume(web.url, LOOPBACK)
    service = await start(make_service, sink, volume, fetch_timeout=0.5)
    await service.add_messages([with_file("m1", "drip.txt")])
    [deferred, *_] = await events.wait("deferred", "m1")
    assert deferred.detail == "attachment 'file.bin': source timed out after 0.5s"
    assert sink.mails == []


async def test_an_unreachable_server_is_a_temporary_failure(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, web: FileServer
) -> None:
    url = web.url
    web.stop()  # nothing listens there any more
    service = await start(make_service, sink, http_volume(url, LOOPBACK))
    await service.add_messages([with_file("m1", "a.txt")])
    [deferred, *_] = await events.wait("deferred", "m1")
    assert deferred.detail == "attachment 'file.bin': source unreachable: ConnectError"


async def test_the_same_path_is_fetched_once_per_dispatch_batch(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, web: FileServer
) -> None:
    web.files["/logo.png"] = b"\x89PNG logo"
    service = await start(make_service, sink, http_volume(web.url, LOOPBACK))
    await service.set_active(False)
    await service.add_messages([with_file(f"m{i}", "logo.png") for i in range(10)])
    await service.set_active(True)
    await events.wait("sent", count=10)
    assert web.hits == {"/logo.png": 1}
    assert {attachments_of(mail)[0][2] for mail in sink.mails} == {b"\x89PNG logo"}


async def test_a_body_without_length_is_cut_off_at_the_limit(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, web: FileServer
) -> None:
    """Memory stays bounded: a 200 MiB body is dropped once it passes the limit, and the
    reader never held much more than the limit (measured with tracemalloc)."""
    import tracemalloc

    limit = 4 * 1024 * 1024
    web.streams["/endless"] = 200 * 1024 * 1024
    volume = http_volume(web.url, LOOPBACK)
    service = await start(make_service, sink, volume, max_attachment_bytes=limit)
    tracemalloc.start()
    try:
        await service.add_messages([with_file("m1", "endless")])
        [error] = await events.wait("error", "m1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.detail == f"attachment 'file.bin': too large: over the limit of {limit} bytes"
    assert peak < 3 * limit
    assert web.streamed < 50 * 1024 * 1024  # the server was hung up on, not read to the end


async def test_https_is_verified_against_the_urls_host_though_the_checked_address_is_dialled(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, tmp_path: Path
) -> None:
    import trustme

    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(context)
    server = FileServer({"/a.txt": b"over tls"}, tls=context).start()
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    try:
        allow, bundle = ["127.0.0.1/32", "::1/128"], str(ca_file)
        by_name = http_volume(f"https://localhost:{server.port}", allow, ca_bundle=bundle)
        by_address = {**http_volume(server.url, allow, ca_bundle=bundle), "name": "raw"}
        service = await start(make_service, sink, by_name, by_address)
        raw = {"filename": "file.bin", "storage_path": "raw:a.txt"}
        await service.add_messages([with_file("m1", "a.txt"), message("m2", attachments=[raw])])
        await events.wait("sent", "m1")
        # the certificate names localhost, not 127.0.0.1: verification is on, and fails
        [deferred, *_] = await events.wait("deferred", "m2")
        assert deferred.detail == "attachment 'file.bin': source unreachable: ConnectError"
        assert attachments_of(sink.mails[0])[0][2] == b"over tls"
    finally:
        server.stop()
