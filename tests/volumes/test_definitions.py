"""Volume definitions: validation naming the field, ${ENV_VAR} secrets, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest
from gmp_volumes.definitions import redact
from gmp_volumes.registry import parse_definition

from gmp_core import ConfigError, InvalidInput
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, message
from tests.volumes.servers import attachments_of


async def test_environment_references_are_filled_in(
    make_service: ServiceFactory,
    sink: SmtpSink,
    events: EventLog,
    files: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (files / "a.txt").write_bytes(b"from env")
    monkeypatch.setenv("GMP_TEST_FILES", str(files))
    mount = {"name": "docs", "backend": "local", "config": {"base_path": "${GMP_TEST_FILES}"}}
    service = await make_service(volumes={"mounts": [mount]})
    await service.put_account(account(sink))
    attachment = {"filename": "a.txt", "storage_path": "docs:a.txt"}
    await service.add_messages([message("m1", attachments=[attachment])])
    await events.wait("sent", "m1")
    assert attachments_of(sink.mails[0])[0][2] == b"from env"


async def test_a_missing_environment_variable_stops_start_up_naming_the_key(
    make_service: ServiceFactory,
) -> None:
    config = {"bucket": "att", "access_key": "AKIA-visible", "secret_key": "${GMP_TEST_UNSET}"}
    mount = {"name": "s3", "backend": "s3", "config": config}
    with pytest.raises(ConfigError) as raised:
        await make_service(volumes={"mounts": [mount]})
    assert "mounts[0].config.secret_key: environment variable GMP_TEST_UNSET is not set" in str(
        raised.value
    )
    assert "AKIA" not in str(raised.value)


async def test_a_bad_file_volume_stops_start_up_naming_the_field(
    make_service: ServiceFactory,
) -> None:
    mount = {"name": "web", "backend": "http", "config": {"base_url": "ftp://example.com/"}}
    with pytest.raises(ConfigError, match=r"mounts\[0\]\.config\.base_url: Value error, must"):
        await make_service(volumes={"mounts": [mount]})


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"backend": "local", "config": {"base_path": "/x"}}, "name: Field required"),
        ({"name": "base64", "backend": "memory"}, "name: Value error, 'base64' is built in"),
        ({"name": "a/b", "backend": "memory"}, "name: String should match pattern"),
        ({"name": "v", "backend": "ftp"}, "backend: Input should be 'local', 'memory'"),
        ({"name": "v", "backend": "local", "config": {}}, "config.base_path: Field required"),
        ({"name": "v", "backend": "s3", "config": {"bucket": "b"}}, "config.bucket: String should"),
        (
            {"name": "v", "backend": "webdav", "config": {"url": "http://u:p@dav.example.com"}},
            "config.url: Value error, must not carry credentials",
        ),
        (
            {
                "name": "v",
                "backend": "http",
                "config": {"base_url": "http://h", "allow_networks": ["x"]},
            },
            "config.allow_networks",
        ),
    ],
)
def test_bad_definitions_are_refused_naming_the_field(payload: dict, reason: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_definition(payload)
    assert str(raised.value).startswith(reason)


def test_secrets_are_redacted() -> None:
    config = {
        "bucket": "att",
        "access_key": "AKIA123",
        "secret_key": "s3cr3t",
        "password": "pw",
        "token": "tok",
        "username": "u",
        "endpoint_url": "http://user:pw@minio.local:9000/x",
        "anon": False,
    }
    assert redact(config) == {
        "bucket": "att",
        "access_key": "***",
        "secret_key": "***",
        "password": "***",
        "token": "***",
        "username": "u",
        "endpoint_url": "http://minio.local:9000/x",
        "anon": False,
    }
