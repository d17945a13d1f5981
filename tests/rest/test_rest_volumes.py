"""The volume endpoints over HTTP: volumes added at run time are used at once, survive a
restart, never show their credentials, and deleting one fails the messages still naming it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from gmp_core import Service
from gmp_core.testing import SmtpSink
from tests.rest.rest_support import TOKEN, ServiceFactory, base_url, message
from tests.support import EventLog, wait_until
from tests.volumes.servers import attachments_of

SECRET = "wJalrXUtnFEMI-very-secret"


def client_of(service: Service) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url(service), headers={"X-API-Token": TOKEN})


def local_volume(root: Path, name: str = "docs", **fields: Any) -> dict[str, Any]:
    return {"name": name, "backend": "local", "config": {"base_path": str(root)}, **fields}


def may_read(root: Path) -> dict[str, Any]:
    """[volumes] settings letting API volumes read under ``root``'s parent."""
    return {"api_local_roots": [str(root.parent)]}


def sink_account(sink: SmtpSink) -> dict[str, Any]:
    return {"id": "acc", "host": sink.host, "port": sink.port, "tls": "none"}


def with_attachment(id: str, storage_path: str) -> dict[str, Any]:
    return message(id, attachments=[{"filename": "a.txt", "storage_path": storage_path}])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "att"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"attached bytes")
    return folder


async def test_a_volume_added_over_the_api_is_used_without_restart(
    start_service: ServiceFactory, sink: SmtpSink, root: Path
) -> None:
    events = EventLog()
    service = await start_service(events, volumes=may_read(root))
    async with client_of(service) as http:
        assert (await http.post("/account", json=sink_account(sink))).json() == {"ok": True}
        refused = await http.post(
            "/commands/add-messages", json={"messages": [with_attachment("early", "docs:a.txt")]}
        )
        assert refused.json()["rejected"] == [
            {"id": "early", "reason": "unknown volume in storage_path: docs"}
        ]
        answer = await http.post("/volume", json=local_volume(root))
        assert answer.status_code == 200
        assert answer.json()["volume"]["source"] == "api"
        queued = await http.post(
            "/commands/add-messages", json={"messages": [with_attachment("m1", "docs:a.txt")]}
        )
        assert queued.json() == {"ok": True, "queued": 1, "rejected": [], "warnings": []}
    await events.wait("sent", "m1")
    assert attachments_of(sink.mails[0]) == [("a.txt", "text/plain", b"attached bytes")]


