"""Server-side request forgery by DNS rebinding, for every network backend a volume set over
the API can have: a name that resolves to a public address when the volume is set, and to
127.0.0.1 (or an IPv6 form that carries it) when a message needs the attachment.

The proxy asks a DNS server the test runs on 127.0.0.1 (``[volumes] nameservers``). Each
backend's real server (moto's S3, wsgidav, an HTTP file server) sits behind a proxy that
counts connections: a refused volume must never have connected. The public answer is only
ever given to the check made when the volume is set, which connects to nothing; every later
answer is on this machine, so no test sends a packet beyond it, whatever the code does.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gmp_volumes.definitions import BACKEND_CONFIGS

from gmp_core import Config, Service
from gmp_core.testing import SmtpSink, fast_tables, merge
from tests.support import EventLog, account, message
from tests.volumes.servers import (
    CountingProxy,
    FileServer,
    ScriptedDns,
    WebdavServer,
    attachments_of,
    free_port,
)

PUBLIC = "93.184.215.14"  # given only to the check made when the volume is set
PAYLOAD = b"%PDF-1.7 internal document"
ADMIN = "admin-token-0123456789"
SHOP = "shop-token-0123456789"
CREDENTIALS = {"access_key": "testing", "secret_key": "testing", "region": "us-east-1"}
# Backends that reach nothing over the network: no address to guard.
OFFLINE = {"local", "memory"}


@pytest.fixture(scope="module")
def dns() -> Iterator[ScriptedDns]:
    server = ScriptedDns().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def origins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, CountingProxy]]:
    """A real server per network backend, each behind a counting proxy."""
    import boto3
    import moto.s3.utils
    import moto.settings
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch:
        # moto reads a bucket name from the first label of any host it does not know; the
        # endpoints here are host names of the test's own, used path-style.
        patch.setattr(moto.s3.utils, "S3_IGNORE_SUBDOMAIN_BUCKETNAME", True)
        patch.setattr(moto.settings, "S3_IGNORE_SUBDOMAIN_BUCKETNAME", True)
        yield from _origins(tmp_path_factory, boto3, ThreadedMotoServer)


def _origins(
    tmp_path_factory: pytest.TempPathFactory, boto3: Any, ThreadedMotoServer: Any
) -> Iterator[dict[str, CountingProxy]]:
    web = FileServer({"/docs/a.pdf": PAYLOAD}).start()
    root = tmp_path_factory.mktemp("dav")
    (root / "shared").mkdir()
    (root / "shared" / "a.pdf").write_bytes(PAYLOAD)
    dav = WebdavServer(root).start()
    s3_port = free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3.start()
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", **_boto(CREDENTIALS))
    client.create_bucket(Bucket="attachments")
    client.put_object(Bucket="attachments", Key="inv/a.pdf", Body=PAYLOAD)
    proxies = {
        "http": CountingProxy(("127.0.0.1", web.port)).start(),
        "webdav": CountingProxy(("127.0.0.1", dav.port)).start(),
        "s3": CountingProxy(("127.0.0.1", s3_port)).start(),
    }
    yield proxies
    for proxy in proxies.values():
        proxy.stop()
    web.stop()
    dav.stop()
    s3.stop()


def _boto(credentials: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": credentials["access_key"],
        "aws_secret_access_key": credentials["secret_key"],
        "region_name": credentials["region"],
    }


def volume(backend: str, host: str, port: int, allow: list[str]) -> dict[str, Any]:
    """A volume of ``backend`` whose file ``a.pdf`` is served at ``host:port``."""
    url = f"http://{host}:{port}"
    configs: dict[str, dict[str, Any]] = {
        "http": {"base_url": f"{url}/docs", "allow_networks": allow},
        "webdav": {
            "url": f"{url}/shared",
            "username": "u",
            "password": "p",
            "allow_networks": allow,
        },
        "s3": {"bucket": "attachments", "base_path": "inv", "endpoint_url": url, **CREDENTIALS},
    }
    if backend == "webdav":
        configs["webdav"]["allow_networks"] = allow
    return {"name": "vol", "backend": backend, "config": configs[backend]}


NETWORK_BACKENDS = sorted(set(BACKEND_CONFIGS) - OFFLINE)


def test_every_network_backend_is_tested_here() -> None:
    """A backend added later must join these tests: each one is a way out of the proxy."""
    assert NETWORK_BACKENDS == ["http", "s3", "webdav"]


Start = Callable[..., Any]


@pytest.fixture
async def start(
    tmp_path: Path, dns: ScriptedDns, sink: SmtpSink, events: EventLog
) -> AsyncIterator[Start]:
    """``await start(api_allow_networks=[...])``: a service with the REST API, an admin
    token and an account token for ``acc``, asking the test's DNS server."""
    started: list[Service] = []

    async def factory(**volumes: Any) -> Service:
        tables = {
            "plugins": {"disable": []},
            "rest": {"port": 0},
            "token_auth": {
                "api_token": ADMIN,
                "account_tokens": [{"token": SHOP, "accounts": ["acc"]}],
            },
            "volumes": {"nameservers": [f"127.0.0.1:{dns.port}"], **volumes},
        }
        service = Service(
            Config(merge(fast_tables(tmp_path), tables), environ={}), plugins=[events]
        )
        await service.start()
        started.append(service)
        await service.put_account(account(sink))
        return service

    yield factory
    for service in started:
        await service.stop()


