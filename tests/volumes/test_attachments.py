"""Attachments end to end: volumes on a local directory, in memory and inline base64, read
at send time and delivered to a real SMTP sink, where each part is compared byte for byte."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from gmp_volumes import registry_of

from gmp_core import Service
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, message, status_of
from tests.volumes.servers import attachments_of

BINARY = bytes(range(256)) * 64  # every byte value, 16 KiB


async def start(make_service: ServiceFactory, sink: SmtpSink, **tables: Any) -> Service:
    service = await make_service(**tables)
    await service.put_account(account(sink))
    return service


def local_volume(root: Path, name: str = "files", **fields: Any) -> dict[str, Any]:
    return {"name": name, "backend": "local", "config": {"base_path": str(root)}, **fields}


def attach(filename: str, storage_path: str, **fields: Any) -> dict[str, Any]:
    return {"filename": filename, "storage_path": storage_path, **fields}


async def test_local_and_base64_attachments_arrive_byte_for_byte(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, files: Path
) -> None:
    (files / "sub" / "report.pdf").write_bytes(BINARY)
    (files / "blob.bin").write_bytes(b"\x89PNG\r\n\x1a\n" + BINARY[:100])
    service = await start(make_service, sink, volumes={"mounts": [local_volume(files)]})
    inline = base64.b64encode("héllo wörld\n".encode()).decode()
    result = await service.add_messages(
        [
            message(
                "m1",
                attachments=[
                    attach("report.pdf", "files:sub/report.pdf"),
                    attach("résumé.txt", f"base64:{inline}"),
                    attach("picture", "files:blob.bin", mime_type="image/png"),
                ],
            )
        ]
    )
    assert result.rejected == []
    await events.wait("sent", "m1")
    [mail] = sink.mails
    assert attachments_of(mail) == [
        ("report.pdf", "application/pdf", BINARY),
        ("résumé.txt", "text/plain", "héllo wörld\n".encode()),
        ("picture", "image/png", b"\x89PNG\r\n\x1a\n" + BINARY[:100]),
    ]
    # RFC 2231: the non-ASCII name travels percent-encoded, with its charset
    assert b"filename*=utf-8''r%C3%A9sum%C3%A9.txt" in mail.data


async def test_memory_volume(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    volumes = {"mounts": [{"name": "mem", "backend": "memory"}]}
    service = await start(make_service, sink, volumes=volumes)
    registry = registry_of(service)
    assert registry is not None
    await registry.write("mem", "reports/q1.csv", b"a,b\n1,2\n")
    await service.add_messages(
        [message("m1", attachments=[attach("q1.csv", "mem:reports/q1.csv")])]
    )
    await events.wait("sent", "m1")
    assert attachments_of(sink.mails[0]) == [("q1.csv", "text/csv", b"a,b\n1,2\n")]


@pytest.mark.parametrize(
    ("storage_path", "expected"),
    [
        ("files:missing.pdf", "not found: missing.pdf"),
        ("files:../secret.txt", "forbidden: '..' in path"),
        ("files:/etc/hostname", "forbidden: absolute or malformed path"),
        ("files:link.txt", "forbidden: path leads outside the volume"),
        ("files:dirlink/secret.txt", "forbidden: path leads outside the volume"),
        ("files:sub", "not a file: sub"),
        ("base64:not*base64", "invalid base64 data"),
    ],
)
async def test_unreadable_attachments_end_as_error_naming_the_attachment(
    make_service: ServiceFactory,
    sink: SmtpSink,
    events: EventLog,
    files: Path,
    storage_path: str,
    expected: str,
) -> None:
    service = await start(make_service, sink, volumes={"mounts": [local_volume(files)]})
    await service.add_messages([message("m1", attachments=[attach("wanted.pdf", storage_path)])])
    [error] = await events.wait("error", "m1")
    assert error.detail == f"attachment 'wanted.pdf': {expected}"
    assert events.kinds("m1") == ["queued", "error"]  # permanent: never retried
    assert sink.mails == []


async def test_size_caps_per_attachment_and_per_message(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, files: Path
) -> None:
    (files / "big.bin").write_bytes(b"x" * 1001)
    (files / "a.bin").write_bytes(b"a" * 800)
    (files / "b.bin").write_bytes(b"b" * 800)
    service = await start(
        make_service,
        sink,
        volumes={"mounts": [local_volume(files)], "max_attachment_bytes": 1000},
        service={"max_message_attachment_bytes": 1500},
    )
    oversize = base64.b64encode(b"y" * 1001).decode()
    await service.add_messages(
        [
            message("big", attachments=[attach("big.bin", "files:big.bin")]),
            message("inline", attachments=[attach("y.bin", f"base64:{oversize}")]),
            message("pair", attachments=[attach("a", "files:a.bin"), attach("b", "files:b.bin")]),
            message("fits", attachments=[attach("a", "files:a.bin")]),
        ]
    )
    [big] = await events.wait("error", "big")
    assert big.detail == "attachment 'big.bin': too large: over the limit of 1000 bytes"
    [inline] = await events.wait("error", "inline")
    assert inline.detail == "attachment 'y.bin': too large: over the limit of 1000 bytes"
    [pair] = await events.wait("error", "pair")
    assert pair.detail == (
        "attachment 'b': the message's attachments are over the limit of 1500 bytes"
    )
    await events.wait("sent", "fits")
    assert [mail.gmp_id for mail in sink.mails] == ["fits"]


async def test_a_volume_of_another_account_is_refused_at_intake(
    make_service: ServiceFactory, sink: SmtpSink, files: Path
) -> None:
    volumes = {"mounts": [local_volume(files, name="theirs", account_id="other")]}
    service = await start(make_service, sink, volumes=volumes)
    result = await service.add_messages(
        [message("m1", attachments=[attach("a.pdf", "theirs:sub/a.pdf")])]
    )
    assert [r.reason for r in result.rejected] == [
        "volume not allowed for this account: theirs:sub/a.pdf"
    ]
    assert (await service.store.queue_counts()).get("queued", 0) == 0


async def test_an_accounts_own_volume_wins_over_the_global_one_of_that_name(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, tmp_path: Path
) -> None:
    shared, own = tmp_path / "shared", tmp_path / "own"
    for root, text in ((shared, b"shared"), (own, b"own")):
        root.mkdir()
        (root / "x.txt").write_bytes(text)
    volumes = {
        "mounts": [local_volume(shared, "docs"), local_volume(own, "docs", account_id="acc")]
    }
    service = await start(make_service, sink, volumes=volumes)
    await service.put_account(account(sink, id="acc2"))
    await service.add_messages(
        [
            message("mine", attachments=[attach("x.txt", "docs:x.txt")]),
            message("theirs", account_id="acc2", attachments=[attach("x.txt", "docs:x.txt")]),
        ]
    )
    await events.wait("sent", count=2)
    contents = {mail.gmp_id: attachments_of(mail)[0][2] for mail in sink.mails}
    assert contents == {"mine": b"own", "theirs": b"shared"}


async def test_scope_is_checked_again_at_send_time(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, files: Path
) -> None:
    """A message queued while it could use the volume, sent after the volume became
    another account's: it ends as error, never sent without its attachment."""
    (files / "a.txt").write_bytes(b"a")
    service = await start(make_service, sink, volumes={"api_local_roots": [str(files)]})
    registry = registry_of(service)
    assert registry is not None
    volume = local_volume(files, name="docs")
    await registry.put(volume)
    await service.set_active(False)
    await service.add_messages([message("m1", attachments=[attach("a.txt", "docs:a.txt")])])
    assert await registry.delete("docs", None)
    await registry.put({**volume, "account_id": "other"})
    await service.set_active(True)
    [error] = await events.wait("error", "m1")
    assert error.detail == "attachment 'a.txt': volume 'docs' is not available"
    assert await status_of(service, "m1") == "error"
    assert sink.mails == []


async def test_a_replaced_volume_never_serves_reads_of_its_predecessor(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, tmp_path: Path
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for root, text in ((old, b"old bytes"), (new, b"new bytes")):
        root.mkdir()
        (root / "x.txt").write_bytes(text)
    volumes = {"reuse_seconds": 600, "api_local_roots": [str(tmp_path)]}
    service = await start(make_service, sink, volumes=volumes)
    registry = registry_of(service)
    assert registry is not None
    await registry.put(local_volume(old, "docs"))
    await service.add_messages([message("m1", attachments=[attach("x.txt", "docs:x.txt")])])
    await events.wait("sent", "m1")
    await registry.put(local_volume(new, "docs"))
    await service.add_messages([message("m2", attachments=[attach("x.txt", "docs:x.txt")])])
    await events.wait("sent", "m2")
    contents = {mail.gmp_id: attachments_of(mail)[0][2] for mail in sink.mails}
    assert contents == {"m1": b"old bytes", "m2": b"new bytes"}