async def test_volumes_are_kept_across_restarts(start_service: ServiceFactory, root: Path) -> None:
    first = await start_service(volumes=may_read(root))
    async with client_of(first) as http:
        assert (await http.post("/volume", json=local_volume(root, account_id="acc"))).is_success
    await first.stop()
    second = await start_service(volumes=may_read(root))
    async with client_of(second) as http:
        answer = await http.get("/volume/docs", params={"account_id": "acc"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["ok"] is True
    assert {k: body[k] for k in ("name", "backend", "account_id", "source")} == {
        "name": "docs",
        "backend": "local",
        "account_id": "acc",
        "source": "api",
    }
    assert second.volumes["docs"].accepts("acc")  # mounted again, not only listed
    assert not second.volumes["docs"].accepts("someone-else")


async def test_processes_sharing_the_database_follow_each_others_volumes(
    start_service: ServiceFactory, root: Path
) -> None:
    """Two services on one database, as two processes behind one address would be: a volume
    set through one is soon usable through the other, changed there when changed, and gone
    once deleted."""
    settings = {**may_read(root), "refresh_seconds": 0.05}
    here, elsewhere = [await start_service(volumes=settings) for _ in range(2)]
    accepted = {"ok": True, "queued": 1, "rejected": [], "warnings": []}

    async def added_elsewhere(id: str) -> dict[str, Any]:
        async with client_of(elsewhere) as http:
            answer = await http.post(
                "/commands/add-messages", json={"messages": [with_attachment(id, "docs:a.txt")]}
            )
        result: dict[str, Any] = answer.json()
        return result

    async with client_of(here) as http:
        account = {"id": "acc", "host": "127.0.0.1", "port": 1}  # refused: nothing is sent
        assert (await http.post("/account", json=account)).is_success
        assert (await http.post("/volume", json=local_volume(root))).is_success

    async def mounted_elsewhere() -> bool:
        return elsewhere.volumes.get("docs") is not None

    await wait_until(mounted_elsewhere)
    assert await added_elsewhere("m1") == accepted

    async def base_path_elsewhere() -> str:
        async with client_of(elsewhere) as http:
            listed = (await http.get("/volume/docs")).json()
        assert listed["source"] == "api"
        return str(listed["config"]["base_path"])

    assert await base_path_elsewhere() == str(root)
    moved = root.parent / "moved"
    moved.mkdir()
    async with client_of(here) as http:
        assert (await http.post("/volume", json=local_volume(moved))).is_success

    async def moved_elsewhere() -> bool:
        return await base_path_elsewhere() == str(moved)

    await wait_until(moved_elsewhere)
    async with client_of(here) as http:
        assert (await http.delete("/volume/docs")).is_success

    async def gone_elsewhere() -> bool:
        return elsewhere.volumes.get("docs") is None

    await wait_until(gone_elsewhere)
    assert (await added_elsewhere("m2"))["rejected"] == [
        {"id": "m2", "reason": "unknown volume in storage_path: docs"}
    ]


async def test_credentials_are_redacted_in_answers_and_logs(
    start_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Our loggers at every level; libraries at INFO (peewee's DEBUG log echoes SQL
    # parameters, account passwords included: never enable it in production).
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="gmp")
    service = await start_service()
    volume = {
        "name": "bucket",
        "backend": "s3",
        "config": {"bucket": "att", "access_key": "AKIA-ID", "secret_key": SECRET},
    }
    async with client_of(service) as http:
        answers = [
            await http.post("/volume", json=volume),
            await http.get("/volumes"),
            await http.get("/volume/bucket"),
            await http.post("/volume", json={**volume, "config": {"secret_key": SECRET}}),
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 422]
    assert answers[2].json()["config"] == {
        "bucket": "att",
        "access_key": "***",
        "secret_key": "***",
    }
    assert answers[3].json()["error"] == "config.bucket: Field required"
    for answer in answers:
        assert SECRET not in answer.text
    assert SECRET not in caplog.text


async def test_listing_is_scoped_by_account(start_service: ServiceFactory, root: Path) -> None:
    service = await start_service(volumes=may_read(root))
    async with client_of(service) as http:
        for fields in ({}, {"account_id": "a"}, {"account_id": "b"}):
            assert (await http.post("/volume", json=local_volume(root, **fields))).is_success
        everything = (await http.get("/volumes")).json()["volumes"]
        of_a = (await http.get("/volumes", params={"account_id": "a"})).json()["volumes"]
        own = (await http.get("/volume/docs", params={"account_id": "b"})).json()
        shared = (await http.get("/volume/docs", params={"account_id": "c"})).json()
    assert [v["account_id"] for v in everything] == [None, "a", "b"]
    assert [v["account_id"] for v in of_a] == [None, "a"]
    assert own["account_id"] == "b"
    assert shared["account_id"] is None


async def test_deleting_a_volume_fails_the_messages_still_naming_it(
    start_service: ServiceFactory, sink: SmtpSink, root: Path
) -> None:
    events = EventLog()
    service = await start_service(events, volumes=may_read(root))
    async with client_of(service) as http:
        await http.post("/account", json=sink_account(sink))
        await http.post("/volume", json=local_volume(root))
        await http.post("/commands/suspend")
        await http.post(
            "/commands/add-messages", json={"messages": [with_attachment("m1", "docs:a.txt")]}
        )
        assert (await http.delete("/volume/docs")).json() == {"ok": True}
        assert (await http.delete("/volume/docs")).status_code == 404
        assert (await http.get("/volume/docs")).status_code == 404
        await http.post("/commands/activate")
    [error] = await events.wait("error", "m1")
    assert error.detail == "attachment 'a.txt': volume 'docs' is not available"
    assert sink.mails == []


async def test_volumes_of_the_configuration_cannot_be_changed_over_the_api(
    start_service: ServiceFactory, root: Path
) -> None:
    service = await start_service(volumes={"mounts": [local_volume(root)]})
    async with client_of(service) as http:
        listed = (await http.get("/volumes")).json()["volumes"]
        replaced = await http.post("/volume", json=local_volume(root / "elsewhere"))
        deleted = await http.delete("/volume/docs")
    assert [v["source"] for v in listed] == ["config"]
    assert replaced.status_code == 422
    assert replaced.json()["error"] == "volume 'docs' is defined in plugins.toml"
    assert deleted.status_code == 409


@pytest.mark.parametrize(
    ("volume", "reason"),
    [
        (
            {"backend": "local", "config": {"base_path": "/etc"}},
            "config.base_path: not under a directory of [volumes] api_local_roots",
        ),
        (
            {"backend": "local", "config": {"base_path": "ROOT/../.."}},
            "config.base_path: not under a directory of [volumes] api_local_roots",
        ),
        (
            {"backend": "local", "config": {"base_path": "relative/dir"}},
            "config.base_path: must be an absolute path",
        ),
        (
            {
                "backend": "http",
                "config": {
                    "base_url": "http://169.254.169.254/",
                    "allow_networks": ["169.254.0.0/16"],
                },
            },
            "config.allow_networks: 169.254.0.0/16 is not within [volumes] api_allow_networks",
        ),
        (
            {"backend": "webdav", "config": {"url": "https://dav.example.com/", "ca_bundle": "/x"}},
            "config.ca_bundle: may only be set in plugins.toml",
        ),
        (
            {
                "backend": "s3",
                "config": {"bucket": "att", "endpoint_url": "http://169.254.169.254"},
            },
            "config.endpoint_url: 169.254.169.254 resolves to a non-public address "
            "(169.254.169.254) outside [volumes] api_allow_networks",
        ),
    ],
)
async def test_api_volumes_reach_no_further_than_the_operator_allows(
    start_service: ServiceFactory, root: Path, volume: dict[str, Any], reason: str
) -> None:
    """Holding the API token must not be enough to read the server's files or the cloud
    metadata service. (Refused when defined: nothing is ever connected to.)"""
    service = await start_service(volumes={**may_read(root), "api_allow_networks": ["127.0.0.0/8"]})
    config = {
        key: value.replace("ROOT", str(root)) if isinstance(value, str) else value
        for key, value in volume["config"].items()
    }
    async with client_of(service) as http:
        answer = await http.post("/volume", json={**volume, "name": "v", "config": config})
    assert answer.status_code == 422
    assert answer.json()["error"] == reason
    assert "v" not in service.volumes


async def test_a_stored_volume_beyond_narrowed_settings_is_not_mounted_again(
    start_service: ServiceFactory, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = await start_service(volumes=may_read(root))
    async with client_of(first) as http:
        assert (await http.post("/volume", json=local_volume(root))).is_success
    await first.stop()
    second = await start_service()  # the operator removed api_local_roots
    assert "docs" not in second.volumes
    assert "volume 'docs' cannot be mounted: config.base_path: not under a directory" in caplog.text