def fresh_name() -> str:
    return f"files-{uuid.uuid4().hex[:8]}.rebind.test"


async def set_volume_and_send(
    service: Service, token: str, definition: dict[str, Any], message_id: str
) -> None:
    scoped = token == SHOP
    body = {**definition, "account_id": "acc"} if scoped else definition
    url = str(service.state["rest"].url)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Token": token}) as http:
        answer = await http.post("/volume", json=body)
        assert answer.status_code == 200, answer.text
        mail = message(message_id, attachments=[{"filename": "doc", "storage_path": "vol:a.pdf"}])
        queued = await http.post("/commands/add-messages", json={"messages": [mail]})
        assert queued.json()["queued"] == 1, queued.text


@pytest.mark.parametrize("token", [ADMIN, SHOP], ids=["admin-token", "account-token"])
@pytest.mark.parametrize("backend", NETWORK_BACKENDS)
async def test_a_name_rebound_to_loopback_after_the_volume_was_set_is_never_connected_to(
    start: Start,
    dns: ScriptedDns,
    origins: dict[str, CountingProxy],
    sink: SmtpSink,
    events: EventLog,
    backend: str,
    token: str,
) -> None:
    host = fresh_name()
    dns.script(host, A=[PUBLIC, "127.0.0.1"])
    proxy = origins[backend]
    before = proxy.connections
    service = await start()
    await set_volume_and_send(service, token, volume(backend, host, proxy.port, []), "m1")
    [error] = await events.wait("error", "m1")
    assert error.detail == (
        f"attachment 'doc': forbidden: {host} resolves to a non-public address (127.0.0.1)"
    )
    assert dns.queries[(host, "A")] >= 2  # looked up again when connecting
    assert proxy.connections == before  # never connected
    assert sink.mails == []


@pytest.mark.parametrize(
    "form",
    ["::ffff:127.0.0.1", "::7f00:1", "::ffff:0:7f00:1", "64:ff9b::7f00:1", "2002:7f00:1::1"],
    ids=["mapped", "compatible", "translated", "nat64", "6to4"],
)
@pytest.mark.parametrize("backend", NETWORK_BACKENDS)
async def test_ipv6_forms_of_loopback_count_as_loopback(
    start: Start,
    dns: ScriptedDns,
    origins: dict[str, CountingProxy],
    sink: SmtpSink,
    events: EventLog,
    backend: str,
    form: str,
) -> None:
    """Public over IPv4 when set; later only an IPv6 address that carries 127.0.0.1."""
    host = fresh_name()
    dns.script(host, A=[PUBLIC, None], AAAA=[None, form])
    proxy = origins[backend]
    before = proxy.connections
    service = await start()
    await set_volume_and_send(service, ADMIN, volume(backend, host, proxy.port, []), "m1")
    [error] = await events.wait("error", "m1")
    assert error.detail.startswith(f"attachment 'doc': forbidden: {host} resolves to a non-public")
    assert proxy.connections == before
    assert sink.mails == []


@pytest.mark.parametrize("backend", NETWORK_BACKENDS)
async def test_a_network_the_operator_opened_is_reached_through_the_same_resolver(
    start: Start,
    dns: ScriptedDns,
    origins: dict[str, CountingProxy],
    sink: SmtpSink,
    events: EventLog,
    backend: str,
) -> None:
    """The control: with ``api_allow_networks`` opening loopback, the same names, answered
    by the same DNS server, deliver, and the proxy counts the connections."""
    host = fresh_name()
    dns.script(host, A=["127.0.0.1"])
    proxy = origins[backend]
    before = proxy.connections
    service = await start(api_allow_networks=["127.0.0.0/8"])
    definition = volume(backend, host, proxy.port, ["127.0.0.0/8"])
    await set_volume_and_send(service, SHOP, definition, "m1")
    await events.wait("sent", "m1")
    assert attachments_of(sink.mails[0])[0][2] == PAYLOAD
    assert proxy.connections > before


@pytest.mark.parametrize("backend", NETWORK_BACKENDS)
async def test_a_name_that_is_not_public_when_set_is_refused_at_once(
    start: Start, dns: ScriptedDns, origins: dict[str, CountingProxy], backend: str
) -> None:
    host = fresh_name()
    dns.script(host, A=["169.254.169.254"])
    service = await start()
    definition = volume(backend, host, origins[backend].port, [])
    url = str(service.state["rest"].url)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Token": ADMIN}) as http:
        answer = await http.post("/volume", json=definition)
    assert answer.status_code == 422
    field = {"http": "base_url", "webdav": "url", "s3": "endpoint_url"}[backend]
    assert answer.json()["error"].startswith(
        f"config.{field}: {host} resolves to a non-public address (169.254.169.254)"
    )


@pytest.mark.parametrize("backend", NETWORK_BACKENDS)
async def test_a_stored_volume_mounted_again_at_start_up_is_guarded_the_same(
    start: Start,
    dns: ScriptedDns,
    origins: dict[str, CountingProxy],
    sink: SmtpSink,
    events: EventLog,
    backend: str,
) -> None:
    host = fresh_name()
    dns.script(host, A=[PUBLIC, "127.0.0.1"])
    proxy = origins[backend]
    before = proxy.connections
    first = await start()
    url = str(first.state["rest"].url)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Token": ADMIN}) as http:
        assert (await http.post("/volume", json=volume(backend, host, proxy.port, []))).is_success
    await first.stop()
    second = await start()  # mounts it again from the store (no look-up at start-up)
    assert "vol" in second.volumes
    mail = message("m1", attachments=[{"filename": "doc", "storage_path": "vol:a.pdf"}])
    await second.add_messages([mail])
    [error] = await events.wait("error", "m1")
    assert "forbidden" in error.detail
    assert proxy.connections == before


def volume_the_originals_way(
    backend: str, host: str, port: int, allow: list[str]
) -> dict[str, Any]:
    """``volume()`` written with the original service's key names (s3 key/secret/prefix,
    webdav base_url, http timeout): they reach main's guarded sources unchanged."""
    url = f"http://{host}:{port}"
    configs: dict[str, dict[str, Any]] = {
        "http": {"base_url": f"{url}/docs", "timeout": 20, "allow_networks": allow},
        "webdav": {
            "base_url": f"{url}/shared",
            "username": "u",
            "password": "p",
            "timeout": 20,
            "allow_networks": allow,
        },
        "s3": {
            "bucket": "attachments",
            "prefix": "inv",
            "endpoint_url": url,
            "key": CREDENTIALS["access_key"],
            "secret": CREDENTIALS["secret_key"],
            "region": CREDENTIALS["region"],
        },
    }
    return {"name": "vol", "backend": backend, "config": configs[backend]}


@pytest.mark.parametrize("backend", NETWORK_BACKENDS)
async def test_volumes_written_the_originals_way_are_guarded_the_same(
    start: Start,
    dns: ScriptedDns,
    origins: dict[str, CountingProxy],
    sink: SmtpSink,
    events: EventLog,
    backend: str,
) -> None:
    """Rebound to loopback: refused, never connected. The control, through the same DNS
    server with loopback opened by the operator: delivered."""
    proxy = origins[backend]
    rebound, opened = fresh_name(), fresh_name()
    dns.script(rebound, A=[PUBLIC, "127.0.0.1"])
    dns.script(opened, A=["127.0.0.1"])
    before = proxy.connections
    service = await start()
    definition = volume_the_originals_way(backend, rebound, proxy.port, [])
    await set_volume_and_send(service, ADMIN, definition, "m1")
    [error] = await events.wait("error", "m1")
    assert error.detail == (
        f"attachment 'doc': forbidden: {rebound} resolves to a non-public address (127.0.0.1)"
    )
    assert proxy.connections == before
    await service.stop()  # else, sharing the database, it may claim m2 without the volume

    service = await start(api_allow_networks=["127.0.0.0/8"])
    definition = volume_the_originals_way(backend, opened, proxy.port, ["127.0.0.0/8"])
    await set_volume_and_send(service, SHOP, definition, "m2")
    await events.wait("sent", "m2")
    assert attachments_of(sink.mails[0])[0][2] == PAYLOAD
    assert proxy.connections > before


@pytest.fixture(scope="module")
def unsigned_https() -> Iterator[CountingProxy]:
    """An HTTPS file server whose certificate nobody trusts, behind a counting proxy."""
    import ssl

    import trustme

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("*.rebind.test").configure_cert(context)
    server = FileServer({"/docs/a.pdf": PAYLOAD}, tls=context).start()
    proxy = CountingProxy(("127.0.0.1", server.port)).start()
    yield proxy
    proxy.stop()
    server.stop()


@pytest.mark.parametrize("allowed", [False, True], ids=["guarded", "loopback-allowed"])
async def test_verify_ssl_false_turns_off_the_certificate_check_not_the_address_guard(
    start: Start,
    dns: ScriptedDns,
    unsigned_https: CountingProxy,
    sink: SmtpSink,
    events: EventLog,
    allowed: bool,
) -> None:
    """``verify_ssl = false`` (plugins.toml only): a name that resolves to loopback is still
    refused before any connection unless the volume allow-lists it; allow-listed, the
    unverified certificate is accepted."""
    host = fresh_name()
    dns.script(host, A=["127.0.0.1"])
    before = unsigned_https.connections
    config = {
        "base_url": f"https://{host}:{unsigned_https.port}/docs",
        "verify_ssl": False,
        "allow_networks": ["127.0.0.0/8"] if allowed else [],
    }
    service = await start(mounts=[{"name": "vol", "backend": "http", "config": config}])
    mail = message("m1", attachments=[{"filename": "doc", "storage_path": "vol:a.pdf"}])
    await service.add_messages([mail])
    if allowed:
        await events.wait("sent", "m1")
        assert attachments_of(sink.mails[0])[0][2] == PAYLOAD
        assert unsigned_https.connections > before
    else:
        [error] = await events.wait("error", "m1")
        assert error.detail == (
            f"attachment 'doc': forbidden: {host} resolves to a non-public address (127.0.0.1)"
        )
        assert unsigned_https.connections == before
        assert sink.mails == []
